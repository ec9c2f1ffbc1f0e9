"""The reconciler on real Redis and PostgreSQL: what it re-enqueues, what it leaves alone, and
many reconcilers at once."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from rq.job import Job
from support import PHASE1, run_concurrently, settings_env

from phase1 import approval, keys, plans, reconcile
from phase1.context import Phase1
from phase1.schemas import SAMPLE_ANALYSIS


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
