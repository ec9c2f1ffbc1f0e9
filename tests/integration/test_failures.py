"""Every way a job can fail ends in exactly one place: real Redis, PostgreSQL and workers.

Retries at the configured spacing, the DLQ after the last one, timeouts (the database gives up
first), permanent errors, a killed work horse, a killed worker (the orphan sweep), and RQ's own
late abandoned-job cleanup finding nothing left to do.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from rq.exceptions import AbandonedJobError
from rq.job import Job, JobStatus
from support import Processes, horse_pid, inject_fault, wait_until

from phase1 import context
from phase1.context import Phase1, build
from phase1.db import Row
from phase1.domain import audit, plans
from phase1.errors import ConflictError
from phase1.jobs import approval, deadletter, events, failure
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

SAMPLE_KEYS = [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]  # type: ignore[index]


@pytest.fixture
def make_ctx(make_settings: Callable[..., Settings]) -> Any:
    built: list[Phase1] = []

    def make(**overrides: Any) -> Phase1:
        ctx = build(make_settings(**overrides))
        built.append(ctx)
        return ctx

    yield make
    for ctx in built:
        ctx.close()


def approve_new_plan(ctx: Phase1) -> tuple[uuid.UUID, str]:
    with ctx.transaction() as conn:
        plan_id = plans.create_plan(conn, "Failure plan", SAMPLE_ANALYSIS).id
    return plan_id, approval.approve(ctx, plan_id).job_id


def status(ctx: Phase1, job_id: str) -> str:
    return jobs.view(ctx, job_id).status


def final(ctx: Phase1, job_id: str) -> str | None:
    current = status(ctx, job_id)
    return current if current in ("completed", "failed") else None


def history(ctx: Phase1, job_id: str) -> list[Row]:
    with ctx.transaction() as conn:
        return audit.attempts(conn, job_id)


def task_keys(ctx: Phase1, plan_id: uuid.UUID) -> list[str]:
    with ctx.transaction() as conn:
        return [t.key for t in plans.list_tasks(conn, plan_id)]


def rq_job(ctx: Phase1, job_id: str) -> Job:
    return Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)


def failed_events(ctx: Phase1, job_id: str) -> list[events.Event]:
    return [
        e
        for _, e in events.read(ctx.redis, ctx.settings.queue, job_id=job_id)
        if e.type == events.FAILED
    ]


def sleeping_in_db(database_url: str) -> bool:
    """An attempt is inside the injected pg_sleep (this run's own database). Tests that wait
    for their own attempt to sleep first wait for none to be (no_attempt_sleeping)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event = 'PgSleep'"
        ).fetchone()
    return bool(row and row[0])


def no_attempt_sleeping(database_url: str) -> None:
    """Wait until no attempt sleeps in the database: an earlier test's killed worker leaves
    its statement sleeping for up to its injected 2.5 s, which sleeping_in_db would take for
    this test's own attempt."""
    wait_until(lambda: not sleeping_in_db(database_url), what="no earlier attempt sleeping")


def set_fault_sleep(database_url: str, plan_id: uuid.UUID, sleep_s: float) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE test_faults SET sleep_s = %s WHERE plan_id = %s", (sleep_s, str(plan_id))
        )


def dlq_entry(ctx: Phase1, job_id: str) -> dict[str, Any]:
    """The job's DLQ entry, which follows its final attempt's PostgreSQL commit by a moment."""
    entry: dict[str, Any] = wait_until(
        lambda: deadletter.get(ctx.redis, ctx.settings.queue, job_id), what="the DLQ entry"
    )
    return entry


