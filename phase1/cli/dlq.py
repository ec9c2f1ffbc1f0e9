"""`phase1 dlq`: look at dead-lettered jobs and send them back to the queue."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import typer

from phase1.cli.common import (
    EXIT_FAILURE,
    Phase1Group,
    Steps,
    fail,
    note,
    one_line,
    print_details,
    print_json,
    print_table,
    progress,
    state,
    stderr,
    stdout,
)
from phase1.context import Phase1
from phase1.domain import plans
from phase1.errors import InvalidInputError, NotFoundError
from phase1.jobs import bulkrequeue, deadletter

app = typer.Typer(
    cls=Phase1Group,
    help="The dead-letter queue: jobs that failed for good (retries exhausted, a permanent "
    "error, a dead worker), with every attempt's story; send them back with `requeue`.",
    no_args_is_help=True,
)

# `--all` shows a progress bar from this many entries on.
PROGRESS_FROM = 20


def _seconds(moment: str | None) -> str:
    """An ISO-8601 time without its fraction of a second, for tables."""
    if not moment:
        return "-"
    head, _, tail = moment.partition(".")
    return head + ("Z" if tail.endswith("Z") else "")


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "jobId": entry.get("jobId"),
        "planId": entry.get("planId"),
        "reason": entry.get("reason"),
        "attempts": len(entry.get("attempts") or []),
        "failedAt": entry.get("failedAt"),
        "errorType": entry.get("errorType"),
        "message": entry.get("message"),
    }


@app.command("list")
def list_entries(
    ctx: typer.Context,
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Print {"queue", "total", "entries": [{jobId, planId, reason, attempts, failedAt, '
        "errorType, message}]} instead.",
    ),
    limit: int = typer.Option(1000, "--limit", min=1, help="Show at most this many (newest)."),
) -> None:
    """List dead-lettered jobs, newest first: job, plan, reason, attempts, when, error.

    Example: phase1 dlq list --json
    """
    conn = state(ctx).connect()
    queue = conn.settings.queue
    entries, total = deadletter.entries(conn, limit)  # with those only PostgreSQL still holds
    if as_json:
        print_json({"queue": queue, "total": total, "entries": [_summary(e) for e in entries]})
        return
    if not entries:
        stderr().print(f"the dead-letter queue of {queue} is empty", highlight=False)
        return
    rows = []
    for entry in entries:
        row = _summary(entry)
        rows.append(
            (
                row["jobId"],
                row["planId"] or "-",
                row["reason"],
                row["attempts"],
                _seconds(row["failedAt"]),
                f"{row['errorType']}: {one_line(row['message'], 120)}",
            )
        )
    print_table(
        ("job", "plan", "reason", "attempts", "failed at", "error"),
        rows,
        title=f"dead-letter queue of {queue}: {total} job(s)",
        keep=("job", "plan"),  # ids are copied into the next command: never cut them
    )


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="A job id from `phase1 dlq list`."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the whole entry: jobId, planId, queue, reason, errorType, message, "
        "traceback, payload, attempts [{attempt, status, worker, startedAt, endedAt, "
        "errorType, error, blockedBy: [{pid, applicationName, state, transactionAgeSeconds, "
        "query}]|null}], failedAt.",
    ),
) -> None:
    """Show one dead-lettered job: why it failed, its payload, and every attempt.

    Example: phase1 dlq inspect "$job"
    """
    job_id = plans.parse_job_id(job_id)
    conn = state(ctx).connect()
    entry = deadletter.find(conn, job_id)  # Redis's entry, else PostgreSQL's record
    if entry is None:
        raise NotFoundError(f"job {job_id} is not in the dead-letter queue")
    if as_json:
        print_json(entry)
        return
    print_details(
        [
            ("job", entry.get("jobId")),
            ("plan", entry.get("planId") or "-"),
            ("queue", entry.get("queue") or conn.settings.queue),
            ("reason", entry.get("reason")),
            ("error", f"{entry.get('errorType')}: {entry.get('message')}"),
            ("failed at", entry.get("failedAt") or "-"),
            ("payload", json.dumps(entry.get("payload"), default=str)),
        ]
    )
    rows = [
        (
            a["attempt"],
            a["status"],
            a.get("worker") or "-",
            _seconds(a.get("startedAt")),
            _seconds(a.get("endedAt")),
            f"{a['errorType']}: {one_line(a['error'], 120)}" if a.get("errorType") else "",
        )
        for a in entry.get("attempts") or []
    ]
    print_table(("#", "status", "worker", "started", "ended", "error"), rows, title="attempts")
    out = stdout()
    for a in entry.get("attempts") or []:
        for b in a.get("blockedBy") or []:
            out.print(
                f"attempt {a['attempt']} was blocked by pid {b.get('pid')} "
                f"({b.get('applicationName') or '?'}), {b.get('state')}, in a transaction for "
                f"{b.get('transactionAgeSeconds')} s: {one_line(b.get('query'), 300)}",
                markup=False,
                highlight=False,
            )
    if entry.get("traceback"):
        out.print("[bold]traceback[/] (last attempt)")
        out.print(entry["traceback"].rstrip(), markup=False, highlight=False, style="dim")


def _steps(count: int) -> contextlib.AbstractContextManager[Steps]:
    """A bar for requeueing many entries (drawn on a terminal only)."""
    if count < PROGRESS_FROM:
        return contextlib.nullcontext(Steps(None, None))
    return progress(count, "requeueing")


@app.command("requeue")
def requeue(
    ctx: typer.Context,
    job_ids: list[str] = typer.Argument(None, help="Job ids to send back (or use --all)."),
    all_: bool = typer.Option(False, "--all", help="Send back every job in the DLQ."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be sent back; move nothing."
    ),
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="With --all, only entries of this reason (exception, timeout, abandoned, "
        "permanent, cancelled).",
    ),
    rate: str | None = typer.Option(
        None, "--rate", help="With --all, at most this many a second: 10/s (or 10)."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Print {"queue", "dryRun", "requeued": [{jobId, planId, attemptsSoFar, '
        'freshAttempts}], "missing": ["<job id>", ...]} instead.',
    ),
) -> None:
    """Send jobs from the DLQ back to the queue, each with a fresh retry budget.

    An entry leaves the DLQ only as its job goes back on the queue (one Redis transaction);
    its attempt history stays and numbering continues. Prints the job ids sent back on
    stdout and a summary on stderr. An id not in the DLQ is an error (exit 1); the others
    still move.

    --all takes the entries that failed before it started, oldest first, at up to --rate a
    second, with progress on stderr. Ctrl-C stops it between two jobs; the same command
    again resumes where it stopped, and a job that failed again meanwhile is not sent back
    twice.

    Example: phase1 dlq requeue --all --dry-run
    """
    if all_ and job_ids:
        raise InvalidInputError("give job ids or --all, not both")
    if not all_ and not job_ids:
        raise InvalidInputError("give one or more job ids, or --all")
    if not all_ and (reason or rate):
        raise InvalidInputError("--reason and --rate go with --all")
    job_ids = [plans.parse_job_id(j) for j in job_ids or []]  # all checked before any moves
    conn = state(ctx).connect()
    if all_:
        _requeue_all(conn, reason=reason, rate=_rate(rate), dry_run=dry_run, as_json=as_json)
        return
    queue = conn.settings.queue
    ids = list(dict.fromkeys(job_ids))
    moved: list[deadletter.Requeued] = []
    missing: list[str] = []
    err = stderr()
    # A bar for many entries (on a terminal only); the summary line says what moved.
    with _steps(len(ids)) as steps:
        for job_id in ids:
            try:
                moved.append(deadletter.requeue(conn, job_id, dry_run=dry_run))
            except NotFoundError as exc:
                missing.append(job_id)
                if not as_json:
                    fail(str(exc))  # the error line now; the exit code once the rest moved
            steps.advance()
    if as_json:
        print_json(_requeued_json(queue, dry_run, moved, missing))
    else:
        for r in moved:
            typer.echo(r.job_id)
        verb = "would send back" if dry_run else "sent back"
        summary = f"{verb} {len(moved)} job(s) to {queue}"
        if moved:
            summary += f", each with {moved[0].fresh_attempts} fresh attempt(s)"
        if missing:
            summary += f"; {len(missing)} not in the dead-letter queue"
        if all_ and not ids:
            summary = f"the dead-letter queue of {queue} is empty: nothing to send back"
        if moved or not missing:  # nothing moved: the error lines say it all
            err.print(summary, highlight=False)
    if missing:
        raise typer.Exit(EXIT_FAILURE)


REASONS = ("exception", "timeout", "abandoned", "permanent", "interrupted", "cancelled")


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    number = text.strip().removesuffix("/s")
    try:
        value = float(number)
    except ValueError:
        value = 0.0
    if not 0 < value <= 100_000:
        raise InvalidInputError(f"--rate {text!r} is not a rate such as 10/s")
    return value


def _requeue_all(
    conn: Phase1, *, reason: str | None, rate: float | None, dry_run: bool, as_json: bool
) -> None:
    """--all: paced, with progress on stderr, resumable after Ctrl-C."""
    if reason is not None and reason not in REASONS:
        raise InvalidInputError(f"--reason {reason!r} is not one of {', '.join(REASONS)}")
    queue = conn.settings.queue
    run = bulkrequeue.begin(conn, reason, dry_run=dry_run)
    ids = bulkrequeue.pending(conn, run)
    err = stderr()
    if run.resumed:
        note(f"resuming the requeue begun before; {len(ids)} job(s) left")
    started = time.monotonic()
    last_line = [0.0]

    def progress(done: int, outcome: deadletter.Requeued | None) -> None:
        if outcome is not None and not as_json:
            typer.echo(outcome.job_id)
        moment = time.monotonic()
        if done == len(ids) or moment - last_line[0] >= 1.0:
            last_line[0] = moment
            speed = done / max(moment - started, 1e-9)
            note(f"requeue: {done}/{len(ids)} ({speed:.1f}/s)")

    try:
        moved = bulkrequeue.requeue_paced(conn, ids, rate=rate, dry_run=dry_run, progress=progress)
    except KeyboardInterrupt:
        note("interrupted: run the same command again to resume where it stopped")
        raise typer.Exit(130) from None
    if not dry_run:
        bulkrequeue.end(conn)
    if as_json:
        print_json(_requeued_json(queue, dry_run, moved, []))
        return
    verb = "would send back" if dry_run else "sent back"
    if not ids:
        err.print(f"the dead-letter queue of {queue} has nothing to send back", highlight=False)
    else:
        err.print(f"{verb} {len(moved)} job(s) to {queue}", highlight=False)


def _requeued_json(
    queue: str, dry_run: bool, moved: list[deadletter.Requeued], missing: list[str]
) -> dict[str, object]:
    """What `dlq requeue --json` prints, by ids or --all."""
    return {
        "queue": queue,
        "dryRun": dry_run,
        "requeued": [
            {
                "jobId": r.job_id,
                "planId": r.plan_id,
                "attemptsSoFar": r.attempts_so_far,
                "freshAttempts": r.fresh_attempts,
            }
            for r in moved
        ],
        "missing": missing,
    }
