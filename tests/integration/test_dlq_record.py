"""PostgreSQL is the record of the dead-letter queue too: what Redis lost is still listed,
inspected, requeued, and written back by the reconciler; and a job that RQ's own tools send
back from the DLQ gets the same bookkeeping as `phase1 dlq requeue` (real Redis, PostgreSQL,
workers and the installed `phase1` command)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from rq.registry import FailedJobRegistry
from support import PHASE1, RQ, Processes, inject_fault, settings_env, wait_until

from phase1 import keys
from phase1.context import Phase1, build
from phase1.domain import audit, plans
from phase1.jobs import approval, deadletter, events
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS


@pytest.fixture
def ctx(make_settings: object) -> Iterator[Phase1]:
    # One attempt, then the DLQ: failing is quick.
    phase1 = build(make_settings(max_retries=0))  # type: ignore[operator]
    try:
        yield phase1
    finally:
        phase1.close()


def run(ctx: Phase1, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PHASE1, *args],
        env={**settings_env(ctx.settings), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def dead_lettered(ctx: Phase1, processes: Processes) -> tuple[uuid.UUID, str]:
    with ctx.transaction() as conn:
        plan_id = plans.create_plan(conn, "DLQ record plan", SAMPLE_ANALYSIS).id
    inject_fault(ctx.database_url, plan_id, fail_times=1)
    job_id = approval.approve(ctx, plan_id).job_id
    assert processes.worker(ctx.settings, "--burst").wait(timeout=60) == 0
    assert jobs.view(ctx, job_id).status == "failed"
    return plan_id, job_id


def lose_redis_state(ctx: Phase1, job_id: str) -> None:
    """What a Redis restart without persistence does to this queue's keys."""
    queue = ctx.queue()
    name = ctx.settings.queue
    ctx.redis.delete(
        keys.dlq_entry(name, job_id), keys.dlq_index(name), keys.rq_job(job_id),
        FailedJobRegistry(queue=queue).key, keys.event_stream(name),
    )  # fmt: skip


def test_a_dlq_entry_redis_lost_is_listed_requeued_and_rebuilt(
    ctx: Phase1, processes: Processes
) -> None:
    plan_id, job_id = dead_lettered(ctx, processes)
    lose_redis_state(ctx, job_id)
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is None

    # Every command agrees: the job is in the DLQ, and the one it names works.
    enqueue = run(ctx, "enqueue", str(plan_id))
    assert enqueue.returncode == 1 and f"phase1 dlq requeue {job_id}" in enqueue.stderr
    listed = json.loads(run(ctx, "dlq", "list", "--json").stdout)
    assert [e["jobId"] for e in listed["entries"]] == [job_id] and listed["total"] == 1
    info = json.loads(run(ctx, "info", "--json").stdout)
    assert info["dlq"]["size"] == 1 and info["dlq"]["oldest"]["jobId"] == job_id
    inspected = run(ctx, "dlq", "inspect", job_id, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["attempts"][0]["status"] == "failed"

    # The reconciler writes the entry back to Redis.
    reconciled = json.loads(run(ctx, "reconcile", "--json").stdout)
    assert reconciled["restoredJobIds"] == [job_id]
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is not None
    assert json.loads(run(ctx, "reconcile", "--json").stdout)["restored"] == 0

    # Lost again, and requeued straight from PostgreSQL's record: it completes.
    lose_redis_state(ctx, job_id)
    dry = run(ctx, "dlq", "requeue", "--all", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == [job_id], dry.stderr
    requeued = run(ctx, "dlq", "requeue", job_id)
    assert requeued.returncode == 0 and requeued.stdout.split() == [job_id], requeued.stderr
    assert processes.worker(ctx.settings, "--burst").wait(timeout=60) == 0
    assert jobs.view(ctx, job_id).status == "completed"
    assert json.loads(run(ctx, "dlq", "list", "--json").stdout)["total"] == 0
    missing = run(ctx, "dlq", "requeue", job_id)
    assert missing.returncode == 1 and "not in the dead-letter queue" in missing.stderr


@pytest.mark.parametrize("how", ["api", "rq requeue"])
def test_a_requeue_through_rqs_own_tools_gets_phase1s_bookkeeping(
    ctx: Phase1, processes: Processes, how: str
) -> None:
    """FailedJobRegistry.requeue is what rq-dashboard's Requeue button calls, and the `rq
    requeue` command: the entry leaves the DLQ, the budget restarts, `job:requeued` is
    recorded."""
    _, job_id = dead_lettered(ctx, processes)
    if how == "api":
        assert FailedJobRegistry(queue=ctx.queue()).requeue(job_id)
    else:
        argv = [RQ, "requeue", "--queue", ctx.settings.queue, "--serializer", "json"]
        argv += ["--url", ctx.redis_url, job_id]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert processes.worker(ctx.settings, "--burst").wait(timeout=60) == 0

    view = jobs.view(ctx, job_id)
    assert (view.status, view.attempt, view.maxAttempts) == ("completed", 2, 2)
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is None
    assert json.loads(run(ctx, "dlq", "list", "--json").stdout)["total"] == 0
    inspect = run(ctx, "dlq", "inspect", job_id)
    assert inspect.returncode == 1 and "not in the dead-letter queue" in inspect.stderr
    types = [e.type for _, e in events.read(ctx.redis, ctx.settings.queue, job_id=job_id)]
    assert types.index(events.REQUEUED) < len(types) - 1 - types[::-1].index(events.ACTIVE)
    assert types[-1] == events.COMPLETED
    with ctx.transaction() as conn:
        assert [a["status"] for a in audit.attempts(conn, job_id)] == ["failed", "completed"]
        row = conn.execute(
            "SELECT requeued_at FROM marketplace_dead_letters WHERE job_id = %(j)s", {"j": job_id}
        ).fetchone()
    assert row is not None and row["requeued_at"] is not None


def test_a_job_requeued_through_rq_that_fails_again_goes_back_to_the_dlq(
    make_settings: object, processes: Processes
) -> None:
    """The restarted budget is real: with one retry, a requeued job that keeps failing is
    tried twice more, then dead-lettered again with its whole history."""
    ctx = build(make_settings(max_retries=1, retry_intervals=[0]))  # type: ignore[operator]
    try:
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, "DLQ again", SAMPLE_ANALYSIS).id
        inject_fault(ctx.database_url, plan_id, fail_times=100)
        job_id = approval.approve(ctx, plan_id).job_id
        processes.worker(ctx.settings)
        failed = FailedJobRegistry(queue=ctx.queue())
        # PostgreSQL says `failed` (phase1's callback) a moment before RQ files the job.
        wait_until(
            lambda: jobs.view(ctx, job_id).status == "failed" and job_id in failed,
            timeout=60,
            what="dead-lettered, in RQ's failed registry",
        )
        assert failed.requeue(job_id)
        wait_until(
            lambda: (v := jobs.view(ctx, job_id)).status == "failed" and v.attempt == 4,
            timeout=60,
            what="dead-lettered again after two more attempts",
        )
        entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
        assert entry is not None and len(entry["attempts"]) == 4
        assert jobs.view(ctx, job_id).maxAttempts == 4
    finally:
        ctx.close()