def assert_one_terminal_state(ctx: Phase1, job_id: str, expected: str) -> None:
    """PostgreSQL, RQ and the DLQ agree, and nothing is left running."""
    assert status(ctx, job_id) == expected
    # The job's own transaction commits its end state in PostgreSQL a moment before the
    # worker's RQ bookkeeping (status, started registry) follows: give RQ that moment.
    rq_status = JobStatus.FINISHED if expected == "completed" else JobStatus.FAILED
    wait_until(
        lambda: (
            rq_job(ctx, job_id).get_status() == rq_status
            and job_id not in ctx.queue().started_job_registry.get_job_ids(cleanup=False)
        ),
        timeout=10,
        what=f"RQ to agree the job is {rq_status}",
    )
    job = rq_job(ctx, job_id)
    in_dlq = deadletter.get(ctx.redis, ctx.settings.queue, job_id) is not None
    assert all(a["status"] != "active" for a in history(ctx, job_id))
    if expected == "completed":
        assert job.get_status() == JobStatus.FINISHED and not in_dlq
    else:
        assert job.get_status() == JobStatus.FAILED and in_dlq
        assert deadletter.size(ctx.redis, ctx.settings.queue) == 1


def test_always_failing_job_is_dead_lettered_after_1_plus_retries_at_the_spacing(
    make_ctx: Callable[..., Phase1], processes: Processes
) -> None:
    # Two intervals for three retries: the *last* one repeats (RQ would repeat the first).
    ctx = make_ctx(max_retries=3, retry_intervals=[0.5, 2.5])
    plan_id, job_id = approve_new_plan(ctx)
    inject_fault(ctx.database_url, plan_id, fail_times=100)
    processes.worker(ctx.settings)

    retrying = wait_until(
        lambda: (v := jobs.view(ctx, job_id)).status == "retrying" and v, what="retrying"
    )
    assert retrying.nextRetryAt is not None and retrying.error is not None
    wait_until(lambda: final(ctx, job_id), timeout=40, what="job failed for good")

    attempts = history(ctx, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(n, "failed") for n in (1, 2, 3, 4)]
    assert all("injected fault" in a["error_message"] for a in attempts)
    # RQ schedules retries in whole seconds (and its scheduler polls each second): a retry
    # may come up to 1 s early or late, never sooner than interval - 1.
    gaps = [
        (later["started_at"] - earlier["ended_at"]).total_seconds()
        for earlier, later in itertools.pairwise(attempts)
    ]
    for gap, interval in zip(gaps, [0.5, 2.5, 2.5], strict=True):
        assert interval - 1.05 <= gap <= interval + 4, gaps
    assert min(gaps[1:]) > 1.4, f"the last interval must repeat, not the first: {gaps}"

    view = jobs.view(ctx, job_id)
    assert view.attempt == 4 and view.maxAttempts == 4 and view.completedAt is not None
    assert view.error is not None and "injected fault" in view.error.message
    entry = dlq_entry(ctx, job_id)
    assert entry["reason"] == "exception" and entry["planId"] == str(plan_id)
    assert entry["errorType"] == "RaiseException" and "injected fault" in entry["message"]
    assert "Traceback" in entry["traceback"]
    assert entry["payload"]["planId"] == str(plan_id)
    assert [a["attempt"] for a in entry["attempts"]] == [1, 2, 3, 4]
    assert all(a["startedAt"] and a["endedAt"] and a["error"] for a in entry["attempts"])
    assert_one_terminal_state(ctx, job_id, "failed")
    assert job_id in ctx.queue().failed_job_registry
    failures = failed_events(ctx, job_id)
    assert [e.data["final"] for e in failures] == [False, False, False, True]
    assert all("nextRetryAt" in e.data for e in failures[:3])
    with pytest.raises(ConflictError, match="dlq requeue"):
        approval.approve(ctx, plan_id)


