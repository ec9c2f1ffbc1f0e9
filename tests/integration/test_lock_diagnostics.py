"""An attempt that times out behind a lock records who held it (issue 21), and every phase1
connection says who it is in pg_stat_activity."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
from support import PHASE1, Processes, settings_env, wait_until

from phase1 import keys
from phase1.context import build
from phase1.domain import audit, plans
from phase1.jobs import approval, deadletter, events
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings


def test_a_lock_timeout_records_the_blocking_backend(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    settings = make_settings(job_timeout=4, max_retries=0)
    ctx = build(settings)
    blocker = psycopg.connect(settings.database_url or "", application_name="test-blocker")
    try:
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, "Locked plan", SAMPLE_ANALYSIS).id
        job_id = approval.approve(ctx, plan_id).job_id
        # Another session holds the plan's first task, uncommitted: the job's insert waits.
        first = SAMPLE_ANALYSIS["phase1"][0]  # type: ignore[index]
        blocker.execute(
            "INSERT INTO marketplace_tasks (id, plan_id, phase, task_key, title, description, "
            "status, position) VALUES (gen_random_uuid(), %s, 1, %s, 'held', 'held', "
            "'pending', 0)",
            (plan_id, first["key"]),
        )
        blocker_pid = blocker.info.backend_pid
        processes.worker(settings)
        wait_until(lambda: jobs.view(ctx, job_id).status == "failed", what="job failed")

        with ctx.read() as conn:
            history = audit.attempts(conn, job_id)
        assert len(history) == 1
        blocked = history[0]["blocked_by"]
        assert blocked and blocked[0]["pid"] == blocker_pid
        assert blocked[0]["applicationName"] == "test-blocker"
        assert blocked[0]["state"] == "idle in transaction"
        assert "INSERT INTO marketplace_tasks" in blocked[0]["query"]
        assert blocked[0]["transactionAgeSeconds"] > 0
        assert f"blocked by pid {blocker_pid}" in (history[0]["error_message"] or "")

        entry = deadletter.get(ctx.redis, settings.queue, job_id)
        assert entry is not None and entry["reason"] == "timeout"
        assert entry["attempts"][0]["blockedBy"][0]["pid"] == blocker_pid
        failed = [
            e
            for _, e in events.read(ctx.redis, settings.queue, job_id=job_id)
            if e.type == keys.FAILED
        ]
        assert failed[-1].data["final"] and failed[-1].data["blockedBy"][0]["pid"] == blocker_pid

        shown = subprocess.run(
            [PHASE1, "dlq", "inspect", job_id],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"attempt 1 was blocked by pid {blocker_pid} (test-blocker)" in shown.stdout

        # The worker's own connections name it.
        names = [
            r[0]
            for r in blocker.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        ]
        assert any(n.startswith("phase1 worker ") for n in names), names
    finally:
        blocker.close()
        ctx.close()
