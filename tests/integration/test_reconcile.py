"""The reconciler on real Redis and PostgreSQL: what it re-enqueues, what it leaves alone, and
many reconcilers at once."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from rq import SimpleWorker
from rq.job import Job, JobStatus
from support import PHASE1, run_concurrently, settings_env

from phase1 import keys
from phase1.context import Phase1, build
from phase1.domain import audit, phase1_tasks, plans
from phase1.errors import UnavailableError
from phase1.jobs import approval, deadletter, events, failure
from phase1.runtime import reconcile
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings


def approved(ctx: Phase1, count: int) -> list[str]:
    with ctx.transaction() as conn:
        ids = [plans.create_plan(conn, "Plan", SAMPLE_ANALYSIS).id for _ in range(count)]
    return [approval.approve(ctx, plan_id).job_id for plan_id in ids]


def lose(ctx: Phase1, job_ids: list[str]) -> None:
    """What a Redis restart without persistence does to these jobs."""
    for job_id in job_ids:
        ctx.redis.delete(keys.rq_job(job_id))
        ctx.redis.lrem(ctx.queue().key, 0, job_id)


def set_row(ctx: Phase1, job_id: str, status: str, **extra: str) -> None:
    assignments = ", ".join(f"{column} = {value}" for column, value in extra.items())
    with ctx.transaction() as conn:
        conn.execute(
            f"UPDATE marketplace_job_executions SET status = %s {', ' if extra else ''}"
            f"{assignments} WHERE job_id = %s",
            (status, job_id),
        )


def row_status(ctx: Phase1, job_id: str) -> str:
    with ctx.transaction() as conn:
        row = conn.execute(
            "SELECT status FROM marketplace_job_executions WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return str(row["status"])


def test_reenqueues_only_what_redis_lost(ctx: Phase1) -> None:
    kept, *lost = approved(ctx, 3)
    lose(ctx, lost)
    outcome = reconcile.reconcile(ctx, grace=0)
    assert sorted(outcome.requeued) == sorted(lost)
    assert outcome.checked == 3 and not outcome.locked_out
    assert sorted(ctx.queue().job_ids) == sorted([kept, *lost])  # each once
    job = Job.fetch(lost[0], connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.retries_left == ctx.settings.max_retries
    assert reconcile.reconcile(ctx, grace=0).requeued == []  # nothing left to do


def test_leaves_young_rows_alone(ctx: Phase1) -> None:
    lost = approved(ctx, 1)
    lose(ctx, lost)
    assert reconcile.reconcile(ctx, grace=60).requeued == []


def test_active_and_retrying_rows(ctx: Phase1) -> None:
    stale_active, fresh_active, due_retry, future_retry = approved(ctx, 4)
    lose(ctx, [stale_active, fresh_active, due_retry, future_retry])
    old = "NOW() - interval '1 hour'"
    set_row(ctx, stale_active, "active", updated_at=old)
    # An attempt may still be running until the job timeout has passed.
    set_row(ctx, fresh_active, "active", updated_at="NOW() - interval '2 seconds'")
    set_row(ctx, due_retry, "retrying", updated_at=old, next_retry_at=old)
    set_row(
        ctx, future_retry, "retrying", updated_at=old, next_retry_at="NOW() + interval '1 hour'"
    )
    outcome = reconcile.reconcile(ctx, grace=1)
    assert sorted(outcome.requeued) == sorted([stale_active, due_retry])
    assert row_status(ctx, stale_active) == row_status(ctx, due_retry) == "pending"
    assert row_status(ctx, fresh_active) == "active"
    assert row_status(ctx, future_retry) == "retrying"


def test_many_reconcilers_at_once_enqueue_each_job_once(ctx: Phase1) -> None:
    lost = approved(ctx, 40)
    lose(ctx, lost)
    results, errors = run_concurrently(
        ctx.settings, lambda own: reconcile.reconcile(own, grace=0, wait=20), threads=5
    )
    assert not errors
    assert sum(len(r.requeued) for r in results) == 40
    assert sorted(ctx.queue().job_ids) == sorted(lost)


def hold_lock(ctx: Phase1) -> tuple[threading.Event, threading.Event]:
    """Hold the queue's reconciler lock in another transaction until `release` is set."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ctx.transaction() as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (reconcile.lock_key(ctx.settings.queue),),
            )
            held.set()
            release.wait(30)

    threading.Thread(target=holder, daemon=True).start()
    assert held.wait(10)
    return held, release


