"""A failed attempt of a Phase 1 job: what it was (`describe_failure`), RQ's failure callback
(`on_failure`, stored with every job as `phase1.job.on_failure`), and `record_failure`, which
writes it to the audit trail, the DLQ when final, and the event stream, for the callback and
for the orphan sweep and the reconciler alike. A worker given up for dead that comes back
learns here that its attempt was superseded (`superseded_here`)."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback as tb_module
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from phase1 import context, keys
from phase1.context import Phase1
from phase1.domain import audit
from phase1.errors import JobCancelled, PermanentJobError, UnavailableError
from phase1.jobs import attempt_trace, deadletter, events, lockwatch
from phase1.schemas import FailureReason
from phase1.telemetry import logs as logformat
from phase1.telemetry import tracing

log = logging.getLogger(__name__)

Recorded = Literal["recorded", "duplicate", "completed", "superseded"]

# The attempt this process opened for each job it runs now, so its failure is recorded
# against that attempt, never against a newer one another worker opened after this one
# was given up for dead (a worker cut off from the network, back after the sweep).
opened_attempts: dict[str, int] = {}


def _database_timeout(exc: BaseException | None) -> BaseException | None:
    """The statement or lock timeout behind `exc`, if any (db.py wraps driver errors)."""
    errors = sys.modules.get("psycopg.errors")
    if errors is None:
        return None  # psycopg never loaded in this process: no driver error behind `exc`
    timeouts: tuple[type[BaseException], ...] = (errors.QueryCanceled, errors.LockNotAvailable)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, timeouts):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_failure(
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    job_timeout: float | None = None,
) -> tuple[FailureReason, str, str]:
    """The reason, error type and message recorded for a failed attempt."""
    if exc_type is None:
        return "exception", "Error", str(exc_value or "the attempt failed")
    name = exc_type.__name__
    text = str(exc_value) if exc_value is not None else ""
    if issubclass(exc_type, PermanentJobError):
        return "permanent", name, text or name
    if issubclass(exc_type, JobTimeoutException):
        return "timeout", name, f"attempt timed out after {job_timeout} s: {text or name}"
    if issubclass(exc_type, AbandonedJobError):
        return "abandoned", name, "the worker running the attempt died (found by rq's cleanup)"
    db_timeout = _database_timeout(exc_value)
    if db_timeout is not None:
        first = (str(db_timeout).strip().splitlines() or [type(db_timeout).__name__])[0]
        return (
            "timeout",
            type(db_timeout).__name__,
            f"the database gave up before the {job_timeout} s attempt timeout: {first}",
        )
    return "exception", name, text or name


def failure_reason(exc_type: type[BaseException] | None) -> FailureReason:
    return describe_failure(exc_type, None)[0]


def plan_id_of(job: Job) -> str | None:
    meta_plan = job.meta.get("planId") if job.meta else None
    if meta_plan:
        return str(meta_plan)
    try:
        return str(job.args[0]["planId"])
    except Exception:  # no args, another shape, or data this serializer cannot read
        return None


def _payload_of(job: Job) -> Any:
    try:
        return job.args[0] if job.args else None
    except Exception:
        return None


def on_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """RQ calls this on *every* failed attempt, before it decides whether to retry, and for
    abandoned jobs its registry cleanup finds (AbandonedJobError).

    Permanent errors use up the retry budget at once; the last failure dead-letters the job.
    """
    if exc_type is not None and issubclass(exc_type, JobCancelled):
        job.retries_left = 0  # `phase1 cancel` recorded it all: no retry, nothing to add
        opened_attempts.pop(job.id, None)
        return
    reason, error_type, message = describe_failure(exc_type, exc_value, job.timeout)
    blocked = lockwatch.blocked_by(job.id)
    if reason == "timeout" and blocked:
        message = f"{message}; {blocked_line(blocked[0])}"
    else:
        blocked = None
    if reason == "permanent":
        job.retries_left = 0  # RQ reads this right after the callback: no retry
    final = not job.should_retry
    next_retry_at = None
    if not final:
        next_retry_at = datetime.now(UTC) + timedelta(seconds=job.get_retry_interval())
    attempt = opened_attempts.pop(job.id, None)
    token = logformat.set_job(job.id, plan_id_of(job), attempt)
    # Issue 24: the dead-lettering and its webhook in the failed attempt's trace.
    with tracing.restored(attempt_trace.failed_spans.pop(job.id, None)):
        log.warning(
            "job %s: attempt failed (%s: %s); %s",
            job.id,
            error_type,
            message[:500],
            "dead-lettered" if final else f"retry at {next_retry_at:%H:%M:%S}",
        )
        try:
            record_failure(
                job,
                connection,
                reason=reason,
                error_type=error_type,
                message=message,
                traceback_text="".join(tb_module.format_exception(exc_type, exc_value, tb))
                if exc_type and tb
                else None,
                final=final,
                next_retry_at=next_retry_at,
                # The orphan sweep may have recorded this dead attempt first.
                only_if_active=reason == "abandoned",
                attempt=attempt,
                blocked_by=blocked,
            )
        finally:
            logformat.job_fields.reset(token)
            if final:
                attempt_trace.record_finished(job, "failed")
            tracing.job_done()


def blocked_line(blocker: dict[str, Any]) -> str:
    """One blocking backend in words, for the attempt's error and the DLQ entry."""
    return (
        f"blocked by pid {blocker.get('pid')} ({blocker.get('applicationName') or '?'}, "
        f"{blocker.get('state')}, in a transaction for {blocker.get('transactionAgeSeconds')} "
        f"s): {blocker.get('query')}"
    )


