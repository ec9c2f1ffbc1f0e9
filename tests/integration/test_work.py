"""The Phase 1 job's PostgreSQL work in seven round trips (domain.phase1_tasks), on real PostgreSQL:
it writes what the one-statement-per-step version writes, and keeps its idempotency."""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import psycopg
import pytest
from http_support import FreezableProxy, pg_address, via_proxy
from psycopg.pq import TransactionStatus
from support import inject_fault

from phase1 import db
from phase1.context import Phase1
from phase1.domain import audit, phase1_tasks, plans
from phase1.errors import PermanentJobError
from phase1.schemas import SAMPLE_ANALYSIS


def pending_job(ctx: Phase1, analysis: dict[str, Any] = SAMPLE_ANALYSIS) -> tuple[str, uuid.UUID]:
    """An approved plan with its `pending` execution row, as the approval leaves them."""
    job_id = str(uuid.uuid4())
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Work plan", analysis)
        plans.set_plan_status(conn, plan.id, "approved")
        audit.insert(conn, plan_id=plan.id, job_id=job_id, queue=ctx.settings.queue, max_attempts=4)
    return job_id, plan.id


def start(ctx: Phase1, job_id: str, plan_id: uuid.UUID) -> phase1_tasks.Started:
    with ctx.transaction() as conn:
        started = phase1_tasks.open_attempt(conn, job_id, plan_id, "w1", 3)
    assert started is not None
    return started


def run(ctx: Phase1, job_id: str, plan_id: uuid.UUID) -> tuple[int, phase1_tasks.Outcome]:
    started = start(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        return started.attempt, phase1_tasks.create_tasks(conn, job_id, started, plan_id)


def test_it_writes_what_one_statement_per_step_writes(ctx: Phase1) -> None:
    job_id, plan_id = pending_job(ctx)
    attempt, outcome = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        plan_tasks = plans.list_tasks(conn, plan_id)
        row = audit.get(conn, job_id)
        attempts = audit.attempts(conn, job_id)
    assert outcome.ran and attempt == 1
    assert outcome.result == {
        "planId": str(plan_id),
        "tasksCreated": 5,
        "taskIds": [str(t.id) for t in plan_tasks],
    }
    assert [t.key for t in plan_tasks] == [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]
    assert row is not None and row["status"] == "completed" and row["progress"] == 100
    assert row["result"] == outcome.result and row["completed_at"] is not None
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "completed")]
    assert attempts[0]["ended_at"] is not None


def test_tasks_already_there_are_kept_and_listed_in_order(ctx: Phase1) -> None:
    """A run after a partial one (tasks of the plan already there) creates only the rest and
    lists all of them in their analysis order."""
    job_id, plan_id = pending_job(ctx)
    first_two = {"phase1": SAMPLE_ANALYSIS["phase1"][1:3]}
    with ctx.transaction() as conn:
        params = phase1_tasks.task_params(plan_id, {"analysis": first_two})
        params["positions"] = [1, 2]
        conn.execute(phase1_tasks.SQL_CREATE_TASKS, params)
        before = {t.key: t.id for t in plans.list_tasks(conn, plan_id)}
    _, outcome = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        plan_tasks = plans.list_tasks(conn, plan_id)
    assert outcome.result["tasksCreated"] == 3
    assert outcome.result["taskIds"] == [str(t.id) for t in plan_tasks] and len(plan_tasks) == 5
    assert [t.key for t in plan_tasks] == [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]
    assert all(str(before[key]) in outcome.result["taskIds"] for key in before)


