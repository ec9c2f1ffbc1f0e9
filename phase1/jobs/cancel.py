"""Cancelling a job (`phase1 cancel`, `POST /api/marketplace/jobs/<jobId>/cancel`).

PostgreSQL decides. Under the execution row's lock a pending, retrying or running job becomes
`failed` with reason `cancelled` (its open attempt closed as failed), unless its tasks were
committed first: then it is `completed` and the cancel is refused (409), so a race with a
worker ends in exactly one outcome. A worker that takes the job afterwards opens no attempt
for it (`phase1_tasks.open_attempt`), and one that is running it cannot complete it (its
attempt is no longer open). Then Redis: the job leaves its queue or its scheduled retry in
one MULTI/EXEC, a running one is interrupted at once through RQ's stop-job command (phase1's
worker raises its shutdown interrupt in the job: the task transaction rolls back, nothing is
half-written), and the job goes to the DLQ, from where `phase1 dlq requeue` brings it back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError, WatchError
from rq.command import send_command
from rq.intermediate_queue import IntermediateQueue
from rq.job import JobStatus

from phase1 import keys
from phase1.context import Phase1, redis_unavailable
from phase1.domain import audit
from phase1.errors import ConflictError, NotFoundError, UnavailableError
from phase1.jobs import deadletter, events
from phase1.schemas import JobView

log = logging.getLogger(__name__)

ERROR_TYPE = "Cancelled"
REASON_LIMIT = 1000
LOCK_TRIES = 3  # a running job's transaction holds the row until the interrupt rolls it back

_WAITING = {s.value for s in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)}


def message_for(reason: str | None) -> str:
    return "cancelled by an operator" + (f": {reason}" if reason else "")


def cancel(ctx: Phase1, job_id: str, reason: str | None = None) -> JobView:
    """Cancel a pending, retrying or running job: it ends `failed`, reason `cancelled`, in the
    DLQ. NotFoundError for an unknown job; ConflictError for a completed (or otherwise failed)
    one; an already cancelled job gives the same view again."""
    reason = (reason or "").strip()[:REASON_LIMIT] or None
    if len(job_id) > 255:
        raise NotFoundError("job not found (id longer than 255 characters)")
    with ctx.read() as conn:
        row = audit.get(conn, job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    _refuse(row)
    if row["cancelled_at"] is not None:
        return JobView.from_row(row)
    if row["status"] == "active":
        interrupt(ctx, job_id)
    row, history = _cancel_row(ctx, job_id, reason)
    if history is None:  # cancelled by a concurrent call: it did the rest
        return JobView.from_row(row)
    withdraw(ctx, job_id)
    message = message_for(reason)
    plan_id = str(row["plan_id"])
    settings = ctx.settings
    deadletter.add(
        ctx.redis,
        settings.queue,
        deadletter.make_entry(
            job_id=job_id,
            plan_id=plan_id,
            queue=settings.queue,
            reason="cancelled",
            error_type=ERROR_TYPE,
            message=message,
            traceback_text=None,
            payload={"planId": plan_id},
            history=history,
        ),
        retention=settings.dlq_retention,
    )
    data: dict[str, Any] = {
        "final": True,
        "reason": "cancelled",
        "error": {"type": ERROR_TYPE, "message": message},
        "cancelReason": reason,
    }
    attempt = int(history[-1]["attempt"]) if history else None
    events.emit(ctx.redis, settings, events.make(events.FAILED, job_id, plan_id, attempt, data))
    return JobView.from_row(row)


def _refuse(row: Any) -> None:
    if row["status"] == "completed":
        raise ConflictError(
            f"job {row['job_id']} is completed: a completed job cannot be cancelled"
        )
    if row["status"] == "failed" and row["cancelled_at"] is None:
        raise ConflictError(
            f"job {row['job_id']} is failed (in the dead-letter queue): there is nothing to cancel"
        )


def _cancel_row(ctx: Phase1, job_id: str, reason: str | None) -> tuple[Any, list[Any] | None]:
    """The row cancelled under its lock, with the attempt history; (row, None) when it was
    cancelled already. Retried while a running job's transaction holds the lock."""
    for attempt in range(LOCK_TRIES):
        try:
            with ctx.transaction() as conn:
                row = audit.get(conn, job_id, lock=True)
                if row is None:
                    raise NotFoundError(f"job {job_id} not found")
                _refuse(row)
                if row["cancelled_at"] is not None:
                    return row, None
                failed = audit.record_failed_attempt(
                    conn,
                    job_id,
                    worker=None,
                    final=True,
                    error_type=ERROR_TYPE,
                    error_message=message_for(reason),
                    next_retry_at=None,
                )
                cancelled = audit.mark_cancelled(conn, job_id, reason)
                assert failed is not None and cancelled is not None
                return cancelled, list(failed.history)
        except UnavailableError:
            if attempt == LOCK_TRIES - 1:
                raise
            interrupt(ctx, job_id)
            time.sleep(0.2)
    raise AssertionError("unreachable")


def interrupt(ctx: Phase1, job_id: str) -> None:
    """Ask the worker running the job to stop it now (RQ's stop-job command; phase1's worker
    interrupts the job, RQ's forking worker kills its work horse). Best effort: the row
    decides whatever the worker does."""
    try:
        worker = ctx.redis.hget(keys.rq_job(job_id), "worker_name")
        if worker:
            name = worker.decode() if isinstance(worker, bytes) else str(worker)
            send_command(ctx.redis, name, "stop-job", job_id=job_id)
    except RedisError as exc:
        log.warning("job %s: could not ask its worker to stop it: %s", job_id, exc)


def withdraw(ctx: Phase1, job_id: str) -> None:
    """Take a waiting job off its queue (or its scheduled retry) in one MULTI/EXEC; a job a
    worker has started is left to it (it cannot complete: its attempt is closed)."""
    queue = ctx.queue()
    job_key = keys.rq_job(job_id)
    try:
        with ctx.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job_key)  # type: ignore[no-untyped-call]
                    raw = pipe.hget(job_key, "status")
                    status = raw.decode() if isinstance(raw, bytes) else raw
                    pipe.multi()
                    pipe.lrem(queue.key, 0, job_id)
                    pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job_id)
                    pipe.zrem(queue.scheduled_job_registry.key, job_id)
                    pipe.zrem(keys.heartbeats(ctx.settings.queue), job_id)
                    if status in _WAITING:
                        pipe.hset(job_key, "status", JobStatus.CANCELED.value)
                    pipe.execute()
                    return
                except WatchError:
                    continue
    except RedisError as exc:
        # PostgreSQL says cancelled already: a worker that takes the job leaves it alone.
        with contextlib.suppress(Exception):
            log.warning("job %s cancelled, but Redis still holds it: %s", job_id, exc)
        raise redis_unavailable(ctx.redis_url, exc) from exc


def completed(job_id: str) -> bool:
    """In a worker: whether PostgreSQL says the job completed (a cancel's interrupt that came
    as its tasks committed). The row decides, so such a job is not cancelled. Unknown
    (PostgreSQL down): not."""
    from phase1.context import for_worker_process

    try:
        with for_worker_process().read() as conn:
            row = audit.get(conn, job_id)
    except UnavailableError:
        return False
    return row is not None and row["status"] == "completed"
