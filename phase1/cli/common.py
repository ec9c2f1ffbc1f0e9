"""What every CLI command shares: state in `ctx.obj`, output, and the error → exit code table."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from phase1.context import Phase1, build
from phase1.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Phase1Error,
    UnavailableError,
)
from phase1.settings import Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# One table: which Phase1Error becomes which exit code (DESIGN §5).
EXIT_CODES: dict[type[Phase1Error], int] = {
    ConfigError: EXIT_USAGE,
    InvalidInputError: EXIT_USAGE,
    NotFoundError: EXIT_FAILURE,
    ConflictError: EXIT_FAILURE,
    UnavailableError: EXIT_FAILURE,
    Phase1Error: EXIT_FAILURE,
}


def exit_code_for(exc: Phase1Error) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILURE


def _no_color() -> bool:
    return "NO_COLOR" in os.environ


def stdout() -> Console:
    return Console(no_color=_no_color(), soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, no_color=_no_color(), soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    stderr().print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(code)


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

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = State()
        ctx.find_root().obj = obj
    return obj


class Phase1Group(TyperGroup):
    """Maps Phase1Error to one stderr line and its exit code, for every command below it."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except Phase1Error as exc:
            obj = ctx.find_root().obj
            if isinstance(obj, State) and obj.debug:
                raise
            raise fail(str(exc), exit_code_for(exc)) from None
        finally:
            obj = ctx.find_root().obj
            if isinstance(obj, State) and ctx.parent is None:
                obj.close()


def print_json(document: Any) -> None:
    """One stable JSON document on stdout."""
    sys.stdout.write(json.dumps(document, default=str, indent=2) + "\n")
    sys.stdout.flush()


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