def test_fail_twice_then_succeed_completes_without_a_dlq_entry(
    ctx: Phase1, processes: Processes
) -> None:
    plan_id, job_id = approve_new_plan(ctx)
    inject_fault(ctx.database_url, plan_id, fail_times=2)
    processes.worker(ctx.settings)
    wait_until(lambda: final(ctx, job_id), what="job finished")
    attempts = history(ctx, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS  # created once, by the attempt that worked
    assert jobs.view(ctx, job_id).error is None
    assert_one_terminal_state(ctx, job_id, "completed")
    assert deadletter.size(ctx.redis, ctx.settings.queue) == 0


def test_job_blocked_on_a_lock_times_out_retries_and_completes_once_the_lock_goes(
    make_ctx: Callable[..., Phase1], processes: Processes
) -> None:
    ctx = make_ctx(job_timeout=2, max_retries=10, retry_intervals=[0.3])
    plan_id, job_id = approve_new_plan(ctx)
    with psycopg.connect(ctx.database_url) as holder:
        # Creating tasks needs a key-share lock on the plan row (the foreign key).
        holder.execute("SELECT 1 FROM marketplace_plans WHERE id = %s FOR UPDATE", (plan_id,))
        processes.worker(ctx.settings)
        wait_until(lambda: len(history(ctx, job_id)) >= 2, timeout=30, what="two timeouts")
        holder.rollback()
    wait_until(lambda: final(ctx, job_id), timeout=30, what="job finished after the lock")
    attempts = history(ctx, job_id)
    assert attempts[-1]["status"] == "completed"
    timed_out = attempts[:-1]
    assert timed_out and all(a["status"] == "failed" for a in timed_out)
    for attempt in timed_out:
        assert attempt["error_type"] == "LockNotAvailable"
        assert "database gave up before the 2 s attempt timeout" in attempt["error_message"]
        # PostgreSQL gave up (lock_timeout) before RQ's 2 s timeout had to.
        assert (attempt["ended_at"] - attempt["started_at"]).total_seconds() < 2
    failures = failed_events(ctx, job_id)
    assert failures and all(e.data["reason"] == "timeout" for e in failures)
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS
    assert_one_terminal_state(ctx, job_id, "completed")


def _empty_analysis(ctx: Phase1, plan_id: uuid.UUID, job_id: str) -> str:
    with psycopg.connect(ctx.database_url, autocommit=True) as conn:
        conn.execute("UPDATE marketplace_plans SET analysis = '{}' WHERE id = %s", (plan_id,))
    return "invalid analysis"


def _bad_payload(ctx: Phase1, plan_id: uuid.UUID, job_id: str) -> str:
    """Fails the job before it opens its attempt row; the failed attempt is added then. Its
    INSERT failed on PostgreSQL's parameter types, so the failure reached neither PostgreSQL
    nor the DLQ, and the row stayed `pending`."""
    job = rq_job(ctx, job_id)
    assert job.args  # loads the job's data, which save() writes back
    job.args = [{"planId": "not-a-uuid", "v": 1}]
    job.save()
    return "invalid job payload at planId"


@pytest.mark.parametrize("break_it", [_empty_analysis, _bad_payload], ids=["analysis", "payload"])
def test_permanent_error_is_dead_lettered_after_one_attempt(
    ctx: Phase1, processes: Processes, break_it: Callable[[Phase1, uuid.UUID, str], str]
) -> None:
    plan_id, job_id = approve_new_plan(ctx)
    said = break_it(ctx, plan_id, job_id)
    processes.worker(ctx.settings)
    wait_until(lambda: final(ctx, job_id), what="job failed")
    attempts = history(ctx, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed")]
    assert attempts[0]["error_type"] == "PermanentJobError"
    entry = dlq_entry(ctx, job_id)
    assert entry["reason"] == "permanent"
    assert said in entry["message"]
    assert_one_terminal_state(ctx, job_id, "failed")


def test_kill_9_of_the_work_horse_mid_job_retries_it(
    make_ctx: Callable[..., Phase1], processes: Processes
) -> None:
    ctx = make_ctx(max_retries=2, retry_intervals=[0.2])
    plan_id, job_id = approve_new_plan(ctx)
    no_attempt_sleeping(ctx.database_url)
    inject_fault(ctx.database_url, plan_id, fail_times=0, sleep_s=2.5)
    worker = processes.worker(ctx.settings, "--fork")
    wait_until(lambda: sleeping_in_db(ctx.database_url), what="attempt 1 in the database")
    horse = wait_until(lambda: horse_pid(worker.pid), what="the work horse")
    set_fault_sleep(ctx.database_url, plan_id, 0)
    os.kill(horse, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: final(ctx, job_id), timeout=60, what="job finished after the kill")
    assert time.monotonic() - killed_at < 60
    attempts = history(ctx, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "completed")]
    assert attempts[0]["error_type"] == "WorkHorseKilled"
    assert "killed by signal 9 (SIGKILL)" in attempts[0]["error_message"]
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS
    assert_one_terminal_state(ctx, job_id, "completed")
    assert worker.poll() is None  # the worker itself lived on


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "dead-lettered"])
def test_kill_9_of_the_whole_worker_is_recovered_by_the_sweep_within_60s(
    make_ctx: Callable[..., Phase1], processes: Processes, retries: int
) -> None:
    ctx = make_ctx(max_retries=retries, retry_intervals=[0.2], orphan_after=2)
    plan_id, job_id = approve_new_plan(ctx)
    no_attempt_sleeping(ctx.database_url)
    inject_fault(ctx.database_url, plan_id, fail_times=0, sleep_s=2.5)
    doomed = processes.worker(ctx.settings)
    wait_until(lambda: sleeping_in_db(ctx.database_url), what="attempt 1 in the database")
    set_fault_sleep(ctx.database_url, plan_id, 0)
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its scheduler, mid-attempt
    doomed.wait(timeout=10)
    killed_at = time.monotonic()
    processes.worker(ctx.settings)  # e.g. its supervisor starting a new one
    outcome = wait_until(lambda: final(ctx, job_id), timeout=60, what="orphan recovered")
    recovered_in = time.monotonic() - killed_at
    print(f"orphan recovered ({outcome}) {recovered_in:.1f} s after kill -9 (orphan_after=2)")
    assert recovered_in < 60

    attempts = history(ctx, job_id)
    assert attempts[0]["status"] == "failed"
    assert attempts[0]["error_type"] == "AbandonedJobError"
    assert "no heartbeat" in attempts[0]["error_message"]
    if retries:
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "completed")]
        assert task_keys(ctx, plan_id) == SAMPLE_KEYS
        assert_one_terminal_state(ctx, job_id, "completed")
    else:
        assert len(attempts) == 1
        assert dlq_entry(ctx, job_id)["reason"] == "abandoned"
        assert_one_terminal_state(ctx, job_id, "failed")

    # RQ's own cleanup of abandoned jobs, however late it comes, finds nothing left to do.
    ctx.queue().started_job_registry.cleanup(time.time() + 3600)
    assert history(ctx, job_id) == attempts
    assert_one_terminal_state(ctx, job_id, outcome)


