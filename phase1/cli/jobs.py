"""Top-level job commands: migrate, enqueue, status, worker."""

from __future__ import annotations

import typer
from rich.table import Table

from phase1 import approval, db, plans
from phase1 import queue as jobs
from phase1.cli.common import EXIT_FAILURE, print_json, state, stderr, stdout
from phase1.schemas import JobView


def migrate(ctx: typer.Context) -> None:
    """Apply the database migrations that are not applied yet (safe to run again).

    Example: DATABASE_URL=postgresql://localhost/phase1 phase1 migrate
    """
    settings = state(ctx).resolved()
    assert settings.database_url
    applied = db.migrate(settings.database_url)
    err = stderr()
    if applied:
        err.print(f"applied {len(applied)} migration(s): {', '.join(applied)}", highlight=False)
    else:
        err.print("database is up to date", highlight=False)


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


def render_view(view: JobView) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("job", view.jobId)
    table.add_row("plan", str(view.planId))
    table.add_row("status", view.status)
    table.add_row("progress", f"{view.progress}%")
    table.add_row("attempt", f"{view.attempt} of {view.maxAttempts}")
    for label, moment in (
        ("enqueued", view.enqueuedAt),
        ("started", view.startedAt),
        ("completed", view.completedAt),
        ("next retry", view.nextRetryAt),
    ):
        if moment is not None:
            table.add_row(label, moment.isoformat(timespec="seconds") + "Z")
    if view.result is not None:
        table.add_row(
            "result",
            f"{view.result.get('tasksCreated')} task(s) created, "
            f"{len(view.result.get('taskIds', []))} in all",
        )
    if view.error is not None:
        table.add_row("error", f"{view.error.type}: {view.error.message}")
    return table


def status(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job id `phase1 enqueue` printed."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the job as the polling route does: jobId, planId, status, progress, "
        "attempt, maxAttempts, result, error, enqueuedAt, startedAt, completedAt, nextRetryAt.",
    ),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Follow the job until it is completed (exit 0) or failed (1)."
    ),
    interval: float = typer.Option(0.5, "--interval", help="Seconds between polls with --watch."),
) -> None:
    """Show a job's status (answers from PostgreSQL, also after Redis has dropped the job).

    Example: phase1 status "$job" --json
    """
    conn = state(ctx).connect()
    view = jobs.view(conn, job_id)
    if watch:
        from phase1.cli.watch import watch_job

        view = watch_job(conn, view, interval=interval, as_json=as_json)
    elif as_json:
        print_json(view.model_dump(mode="json"))
    else:
        stdout().print(render_view(view))
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
    Example: phase1 worker --processes 2
    """
    st = state(ctx)
    if processes > 1:
        from phase1.checks import run_startup_checks
        from phase1.worker import supervise

        # Resolves the embedded default once, before the children start; checks run once.
        run_startup_checks(st.connect(), expect_scheduler=False)
        argv = ["--processes", "1", "--skip-checks"]
        argv += (["--burst"] if burst else []) + (["--fork"] if fork else [])
        timeout = st.settings.shutdown_timeout
        raise typer.Exit(supervise(argv, processes, burst=burst, shutdown_timeout=timeout))
    from phase1.worker import run

    run(st.connect(pool_size=4), burst=burst, fork=fork, name=name, checks=not skip_checks)
