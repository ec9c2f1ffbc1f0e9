"""The Phase 1 job's PostgreSQL work in five round trips (phase1.work), on a real PostgreSQL:
it writes what the one-statement-per-step version writes, and keeps its idempotency."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from phase1 import executions, plans, work
from phase1.context import Phase1
from phase1.errors import PermanentJobError
from phase1.schemas import SAMPLE_ANALYSIS


def pending_job(ctx: Phase1, analysis: dict[str, Any] = SAMPLE_ANALYSIS) -> tuple[str, uuid.UUID]:
    """An approved plan with its `pending` execution row, as the approval leaves them."""
    job_id = str(uuid.uuid4())
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Work plan", analysis)
        plans.set_plan_status(conn, plan.id, "approved")
        executions.insert(
            conn, plan_id=plan.id, job_id=job_id, queue=ctx.settings.queue, max_attempts=4
        )
    return job_id, plan.id


def run(ctx: Phase1, job_id: str, plan_id: uuid.UUID) -> tuple[int, work.Outcome]:
    with ctx.read() as conn:
        attempt = work.open_attempt(conn, job_id, "w1", 3)
    assert attempt is not None
    with ctx.transaction() as conn:
        return attempt, work.create_tasks(conn, job_id, plan_id, attempt)


def test_it_writes_what_one_statement_per_step_writes(ctx: Phase1) -> None:
    job_id, plan_id = pending_job(ctx)
    attempt, outcome = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        tasks = plans.list_tasks(conn, plan_id)
        row = executions.get(conn, job_id)
        attempts = executions.attempts(conn, job_id)
    assert outcome.ran and attempt == 1
    assert outcome.result == {
        "planId": str(plan_id),
        "tasksCreated": 5,
        "taskIds": [str(t.id) for t in tasks],
    }
    assert [t.key for t in tasks] == [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]
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
        params = plans.task_params(plan_id, {"analysis": first_two})
        params["positions"] = [1, 2]
        conn.execute(plans.SQL_INSERT_TASKS, params)
        before = {t.key: t.id for t in plans.list_tasks(conn, plan_id)}
    _, outcome = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        tasks = plans.list_tasks(conn, plan_id)
    assert outcome.result["tasksCreated"] == 3
    assert outcome.result["taskIds"] == [str(t.id) for t in tasks] and len(tasks) == 5
    assert [t.key for t in tasks] == [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]
    assert all(str(before[key]) in outcome.result["taskIds"] for key in before)


def test_a_job_a_concurrent_run_completed_is_left_alone(ctx: Phase1) -> None:
    job_id, plan_id = pending_job(ctx)
    with ctx.read() as conn:
        attempt = work.open_attempt(conn, job_id, "w1", 3)
    assert attempt == 1
    # Another run completes the job between this run's start and its work.
    _, other = run(ctx, job_id, plan_id)
    with ctx.transaction() as conn:
        outcome = work.create_tasks(conn, job_id, plan_id, attempt)
        tasks = plans.list_tasks(conn, plan_id)
        attempts = executions.attempts(conn, job_id)
    assert not outcome.ran and outcome.result == other.result
    assert len(tasks) == 5
    # The other run's start closed attempt 1 as lost (phase1.executions.SQL_START_ATTEMPT).
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "completed")]
    with ctx.read() as conn:  # and a run of a completed job opens no attempt
        assert work.open_attempt(conn, job_id, "w1", 3) is None


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
        row = executions.get(conn, job_id)
        count = conn.execute(
            "SELECT count(*) AS n FROM marketplace_tasks WHERE plan_id = %s", (plan_id,)
        ).fetchone()
    assert row is not None and row["status"] == "active" and row["result"] is None
    assert count is not None and count["n"] == 0
