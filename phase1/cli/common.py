"""What every CLI command shares: state in `ctx.obj`, output, and the error → exit code table.

Conventions every `phase1` command follows (new sub-apps use these helpers):

1. **stdout is for data, stderr for people.** stdout carries only the result (an id, a listing,
   one JSON document), so `$(phase1 ...)`, pipes and `jq` work; progress, notes, warnings and
   errors go to stderr (`stderr()`, `note()`).
2. **Every read command takes `--json`** (declare it with `json_option("<shape>")`, which
   documents the document's shape in `--help`) and prints exactly one JSON document with
   `print_json`: camelCase keys, times in ISO-8601 UTC ending in `Z`. Shapes only grow: a key
   is never renamed or removed. With `--watch`, one document per line per refresh.
3. **Listings go through `print_table`** (and single objects through `print_details`): a rich
   table on a terminal, plain aligned columns with no escape codes when piped.
4. **Errors are raised, not printed**: raise a `Phase1Error` subclass (`NotFoundError`,
   `InvalidInputError`, `UnavailableError`, ...). `Phase1Group` prints it as one stderr line
   `error: ...` and exits with its code from `EXIT_CODES`: 0 ok, 1 failure or not found,
   2 bad usage or a bad setting. No traceback unless `phase1 --debug`. Redis connection errors
   become `UnavailableError` naming the URL (password hidden) and REDIS_URL; PostgreSQL ones
   are translated in `phase1.db`. Typer's own usage errors are one line too.
5. **Long operations show progress on stderr** with `progress(total, description)`; it does
   nothing when stderr is not a terminal or NO_COLOR is set, so logs stay clean.
6. **Colours and bars only on a terminal**, never with NO_COLOR: build consoles with
   `stdout()` / `stderr()`.
7. **Help**: the docstring's first line is the one-line summary shown in the command list; its
   last paragraph is `Example: phase1 ...`. Options say their unit and default.
8. **State lives in `ctx.obj`** (`state(ctx)`): settings read once, connections built on first
   use with `state(ctx).connect()`; nothing connects at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from phase1.cli.state import State
from phase1.context import redis_unavailable

try:  # Typer vendors click as typer._click since 0.2x; its exceptions are not click's own
    from typer import _click as click
except ImportError:  # pragma: no cover - an older Typer, on click itself
    import click  # type: ignore[no-redef]
from phase1.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Phase1Error,
    UnavailableError,
)

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


def no_color() -> bool:
    """NO_COLOR set to anything non-empty (https://no-color.org) turns colours and bars off."""
    return bool(os.environ.get("NO_COLOR"))


def stdout() -> Console:
    return Console(no_color=no_color(), soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, no_color=no_color(), soft_wrap=True)


def fancy(console: Console) -> bool:
    """Whether `console` may show tables with borders, live displays and bars."""
    return console.is_terminal and not no_color()


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    # The message is text, not markup: a URL's "[/db]" or a "[" in a value must print as is.
    stderr().print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def note(message: str) -> None:
    """A line for the operator on stderr (never on stdout, which carries data)."""
    stderr().print(message, markup=False, highlight=False)


def json_option(shape: str) -> Any:
    """The `--json` flag of a read command; `shape` documents the one document it prints."""
    return typer.Option(False, "--json", help=f"Print one JSON document instead: {shape}")


def print_json(document: Any) -> None:
    """One stable JSON document on stdout."""
    sys.stdout.write(json.dumps(document, default=str, indent=2) + "\n")
    sys.stdout.flush()


def print_json_line(document: Any) -> None:
    """One JSON document on one line (for --watch: one per refresh)."""
    sys.stdout.write(json.dumps(document, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


Cell = str | int | float | None


def _text(cell: Cell) -> str:
    return "-" if cell is None or cell == "" else str(cell)


def plain_columns(rows: Sequence[Sequence[Cell]], header: Sequence[str] | None = None) -> str:
    """Rows as aligned columns (two spaces apart), no escape codes, no trailing blanks."""
    lines = [[_text(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None,
    keep: Sequence[str] = (),
) -> Table:
    """The rich table `print_table` shows on a terminal; columns in `keep` (ids an operator
    copies) are never cut short, others are when the terminal is narrow."""
    out = Table(*columns, title=title, title_justify="left", title_style="bold")
    cells = [[_text(c) for c in row] for row in rows]
    for index, column in enumerate(out.columns):
        if columns[index] in keep:
            column.no_wrap = True
            column.min_width = max([len(columns[index])] + [len(row[index]) for row in cells])
    for row in cells:
        out.add_row(*row)
    return out


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    keep: Sequence[str] = (),
    console: Console | None = None,
) -> None:
    """A listing: a rich table on a terminal (see `table` for `keep`), plain aligned columns
    when piped."""
    console = console or stdout()
    if fancy(console):
        console.print(table(columns, rows, title=title, keep=keep))
        return
    text = plain_columns(rows, [c.upper() for c in columns])
    console.file.write((f"{title}\n" if title else "") + text + "\n")
    console.file.flush()


def print_details(pairs: Sequence[tuple[str, Cell]], *, console: Console | None = None) -> None:
    """One object as label/value lines: a bold-labelled grid on a terminal, plain when piped."""
    console = console or stdout()
    if fancy(console):
        grid = Table(show_header=False, box=None, pad_edge=False)
        grid.add_column(style="bold")
        grid.add_column()
        for label, value in pairs:
            grid.add_row(label, _text(value))
        console.print(grid)
        return
    console.file.write(plain_columns([(f"{label}:", value) for label, value in pairs]) + "\n")
    console.file.flush()


def one_line(text: str | None, limit: int = 160) -> str:
    """The first line of `text`, cut to `limit` characters (errors can span many lines)."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def iso(moment: datetime | None) -> str | None:
    """`moment` as ISO-8601 UTC with a `Z`, to the second."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    """A short human duration: 4s, 2m05s, 3h12m, 2d04h."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


class Steps:
    """What `progress` yields: advance it as work is done; a no-op off a terminal."""

    def __init__(self, bar: Progress | None, task: TaskID | None) -> None:
        self._bar, self._task = bar, task

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def update(self, *, total: float | None = None, description: str | None = None) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total, description=description)


@contextlib.contextmanager
def progress(total: float | None, description: str) -> Iterator[Steps]:
    """A progress bar on stderr for a long operation (`total` None: not known yet).

    Nothing is drawn when stderr is not a terminal or NO_COLOR is set; say what was done in a
    summary line afterwards either way.
    """
    console = stderr()
    if not fancy(console):
        yield Steps(None, None)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        yield Steps(bar, bar.add_task(description, total=total))


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = State()
        ctx.find_root().obj = obj
    return obj


def _redis_url_of(ctx: click.Context) -> str:
    obj = ctx.find_root().obj
    return obj.redis_url_for_errors() if isinstance(obj, State) else "(REDIS_URL)"


def error_exit(exc: Exception, redis_url: str) -> typer.Exit:
    """Print a Phase1Error, or a Redis connection error (translated, naming `redis_url`), as one
    stderr line; return the Exit with its code to raise."""
    if isinstance(exc, Phase1Error):
        return fail(str(exc), exit_code_for(exc))
    return fail(str(redis_unavailable(redis_url, exc)), EXIT_FAILURE)


class Phase1Group(TyperGroup):
    """Maps Phase1Error to one stderr line and its exit code, for every command below it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # A safety net: every Redis call path ends as one actionable line.
            if _debug(ctx):
                raise redis_unavailable(_redis_url_of(ctx), exc) from exc
            raise error_exit(exc, _redis_url_of(ctx)) from None
        except Phase1Error as exc:
            if _debug(ctx):
                raise
            raise error_exit(exc, _redis_url_of(ctx)) from None
        finally:
            obj = ctx.find_root().obj
            if isinstance(obj, State) and ctx.parent is None:
                obj.close()

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Typer's usage errors (a missing argument, a bad option value) as one stderr line
        `error: ... (usage: ...)` with exit code 2, instead of a box as wide as the terminal."""
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except _NO_ARGS_IS_HELP as exc:
            if not standalone:
                raise
            if exc.format_message().strip():  # Typer's rich help has printed itself already
                exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.UsageError as exc:
            if not standalone:
                raise
            usage = exc.ctx.get_usage().removeprefix("Usage: ") if exc.ctx else ""
            hint = f" (usage: {usage}; see --help)" if usage else ""
            fail(f"{exc.format_message()}{hint}")
            sys.exit(EXIT_USAGE)
        except click.exceptions.ClickException as exc:
            if not standalone:
                raise
            fail(exc.format_message(), exc.exit_code)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone:
                raise
            sys.exit(EXIT_FAILURE)
        if not standalone:
            return result
        sys.exit(result if isinstance(result, int) else EXIT_OK)


# click < 8.2 prints the help itself and raises nothing.
_NO_ARGS_IS_HELP: type[click.exceptions.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.exceptions.UsageError,), {})
)


def _debug(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    return isinstance(obj, State) and obj.debug


def now() -> datetime:
    return datetime.now(UTC)
