"""`phase1 audit`: check PostgreSQL, Redis and the tasks against each other (and mend)."""

from __future__ import annotations

import re
from datetime import timedelta

import typer

from phase1.cli.common import fail, json_option, note, plain_columns, print_json, state, stdout
from phase1.runtime import consistency

AUDIT_SHAPE = (
    '{"queue", "clean", "violations": [{"kind", "id", "message", "fix"}], "fixed": [...]}; '
    "exit 0 when clean, 1 otherwise."
)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> timedelta:
    """`90s`, `30m`, `6h`, `2d`, `1w` (a bare number is seconds)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 6h, 2d or 1w")
    return timedelta(seconds=float(found.group(1)) * UNITS[found.group(2) or "s"])


def audit(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None, "--since", help="Only jobs and plans of this recent past: 90s, 30m, 6h, 2d, 1w."
    ),
    as_json: bool = json_option(AUDIT_SHAPE),
    fix: bool = typer.Option(
        False, "--fix", help="Mend what can be mended (via the reconciler) and say what it did."
    ),
) -> None:
    """Check PostgreSQL, Redis and the tasks against each other (exit 1 on a violation).

    Each violation comes with its id and the command that mends it. Exit 0 when clean.

    Checks: every approved plan has exactly one execution; every completed execution has its
    analysis's tasks; no job is pending, active or retrying beyond its bounds; no RQ job or
    DLQ entry lacks its execution row; every finished job has its final event; every webhook
    was delivered or recorded as given up. With --fix, missing tasks are created, stuck jobs
    go to the reconciler, missing final events and lost webhooks are sent again; then it
    checks once more.

    Example: phase1 audit --since 24h --fix
    """
    window = parse_since(since) if since is not None else None
    phase1 = state(ctx).connect()
    found = consistency.check(phase1, window)
    fixed: list[str] = []
    if fix and found:
        fixed = consistency.fix(phase1, found)
        for line in fixed:
            note(f"fixed: {line}")
        found = consistency.check(phase1, window)
    if as_json:
        print_json(
            {
                "queue": phase1.settings.queue,
                "clean": not found,
                "violations": [v.as_dict() for v in found],
                "fixed": fixed,
            }
        )
    elif found:
        rows = [[v.kind, v.id, v.message, v.fix_command] for v in found]
        stdout().print(
            plain_columns(rows, ["KIND", "ID", "WHAT", "MEND WITH"]), highlight=False, markup=False
        )
    if found:
        raise fail(f"{len(found)} violation(s) on {phase1.settings.queue}")
    if not as_json:
        note(f"clean: {phase1.settings.queue}'s record, queue and tasks agree")
