"""The `phase1` command. The Typer app lives in phase1.cli.root and is imported only when
needed: `phase1 worker` starts without it (phase1.cli.workerstart)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phase1.cli.root import app

__all__ = ["app", "main"]


def main() -> None:
    """The console script: `phase1 worker ...` on the lean path when it can, else the app."""
    argv = sys.argv[1:]
    if argv[:1] == ["worker"]:
        from phase1.cli import workerstart

        args = workerstart.parse(argv[1:])
        if args is not None:
            sys.exit(workerstart.run_command(args))
    from phase1.cli.root import app

    app()


def __getattr__(name: str) -> Any:
    if name == "app":  # `from phase1.cli import app` keeps working
        from phase1.cli.root import app

        return app
    raise AttributeError(f"module 'phase1.cli' has no attribute {name!r}")