def record_failure(
    job: Job,
    connection: Redis,
    *,
    reason: FailureReason,
    error_type: str,
    message: str,
    traceback_text: str | None,
    final: bool,
    next_retry_at: datetime | None,
    only_if_active: bool = False,
    ctx: Phase1 | None = None,
    attempt: int | None = None,
    blocked_by: list[dict[str, Any]] | None = None,
) -> Recorded:
    """Write a failed attempt to the audit trail, the DLQ when final, and the event stream.

    Returns `recorded`; `duplicate` when another path had recorded this attempt already
    (`only_if_active`); `completed` when the job had completed (its work committed before
    the process died): nothing is failed then; `superseded` when `attempt` (the one the
    caller ran) is no longer the current one: it is marked so, and nothing else changes.
    A final failure reaches the DLQ even when PostgreSQL is down; the UnavailableError is
    raised after that.
    """
    ctx = ctx or context.for_worker_process()
    settings = ctx.settings
    plan_id = plan_id_of(job)
    message = (message or error_type)[:10_000]
    failed: audit.FailedAttempt | None = None
    audit_error: UnavailableError | None = None
    try:
        with ctx.transaction() as conn:
            if blocked_by and attempt is not None:
                audit.set_blocked_by(conn, job.id, attempt, blocked_by)
            failed = audit.record_failed_attempt(
                conn,
                job.id,
                worker=job.worker_name,
                final=final,
                error_type=error_type,
                error_message=message,
                next_retry_at=next_retry_at.replace(tzinfo=None) if next_retry_at else None,
                only_if_active=only_if_active,
                attempt=attempt,
            )
    except UnavailableError as exc:
        log.error("job %s: could not record the failed attempt in PostgreSQL: %s", job.id, exc)
        audit_error = exc
    if failed is not None and failed.status == "completed":
        log.info("job %s had completed; its late failure (%s) changes nothing", job.id, reason)
        return "completed"
    if failed is not None and failed.superseded:
        log.warning(
            "job %s: attempt %s was taken over by another worker; its late failure (%s: %s) "
            "is recorded as superseded and changes nothing else",
            job.id,
            attempt,
            error_type,
            message,
        )
        return "superseded"
    # Issue 24: dead-lettering is a span (the final webhook goes out inside it), and the DLQ
    # entry keeps its trace, for a requeued job's span to link to.
    stack = contextlib.ExitStack()
    if final:
        stack.enter_context(
            tracing.span(
                f"dead-letter {settings.queue}",
                kind="producer",
                attributes={
                    "messaging.system": "rq",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": keys.dlq_index(settings.queue),
                    "messaging.message.id": job.id,
                    "phase1.plan_id": plan_id,
                    "phase1.failure.reason": reason,
                },
                parent=None if tracing.current_ids() else tracing.carrier_of(job.meta),
            )
        )
    with stack:
        attempt = failed.attempt if failed is not None else None
        dead_lettered = False
        if final:
            history = failed.history if failed is not None else []
            entry = deadletter.stamp(
                tracing.traced(
                    deadletter.make_entry(
                        job_id=job.id,
                        plan_id=plan_id,
                        queue=settings.queue,
                        reason=reason,
                        error_type=error_type,
                        message=message,
                        traceback_text=traceback_text,
                        payload=_payload_of(job),
                        history=history,
                    )
                )
            )
            dead_lettered = deadletter.add(
                connection, settings.queue, entry, retention=settings.dlq_retention
            )
            if dead_lettered and audit_error is None:  # PostgreSQL's record of it too
                deadletter.remember(ctx, entry)
            if attempt is None and history:
                attempt = int(history[-1]["attempt"])
        recorded = (failed is not None and failed.attempt is not None) or dead_lettered
        if recorded or audit_error is not None:
            data: dict[str, Any] = {
                "final": final,
                "reason": reason,
                "error": {"type": error_type, "message": message},
            }
            if blocked_by:
                data["blockedBy"] = blocked_by
            if next_retry_at is not None:
                data["nextRetryAt"] = next_retry_at.isoformat().replace("+00:00", "Z")
            event = events.make(events.FAILED, job.id, plan_id, attempt, data)
            events.emit(connection, settings, event)
    if audit_error is not None:
        raise audit_error
    return "recorded" if recorded else "duplicate"


def superseded_here(job: Job, note: str) -> bool | None:
    """Whether the attempt this process opened for `job` was taken over meanwhile (the orphan
    sweep gave this worker up for dead): then it is marked `superseded` with `note`, and the
    worker must leave the job alone. False when this process opened no attempt for it; None
    when PostgreSQL cannot be reached to tell."""
    attempt = opened_attempts.get(job.id)
    if attempt is None:
        return False
    ctx = context.for_worker_process()
    try:
        with ctx.transaction() as conn:
            if audit.is_current(conn, job.id, attempt):
                return False
            audit.supersede(conn, job.id, attempt, note)
    except UnavailableError as exc:
        log.warning("job %s: cannot tell if attempt %s was taken over: %s", job.id, attempt, exc)
        return None
    opened_attempts.pop(job.id, None)
    log.warning(
        "job %s: attempt %s was taken over by another worker while this one was cut off; "
        "leaving the job to it (%s)",
        job.id,
        attempt,
        note,
    )
    return True