def test_a_job_a_concurrent_run_completed_is_left_alone(ctx: Phase1) -> None:
    job_id, plan_id = pending_job(ctx)
    started = start(ctx, job_id, plan_id)
    assert started.attempt == 1
    # Another run completes the job between this run's start and its tasks.
    _, other = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        outcome = phase1_tasks.create_tasks(conn, job_id, started, plan_id)
        plan_tasks = plans.list_tasks(conn, plan_id)
        attempts = audit.attempts(conn, job_id)
    assert not outcome.ran and outcome.result == other.result
    assert len(plan_tasks) == 5
    # The other run's start closed attempt 1 as lost (phase1.domain.audit.SQL_START_ATTEMPT).
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "completed")]
    with ctx.transaction() as conn:  # and a run of a completed job opens no attempt
        assert phase1_tasks.open_attempt(conn, job_id, plan_id, "w1", 3) is None


@pytest.mark.parametrize(
    ("analysis", "message"), [(None, "not found"), ({"phase1": []}, "invalid analysis")]
)
def test_a_missing_plan_or_a_bad_analysis_is_permanent_and_writes_nothing(
    ctx: Phase1, analysis: dict[str, Any] | None, message: str
) -> None:
    job_id, plan_id = pending_job(ctx)
    if analysis is None:
        plan_id = uuid.uuid4()  # the job names a plan that is not there
    else:
        with ctx.transaction() as conn:
            conn.execute(
                "UPDATE marketplace_plans SET analysis = %s::jsonb WHERE id = %s",
                ('{"phase1": []}', plan_id),
            )
    with pytest.raises(PermanentJobError, match=message):
        run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        row = audit.get(conn, job_id)
        count = conn.execute(
            "SELECT count(*) AS n FROM marketplace_tasks WHERE plan_id = %s", (plan_id,)
        ).fetchone()
    assert row is not None and row["status"] == "active" and row["result"] is None
    assert count is not None and count["n"] == 0


def test_a_failure_inside_the_transaction_rolls_it_all_back(ctx: Phase1) -> None:
    """A statement failing rolls back the whole transaction: nothing is written, and the
    connection goes back to the pool usable."""
    job_id, plan_id = pending_job(ctx)
    inject_fault(ctx.settings.database_url or "", plan_id, fail_times=1)
    started = start(ctx, job_id, plan_id)
    with (
        pytest.raises(psycopg.errors.RaiseException, match="injected fault"),
        ctx.transaction() as conn,
    ):
        phase1_tasks.create_tasks(conn, job_id, started, plan_id)
    with ctx.read() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert plans.list_tasks(conn, plan_id) == []
        row = audit.get(conn, job_id)
    assert row is not None and row["status"] == "active"
    _, outcome = run(ctx, job_id, plan_id)  # the next attempt does it all
    assert outcome.ran and outcome.result["tasksCreated"] == 5


class GaveUp(Exception):
    """What a job timeout is to the job: an exception raised while it waits for PostgreSQL."""


def test_work_stuck_on_a_hung_server_never_commits_after_the_job_gave_up(ctx: Phase1) -> None:
    """COMMIT is sent only once the statements have answered: work held up on its way
    (PostgreSQL hung) and given up on by the job rolls back when the server wakes, instead of
    completing a job whose attempt was already recorded as failed."""
    job_id, plan_id = pending_job(ctx)
    started = start(ctx, job_id, plan_id)
    database_url = ctx.settings.database_url or ""
    proxy = FreezableProxy(pg_address(database_url))

    def give_up(_signum: int, _frame: object) -> None:
        raise GaveUp

    previous = signal.signal(signal.SIGALRM, give_up)
    try:
        conn = db.connect(via_proxy(database_url, proxy.port))
        conn.execute("SELECT 1")  # in a transaction now: BEGIN has been answered
        proxy.freeze()
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(GaveUp):
            phase1_tasks.create_tasks(conn, job_id, started, plan_id)
        conn.close()  # as the pool closes a connection returned mid-query
        proxy.thaw()  # the held message reaches the server now
        time.sleep(1.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        proxy.close()
    with ctx.read() as check:
        assert plans.list_tasks(check, plan_id) == []
        row = audit.get(check, job_id)
    assert row is not None and row["status"] == "active"
