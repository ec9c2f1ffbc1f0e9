"""`phase1 worker --processes N`: the supervisor's exit codes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from rq import Worker
from support import PHASE1, Processes, child_pids, settings_env, wait_until

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval
from phase1.runtime.supervisor import supervise
from phase1.schemas import SAMPLE_ANALYSIS


def test_a_bad_usage_exit_stops_everything_with_2() -> None:
    # Every replacement would fail the same way: no restart loop.
    assert supervise(["--no-such-option"], 2, burst=False, shutdown_timeout=1) == 2


def test_burst_workers_drain_the_queue_and_exit_0(ctx: Phase1) -> None:
    with ctx.transaction() as conn:
        plan_ids = [plans.create_plan(conn, "Plan", SAMPLE_ANALYSIS).id for _ in range(4)]
    job_ids = [approval.approve(ctx, p).job_id for p in plan_ids]
    result = subprocess.run(
        [PHASE1, "worker", "--processes", "2", "--burst"],
        env=settings_env(ctx.settings),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    with ctx.transaction() as conn:
        rows = conn.execute(
            "SELECT status FROM marketplace_job_executions WHERE job_id = ANY(%s)", (job_ids,)
        ).fetchall()
    assert [r["status"] for r in rows] == ["completed"] * 4


def test_workers_that_cannot_reach_redis_exit_1_with_one_line_each(ctx: Phase1) -> None:
    broken = ctx.settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "queue": f"q-{uuid.uuid4().hex[:8]}"}
    )
    result = subprocess.run(
        [PHASE1, "worker", "--processes", "2", "--burst"],
        env=settings_env(broken),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("127.0.0.1:1" in line for line in errors)
    assert "Traceback" not in result.stderr


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_supervisor_forks_its_workers_with_psycopg_loaded(
    ctx: Phase1, processes: Processes
) -> None:
    # A worker started on its own loads psycopg at PostgreSQL's first use; workers forked
    # from a supervisor find it loaded (libpq mapped), so a replacement starts in milliseconds.
    supervisor = processes.worker(ctx.settings, "--processes", "2")
    wait_until(lambda: len(Worker.all(queue=ctx.queue())) == 2, timeout=60, what="two workers up")
    assert "libpq" in _maps(supervisor.pid)
    children = child_pids(supervisor.pid)
    assert len(children) == 2 and all("libpq" in _maps(pid) for pid in children)


def test_a_forking_worker_has_psycopg_loaded_before_its_first_horse(ctx: Phase1) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from redis import Redis
        from phase1.runtime.worker import Phase1ForkingWorker

        before = "psycopg" in sys.modules
        Phase1ForkingWorker(["{ctx.settings.queue}"], connection=Redis.from_url("{ctx.redis_url}"))
        print(before, "psycopg" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split() == ["False", "True"]
