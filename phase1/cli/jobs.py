"""Top-level job commands: migrate, enqueue, status, worker."""

from __future__ import annotations

import typer

from phase1 import db
from phase1.cli.common import (
    EXIT_FAILURE,
    Cell,
    iso,
    json_option,
    note,
    one_line,
    print_details,
    print_json,
    progress,
    state,
)
from phase1.cli.workerstart import WorkerArgs, start_worker
from phase1.domain import plans
from phase1.jobs import approval
from phase1.jobs import queue as jobs
from phase1.schemas import JobView

JOB_SHAPE = (
    '{"jobId", "planId", "status", "progress", "attempt", "maxAttempts", "result", '
    '"error": {"type", "message"}|null, "enqueuedAt", "startedAt", "completedAt", '
    '"nextRetryAt"}, as the polling route answers.'
)


def migrate(ctx: typer.Context) -> None:
    """Apply the database migrations that are not applied yet (safe to run again).

    Each migration is applied once, under a lock, so two processes may migrate at once.
    Progress and the summary go to stderr.

    Example: DATABASE_URL=postgresql://localhost/phase1 phase1 migrate
    """
    settings = state(ctx).resolved()
    assert settings.database_url
    with progress(None, "applying migrations"):
        applied = db.migrate(settings.database_url)
    if applied:
        note(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        note("database is up to date")


def enqueue(
    ctx: typer.Context,
    plan_id: str = typer.Argument(..., help="The UUID of the plan to approve."),
) -> None:
    """Approve a plan and enqueue its Phase 1 job; prints the job id alone.

    Idempotent: a plan that already has a job prints that job's id.

    Example: job=$(phase1 enqueue "$plan")
    """
    result = approval.approve(state(ctx).connect(), plans.parse_uuid(plan_id))
    typer.echo(result.job_id)


def view_details(view: JobView) -> list[tuple[str, Cell]]:
    """A job's status as label/value pairs, for `print_details`."""
    pairs: list[tuple[str, Cell]] = [
        ("job", view.jobId),
        ("plan", str(view.planId)),
        ("status", view.status),
        ("progress", f"{view.progress}%"),
        ("attempt", f"{view.attempt} of {view.maxAttempts}"),
    ]
    for label, moment in (
        ("enqueued", view.enqueuedAt),
        ("started", view.startedAt),
        ("completed", view.completedAt),
        ("next retry", view.nextRetryAt),
    ):
        if moment is not None:
            pairs.append((label, iso(moment)))
    if view.result is not None:
        created = view.result.get("tasksCreated")
        pairs.append(
            ("result", f"{created} task(s) created, {len(view.result.get('taskIds', []))} in all")
        )
    if view.error is not None:
        pairs.append(("error", f"{view.error.type}: {one_line(view.error.message, 500)}"))
    return pairs


def status(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job id `phase1 enqueue` printed."),
    as_json: bool = json_option(JOB_SHAPE),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="Follow the job with a live progress bar until it is completed (exit 0) or "
        "failed (exit 1), then print its status.",
    ),
    interval: float = typer.Option(
        0.5, "--interval", min=0.05, help="Seconds between polls with --watch."
    ),
    timeout: float = typer.Option(
        0,
        "--timeout",
        min=0,
        help="With --watch, give up (exit 1) after this many seconds (0: never).",
    ),
) -> None:
    """Show a job's status (from PostgreSQL, also after Redis has dropped the job).

    With --watch, waits for the job: scripts can `phase1 status "$job" --watch && ...`.

    Example: phase1 status "$job" --watch
    """
    job_id = plans.parse_job_id(job_id)
    conn = state(ctx).connect()
    view = jobs.view(conn, job_id)
    if watch:
        from phase1.cli.watch import watch_job

        view = watch_job(conn, view, interval=interval, timeout=timeout)
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        print_details(view_details(view))
    if watch and view.status != "completed":
        raise typer.Exit(EXIT_FAILURE)


def worker(
    ctx: typer.Context,
    burst: bool = typer.Option(False, "--burst", help="Exit once the queues are empty."),
    processes: int = typer.Option(
        1, "--processes", "-p", min=1, max=64, help="Worker processes to run (supervised)."
    ),
    fork: bool = typer.Option(
        False, "--fork", help="Run each job in a forked work horse (RQ's Worker) for isolation."
    ),
    name: str | None = typer.Option(None, "--name", help="Worker name (unique per host)."),
    skip_checks: bool = typer.Option(False, "--skip-checks", hidden=True),
) -> None:
    """Run workers on the job queue, with RQ's scheduler on (interval retries need it).

    SIGTERM or SIGINT stops a worker: it takes no more jobs and gives the running one
    PHASE1_SHUTDOWN_TIMEOUT seconds, then puts it back on the queue (no retry used) and exits 0.
    A second signal interrupts the job at once.
    Any number of workers on any number of hosts may share one Redis and PostgreSQL.

    Example: phase1 worker --processes 2
    """
    args = WorkerArgs(burst, processes, fork, name, skip_checks)
    raise typer.Exit(start_worker(state(ctx), args))
