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


def setup_logging(debug: bool, command: str | None = None) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug and command not in SERVICES:
        # A one-off command reports an unreachable PostgreSQL in its one error line; the
        # pool's per-attempt warnings would only bury it.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
