"""The approval service that HTTP and the CLI share: the plan approved in PostgreSQL
(phase1.domain.approval), then its job enqueued after the commit (a transactional outbox)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from uuid import UUID

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from phase1.context import Phase1, redis_unavailable
from phase1.db import Row
from phase1.domain import approval
from phase1.domain.approval import SyncApproval
from phase1.errors import (
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from phase1.jobs import events
from phase1.jobs import queue as jobs
from phase1.schemas import Plan
from phase1.telemetry import tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Approval:
    """The outcome of approving a plan in queue mode."""

    job_id: str
    plan_id: UUID
    status: str
    created: bool


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
    travels while PostgreSQL runs the statement, so the check costs no round trip of its own.
    A Redis refusing connections fails here at once, before PostgreSQL is touched."""
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


def approve(ctx: Phase1, plan_id: UUID) -> Approval:
    """Approve the plan and enqueue its Phase 1 job; idempotent (one job per plan).

    The plan's status and the `pending` execution row commit together; the job is enqueued
    after the commit (a transactional outbox: if Redis fails now, the reconciler enqueues it).
    """
    if not tracing.enabled():
        return _approve(ctx, plan_id)
    # Issue 24: one span over the approval; its transaction and enqueue are its children.
    with tracing.span("phase1.approve", attributes={"phase1.plan_id": str(plan_id)}) as span:
        approved = _approve(ctx, plan_id)
        tracing.set_attributes(
            span, {"messaging.message.id": approved.job_id, "phase1.created": approved.created}
        )
        return approved


def _approve(ctx: Phase1, plan_id: UUID) -> Approval:
    settings = ctx.settings
    job_id = str(uuid.uuid4())
    with (
        tracing.db_span("approve plan", ctx.database_url),  # issue 24: the transaction's span
        _redis_answers(ctx) as redis_answered,
        ctx.transaction() as conn,
    ):
        row = approval.record(conn, plan_id, job_id, settings.queue, settings.max_attempts)
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
    log.info("plan %s approved; job %s enqueued on %s", plan_id, job_id, settings.queue)
    return Approval(job_id=job_id, plan_id=plan_id, status="pending", created=True)


def _record_in_steps(ctx: Phase1, plan_id: UUID) -> tuple[str, Row | None]:
    settings = ctx.settings
    with ctx.transaction() as conn:
        return approval.record_in_steps(conn, plan_id, settings.queue, settings.max_attempts)


def reject(ctx: Phase1, plan_id: UUID) -> Plan:
    """Reject a plan that has not been approved; rejecting twice is harmless."""
    with ctx.transaction() as conn:
        return approval.reject(conn, plan_id)


def approve_sync(ctx: Phase1, plan_id: UUID) -> SyncApproval:
    """The flow as it was before the queue: approve and create the tasks inline."""
    with ctx.transaction() as conn:
        return approval.approve_sync(conn, plan_id)
