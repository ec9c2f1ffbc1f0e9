"""What a command's run needs beside Typer: the settings and connections it shares (`State`,
kept in `ctx.obj`) and the logging set-up. Free of Typer and rich, so `phase1 worker` can start
without importing them (phase1.cli.workerstart)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, TypedDict

from phase1.context import Phase1, build
from phase1.settings import Settings, load_settings
from phase1.telemetry import tracing
from phase1.telemetry.logs import TEXT_FORMAT, formatter


# How tracebacks show (with --debug, or an unexpected error): the Typer app's settings, read
# also by a supervised worker that runs without the app (phase1.cli.workerstart).
class Tracebacks(TypedDict):
    pretty_exceptions_enable: bool
    pretty_exceptions_show_locals: bool
    pretty_exceptions_short: bool


TRACEBACKS: Tracebacks = {
    "pretty_exceptions_enable": True,
    "pretty_exceptions_show_locals": False,
    "pretty_exceptions_short": True,
}


@dataclass
class State:
    """Lives in `ctx.obj`: settings read once, connections built on first use."""

    debug: bool = False
    _settings: Settings | None = None
    _ctx: Phase1 | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.overrides)
            use_log_format(self._settings.log_format)  # issue 24: JSON logs and tracing
            tracing.configure()  # OTEL_* read by the SDK; a bad value stops here, one line
        return self._settings

    def resolved(self) -> Settings:
        """Settings with Redis and PostgreSQL resolved (the embedded default when nothing
        is configured), without connecting."""
        if self._settings is None or not (self._settings.redis_url and self._settings.database_url):
            from phase1.embedded import resolve

            self._settings = resolve(self.settings)
        return self._settings

    def connect(self, *, pool_size: int = 2) -> Phase1:
        """Connections to the resolved Redis and PostgreSQL, built once."""
        if self._ctx is None:
            self._ctx = build(self.resolved(), pool_size=pool_size)
        return self._ctx

    def redis_url_for_errors(self) -> str:
        """The Redis URL an error message names, once the settings are read."""
        if self._settings is not None and self._settings.redis_url:
            return self._settings.redis_url
        return "(REDIS_URL)"

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


# Long-running commands keep the connection pool's warnings: they are their log.
SERVICES = frozenset({"worker", "serve", "up"})


_command: str | None = None


def setup_logging(debug: bool, command: str | None = None) -> None:
    global _command
    _command = command
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    if not debug and command not in SERVICES:
        # A one-off command reports an unreachable PostgreSQL in its one error line; the
        # pool's per-attempt warnings would only bury it.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def use_log_format(log_format: str) -> None:
    """PHASE1_LOG_FORMAT=json: the root logger's handlers (RQ's loggers log through them when
    they find one) write JSON lines; a service then logs phase1's INFO lines too, for the
    log pipeline that reads them (each approval, each attempt, with its trace id)."""
    if log_format != "json":
        return
    fmt = formatter(log_format)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)
    if _command in SERVICES and not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("phase1").setLevel(logging.INFO)
