"""The approval service that HTTP and the CLI share."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from phase1 import events, executions, plans
from phase1 import queue as jobs
from phase1.context import Phase1, redis_unavailable
from phase1.db import Row
from phase1.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermanentJobError,
    UnavailableError,
)
from phase1.schemas import Plan, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Approval:
    """The outcome of approving a plan in queue mode."""

    job_id: str
    plan_id: UUID
    status: str
    created: bool


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


def _check_redis(ctx: Phase1) -> None:
    """A PING, waited for: UnavailableError if Redis does not answer."""
    try:
        ctx.redis.ping()
    except RedisError as exc:
        raise _redis_unavailable(ctx, exc) from exc


def _redis_unavailable(ctx: Phase1, exc: BaseException) -> UnavailableError:
    return UnavailableError(f"{redis_unavailable(ctx.redis_url, exc)}; nothing was written")


@contextlib.contextmanager
def _redis_answers(ctx: Phase1) -> Iterator[Callable[[], None]]:
    """A PING sent now; the check this yields reads its answer (UnavailableError if none).

    The approval calls it before its COMMIT: with Redis down, the approval fails and leaves
    PostgreSQL untouched, instead of recording one that only the reconciler (or a retry)
    would enqueue later. (Redis failing after the commit is the outbox's case.) The answer
    travels while PostgreSQL runs the statement, so the check costs no round trip of its own:
    at idle, when each round trip also wakes a sleeping process, a PING waited for first
    took 0.3 ms at p50 and 0.56 ms at p99 of the approval's ~2.7 ms here. A Redis refusing
    connections fails here at once, before PostgreSQL is touched."""
    pool = ctx.redis.connection_pool
    try:
        connection = pool.get_connection()  # replaces a connection gone stale, as RQ's calls do
    except RedisError as exc:
        raise _redis_unavailable(ctx, exc) from exc
    read = False
    try:
        try:
            # No health check first: this PING is one (redis-py's would be a PING waited for).
            connection.send_command("PING", check_health=False)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            raise _redis_unavailable(ctx, exc) from exc

        def check() -> None:
            nonlocal read
            try:
                connection.read_response()
            except RedisConnectionError:
                # Closed under us (a restart since the connection was checked, say): ask again
                # on another connection, with the client's own retry.
                _check_redis(ctx)
                return
            except RedisError as exc:
                raise _redis_unavailable(ctx, exc) from exc
            read = True

        yield check
    finally:
        if not read:  # unread or failed: not for the connection's next user
            connection.disconnect()  # type: ignore[no-untyped-call]
        pool.release(connection)


# The approval's writes as one statement: BEGIN, it and COMMIT where BEGIN, four statements
# and COMMIT took six round trips. (Not autocommit: a statement held up on its way to a hung
# server would then commit after the request answered 503. Nor psycopg's pipeline mode: in
# the same in-process loop it made the approval 0.45 ms slower at p50, not faster.)
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


def approve(ctx: Phase1, plan_id: UUID) -> Approval:
    """Approve the plan and enqueue its Phase 1 job; idempotent (one job per plan).

    The plan's status and the `pending` execution row commit together; the job is enqueued
    after the commit (a transactional outbox: if Redis fails now, the reconciler enqueues it).
    """
    settings = ctx.settings
    job_id = str(uuid.uuid4())
    with _redis_answers(ctx) as redis_answered, ctx.transaction() as conn:
        row = conn.execute(
            SQL_APPROVE,
            {
                "plan_id": plan_id,
                "id": uuid.uuid4(),
                "job_id": job_id,
                "queue": settings.queue,
                "max_attempts": settings.max_attempts,
            },
        ).fetchone()
        redis_answered()  # before the COMMIT: Redis down, and nothing is written
    if row is None:
        raise NotFoundError(f"plan {plan_id} not found")
    if row["plan_status"] == "rejected":
        raise ConflictError(f"plan {plan_id} is rejected and cannot be approved")
    existing: Row | None = None
    if row["job_id"] is not None:
        existing = row
    elif not row["created"]:  # a concurrent approval committed first: see it in steps
        job_id, existing = _record_in_steps(ctx, plan_id)
    if existing is not None:
        job_id, status = existing["job_id"], existing["status"]
        if status == "failed":
            raise ConflictError(
                f"plan {plan_id} was approved; its job {job_id} failed and is in the "
                f"dead-letter queue (phase1 dlq requeue {job_id})"
            )
        if status == "pending" and not jobs.job_in_redis(ctx, job_id):
            jobs.enqueue(ctx, job_id, plan_id)  # an earlier enqueue was lost: mend it now
        return Approval(job_id=job_id, plan_id=plan_id, status=status, created=False)

    # Unique (atomic in Redis): a concurrent approval of this plan that saw the committed row
    # before this enqueue may have enqueued the job already; it must not be queued twice.
    # The `job:enqueued` event goes out in the same call, and only if this call enqueued it.
    enqueued = events.make(events.ENQUEUED, job_id, str(plan_id), None, {"queue": settings.queue})
    try:
        jobs.enqueue_announced(ctx, job_id, plan_id, enqueued)
    except UnavailableError as exc:
        raise UnavailableError(
            f"approval of plan {plan_id} is recorded as job {job_id} but Redis is "
            f"unavailable ({exc.__cause__ or exc}); it will be enqueued once Redis is back"
        ) from exc
    return Approval(job_id=job_id, plan_id=plan_id, status="pending", created=True)


def _record_in_steps(ctx: Phase1, plan_id: UUID) -> tuple[str, Row | None]:
    """The approval's transaction statement by statement (each with a fresh snapshot): the
    new job's id and None, or the plan's execution row when it has one already."""
    settings = ctx.settings
    with ctx.transaction() as conn:
        # The row lock serialises concurrent approvals of one plan.
        plan = plans.get_plan(conn, plan_id, lock=True)
        if plan.status == "rejected":
            raise ConflictError(f"plan {plan_id} is rejected and cannot be approved")
        existing = executions.for_plan(conn, plan_id)
        if existing is not None:
            return existing["job_id"], existing
        if plan.status != "approved":
            plans.set_plan_status(conn, plan_id, "approved")
        job_id = str(uuid.uuid4())
        executions.insert(
            conn,
            plan_id=plan_id,
            job_id=job_id,
            queue=settings.queue,
            max_attempts=settings.max_attempts,
        )
    return job_id, None


def reject(ctx: Phase1, plan_id: UUID) -> Plan:
    """Reject a plan that has not been approved; rejecting twice is harmless."""
    with ctx.transaction() as conn:
        plan = plans.get_plan(conn, plan_id, lock=True)
        if plan.status == "rejected":
            return plan
        if plan.status == "approved":
            raise ConflictError(f"plan {plan_id} is already approved and cannot be rejected")
        return plans.set_plan_status(conn, plan_id, "rejected")


def approve_sync(ctx: Phase1, plan_id: UUID) -> SyncApproval:
    """The flow as it was before the queue: approve and create the tasks inline."""
    with ctx.transaction() as conn:
        plan = plans.get_plan(conn, plan_id, lock=True)
        if plan.status == "rejected":
            raise ConflictError(f"plan {plan_id} is rejected and cannot be approved")
        if plan.status != "approved":
            plan = plans.set_plan_status(conn, plan_id, "approved")
        try:
            _, tasks = plans.create_phase1_tasks(conn, plan_id)
        except PermanentJobError as exc:
            raise InvalidInputError(str(exc)) from exc
    return SyncApproval(plan=plan, tasks=tasks)
