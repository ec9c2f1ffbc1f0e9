"""`kill -9` of a worker, of its work horse, of both: the job still ends completed, once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from support import Processes

from faults.faultkit import (
    check_invariants,
    horse_of,
    kill,
    run_slow_job,
    start_worker,
    status,
    wait_final,
)
from phase1.context import build
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]

# A job whose worker died must be back in play within 60 s (DESIGN §2): RQ's abandoned-job
# cleanup sees it once its execution heartbeat lapses (phase1 workers keep that short), and
# phase1's orphan sweep may find it sooner.
ORPHAN_RECOVERY = 60


def test_kill_9_of_the_work_horse(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(job_timeout=6))
    plan_id, job_id, worker = run_slow_job(ctx, processes, 1.5, "--fork")
    horse = horse_of(worker.pid)
    assert horse is not None
    kill(horse)
    killed = time.monotonic()
    took = wait_final(ctx, [job_id], timeout=40)
    assert worker.poll() is None  # the worker carries on
    assert status(ctx, job_id) == "completed"
    outcome = check_invariants(ctx, [plan_id])
    assert outcome.attempts[job_id][0] == "failed" and outcome.attempts[job_id][-1] == "completed"
    record(
        "kill -9 of the work horse (--fork)",
        "SIGKILL to the horse mid-transaction",
        f"completed, attempts {outcome.attempts[job_id]}",
        time.monotonic() - killed if took else None,
    )
    ctx.close()


def test_kill_9_of_a_forking_worker_leaves_its_horse_to_finish(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(job_timeout=6))
    plan_id, job_id, worker = run_slow_job(ctx, processes, 1.5, "--fork")
    kill(worker.pid)
    killed = time.monotonic()
    wait_final(ctx, [job_id], timeout=30)
    outcome = check_invariants(ctx, [plan_id])
    assert outcome.attempts[job_id] == ["completed"]
    record(
        "kill -9 of a forking worker",
        "SIGKILL to the worker, horse alive",
        "horse completes the job, attempts ['completed']",
        time.monotonic() - killed,
    )
    ctx.close()


@pytest.mark.slow
@pytest.mark.timeout(60 + ORPHAN_RECOVERY)
def test_kill_9_of_worker_and_of_worker_with_horse(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    """Both scenarios at once (each on its own queue): recovery waits on timers either way."""
    simple = build(make_settings(job_timeout=3, queue=f"phase1-test-{uuid.uuid4().hex[:10]}"))
    forking = build(make_settings(job_timeout=3, queue=f"phase1-test-{uuid.uuid4().hex[:10]}"))
    plan_a, job_a, worker_a = run_slow_job(simple, processes, 2)
    kill(worker_a.pid)
    killed = time.monotonic()
    plan_b, job_b, worker_b = run_slow_job(forking, processes, 2, "--fork")
    horse = horse_of(worker_b.pid)
    assert horse is not None
    kill(worker_b.pid)
    kill(horse)
    # Replacements: the job is found, failed as abandoned, and retried.
    start_worker(processes, simple.settings)
    start_worker(processes, forking.settings, "--fork")
    wait_final(simple, [job_a], timeout=ORPHAN_RECOVERY, what="killed worker's job final")
    took_a = time.monotonic() - killed
    wait_final(forking, [job_b], timeout=ORPHAN_RECOVERY, what="killed worker+horse's job final")
    took_b = time.monotonic() - killed
    for ctx, plan_id, job_id, took, what in (
        (simple, plan_a, job_a, took_a, "kill -9 of an in-process worker"),
        (forking, plan_b, job_b, took_b, "kill -9 of a forking worker and its horse"),
    ):
        outcome = check_invariants(ctx, [plan_id])
        assert outcome.attempts[job_id][-1] == "completed"
        record(
            what, "SIGKILL mid-transaction", f"completed, attempts {outcome.attempts[job_id]}", took
        )
        ctx.close()