def test_rq_cleanup_of_an_abandoned_job_dead_letters_it_once(
    make_ctx: Callable[..., Phase1], processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain `rq worker`, no phase1 worker to sweep: RQ's late cleanup ends the job."""
    ctx = make_ctx(max_retries=0)
    plan_id, job_id = approve_new_plan(ctx)
    no_attempt_sleeping(ctx.database_url)
    inject_fault(ctx.database_url, plan_id, fail_times=0, sleep_s=2.5)
    doomed = processes.rq_worker(ctx.settings, "--worker-class", "rq.SimpleWorker")
    wait_until(lambda: sleeping_in_db(ctx.database_url), what="attempt 1 in the database")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    assert status(ctx, job_id) == "active"
    # RQ's cleanup comes ~15 min later: by then the killed worker's statement (its injected
    # sleep, with the execution row locked) has long ended.
    no_attempt_sleeping(ctx.database_url)

    # RQ runs our callback in this process, as the worker that cleans up would.
    monkeypatch.setattr(context, "_process_context", (os.getpid(), ctx))
    ctx.queue().started_job_registry.cleanup(
        time.time() + 3600
    )  # what RQ does ~15 min later with its defaults
    attempts = history(ctx, job_id)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed")]
    assert attempts[0]["error_type"] == "AbandonedJobError"
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    assert entry is not None and entry["reason"] == "abandoned"
    assert_one_terminal_state(ctx, job_id, "failed")

    # The same dead attempt reported again (the sweep and RQ racing) records nothing twice.
    again = failure.record_failure(
        rq_job(ctx, job_id),
        ctx.redis,
        reason="abandoned",
        error_type=AbandonedJobError.__name__,
        message="reported twice",
        traceback_text=None,
        final=True,
        next_retry_at=None,
        only_if_active=True,
        ctx=ctx,
    )
    assert again == "duplicate"
    assert history(ctx, job_id) == attempts
    assert len(failed_events(ctx, job_id)) == 1