def test_locked_out_while_another_reconciles(ctx: Phase1) -> None:
    lost = approved(ctx, 1)
    lose(ctx, lost)
    _, release = hold_lock(ctx)
    try:
        outcome = reconcile.reconcile(ctx, grace=0, wait=0.5)
        assert outcome.locked_out and outcome.requeued == []
        # The command says so in one line, exit 1.
        result = subprocess.run(
            [PHASE1, "reconcile", "--grace", "0", "--wait", "0"],
            env=settings_env(ctx.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "another process is reconciling" in result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    finally:
        release.set()
    assert reconcile.reconcile(ctx, grace=0, wait=10).requeued == lost


@pytest.mark.parametrize("as_json", [False, True])
def test_command_output(ctx: Phase1, as_json: bool) -> None:
    lose(ctx, approved(ctx, 2))
    result = subprocess.run(
        [PHASE1, "reconcile", "--grace", "0", *(["--json"] if as_json else [])],
        env=settings_env(ctx.settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    if as_json:
        summary = json.loads(result.stdout)
        assert summary["requeued"] == 2 and summary["checked"] == 2
        assert summary["queue"] == ctx.settings.queue and not summary["lockedOut"]
    else:
        assert result.stdout.startswith("re-enqueued 2 of 2 live job(s)")


@pytest.fixture
def last_try(make_settings: Callable[..., Settings]) -> Iterator[Phase1]:
    """Jobs with no retry: RQ's failure of one is final."""
    ctx = build(make_settings(max_retries=0))
    yield ctx
    ctx.close()


def failed_events(ctx: Phase1, job_id: str) -> list[events.Event]:
    read = events.read(ctx.redis, ctx.settings.queue, job_id=job_id)
    return [e for _, e in read if e.type == events.FAILED]


def test_a_job_rq_failed_on_its_own_is_recorded_failed_and_dead_lettered(
    last_try: Phase1,
) -> None:
    """A plain `rq worker`'s maintenance fails a job a dead worker took and never started,
    without phase1's failure handling: its row said `pending` for good."""
    ctx = last_try
    (job_id,) = approved(ctx, 1)
    queue = ctx.queue()
    ctx.redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")  # taken; died
    ctx.redis.set(queue.intermediate_queue.get_first_seen_key(job_id), time.time() - 120)
    rq_worker = SimpleWorker([queue], connection=ctx.redis, serializer=queue.serializer)
    queue.intermediate_queue.cleanup(rq_worker, queue)  # RQ's own pass
    job = Job.fetch(job_id, connection=ctx.redis, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FAILED and row_status(ctx, job_id) == "pending"

    outcome = reconcile.reconcile(ctx, grace=0)
    assert outcome.settled == [job_id] and outcome.requeued == []
    assert row_status(ctx, job_id) == "failed"
    with ctx.transaction() as conn:
        attempts = audit.attempts(conn, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed")]
    assert attempts[0]["error_type"] == "EndedOutsidePhase1"
    assert "RQ ended the job as failed" in attempts[0]["error_message"]
    assert "stuck in intermediate queue" in attempts[0]["error_message"]
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    assert entry is not None and entry["reason"] == "abandoned"
    assert len(failed_events(ctx, job_id)) == 1

    again = reconcile.reconcile(ctx, grace=0)  # nothing left to do, nothing twice
    assert again.settled == [] and again.requeued == []
    with ctx.transaction() as conn:
        assert len(audit.attempts(conn, job_id)) == 1
    assert len(failed_events(ctx, job_id)) == 1


def test_a_final_failure_dead_lettered_while_postgresql_was_down_reaches_its_row(
    last_try: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    """phase1 dead-letters a final failure and announces it even when PostgreSQL is down; the
    row stayed `active` for good, and the polling route said so."""
    ctx = last_try
    (job_id,) = approved(ctx, 1)
    with ctx.transaction() as conn:
        started = phase1_tasks.open_attempt(
            conn, job_id, audit.get(conn, job_id)["plan_id"], "w1", 0
        )
        assert started is not None and started.attempt == 1
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    job.set_status(JobStatus.FAILED)

    def down() -> None:
        raise UnavailableError("PostgreSQL at 127.0.0.1:5432 is unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(ctx, "transaction", down)
        with pytest.raises(UnavailableError):
            failure.record_failure(
                job,
                ctx.redis,
                reason="exception",
                error_type="ValueError",
                message="bad input",
                traceback_text=None,
                final=True,
                next_retry_at=None,
                ctx=ctx,
            )
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    assert entry is not None and len(failed_events(ctx, job_id)) == 1
    set_row(ctx, job_id, "active", updated_at="NOW() - interval '1 hour'")

    outcome = reconcile.reconcile(ctx, grace=0)
    assert outcome.settled == [job_id]
    assert row_status(ctx, job_id) == "failed"
    with ctx.transaction() as conn:
        attempts = audit.attempts(conn, job_id)
    assert [(a["attempt"], a["status"], a["error_type"]) for a in attempts] == [
        (1, "failed", "ValueError")
    ]
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) == entry  # as it was
    assert len(failed_events(ctx, job_id)) == 1  # announced once
