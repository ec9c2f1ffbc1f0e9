"""The approval's rules in PostgreSQL: a plan is approved once, gets one execution row, and a
rejected plan is never approved. The service that also enqueues the job is phase1.jobs.approval.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from phase1.domain import audit, phase1_tasks, plans
from phase1.errors import ConflictError, InvalidInputError, PermanentJobError
from phase1.schemas import Plan, Task

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn, Row


@dataclass(frozen=True)
class SyncApproval:
    """The outcome of approving a plan in sync mode: the plan and its tasks, made inline."""

    plan: Plan
    tasks: list[Task]

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.model_dump(mode="json"),
            "tasks": [t.model_dump(mode="json") for t in self.tasks],
        }


# The approval's writes as one statement (BEGIN, it, COMMIT) instead of four statements in a
# transaction: the approval's latency is what its caller waits for, and bench/RESULTS.md has
# the gain that keeps this second path beside `record_in_steps`. Not autocommit: a statement
# held up on its way to a hung server would then commit after the request answered 503.
# The plan's row lock serialises concurrent approvals as before. A statement reads with the
# snapshot it started with, so an approval committed while this one waited for the lock shows
# as the plan `approved` with no execution row seen and none inserted (ON CONFLICT): then
# `approve` takes the step-by-step transaction, whose statements see that commit.
SQL_APPROVE = """
WITH plan AS MATERIALIZED (
  SELECT id, status FROM marketplace_plans WHERE id = %(plan_id)s FOR UPDATE
), existing AS MATERIALIZED (
  SELECT job_id, status FROM marketplace_job_executions WHERE plan_id = %(plan_id)s
), ins AS (
  INSERT INTO marketplace_job_executions
    (id, plan_id, job_id, status, attempt_number, queue, max_attempts, progress)
  SELECT %(id)s, plan.id, %(job_id)s, 'pending', 1, %(queue)s, %(max_attempts)s, 0
  FROM plan WHERE plan.status <> 'rejected' AND NOT EXISTS (SELECT 1 FROM existing)
  ON CONFLICT (plan_id) DO NOTHING
  RETURNING job_id
), upd AS (
  UPDATE marketplace_plans p SET status = 'approved', updated_at = NOW()
  FROM plan, ins WHERE p.id = plan.id AND plan.status <> 'approved'
)
SELECT plan.status AS plan_status, existing.job_id, existing.status,
       ins.job_id IS NOT NULL AS created
FROM plan LEFT JOIN existing ON TRUE LEFT JOIN ins ON TRUE
"""


def record(conn: Conn, plan_id: UUID, job_id: str, queue: str, max_attempts: int) -> Row | None:
    """Run SQL_APPROVE in the caller's transaction: the plan's status and lock, the execution
    row it had (`job_id`, `status`) and whether this call created one; None: no such plan."""
    params = {
        "plan_id": plan_id,
        "id": uuid.uuid4(),
        "job_id": job_id,
        "queue": queue,
        "max_attempts": max_attempts,
    }
    return conn.execute(SQL_APPROVE, params).fetchone()


def record_in_steps(
    conn: Conn, plan_id: UUID, queue: str, max_attempts: int
) -> tuple[str, Row | None]:
    """The approval's transaction statement by statement (each with a fresh snapshot): the
    new job's id and None, or the plan's execution row when it has one already."""
    # The row lock serialises concurrent approvals of one plan.
    plan = plans.get_plan(conn, plan_id, lock=True)
    if plan.status == "rejected":
        raise ConflictError(f"plan {plan_id} is rejected and cannot be approved")
    existing = audit.for_plan(conn, plan_id)
    if existing is not None:
        return existing["job_id"], existing
    if plan.status != "approved":
        plans.set_plan_status(conn, plan_id, "approved")
    job_id = str(uuid.uuid4())
    audit.insert(conn, plan_id=plan_id, job_id=job_id, queue=queue, max_attempts=max_attempts)
    return job_id, None


def reject(conn: Conn, plan_id: UUID) -> Plan:
    """Reject a plan that has not been approved; rejecting twice is harmless."""
    plan = plans.get_plan(conn, plan_id, lock=True)
    if plan.status == "rejected":
        return plan
    if plan.status == "approved":
        raise ConflictError(f"plan {plan_id} is already approved and cannot be rejected")
    return plans.set_plan_status(conn, plan_id, "rejected")


def approve_sync(conn: Conn, plan_id: UUID) -> SyncApproval:
    """The flow as it was before the queue: approve and create the tasks inline."""
    plan = plans.get_plan(conn, plan_id, lock=True)
    if plan.status == "rejected":
        raise ConflictError(f"plan {plan_id} is rejected and cannot be approved")
    if plan.status != "approved":
        plan = plans.set_plan_status(conn, plan_id, "approved")
    try:
        _, tasks = phase1_tasks.create_phase1_tasks(conn, plan_id)
    except PermanentJobError as exc:
        raise InvalidInputError(str(exc)) from exc
    return SyncApproval(plan=plan, tasks=tasks)
