"""The function a worker runs for a Phase 1 job, and its failure callback."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback as tb_module
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from redis import Redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from phase1 import context, keys
from phase1.context import Phase1
from phase1.domain import audit, dead_letters, phase1_tasks
from phase1.errors import AttemptSuperseded, JobCancelled, PermanentJobError, UnavailableError
from phase1.jobs import attempt_trace, deadletter, events, lockwatch
from phase1.jobs.heartbeat import heartbeating
from phase1.schemas import FailureReason, JobPayload
from phase1.telemetry import logs as logformat
from phase1.telemetry import tracing

log = logging.getLogger(__name__)

Recorded = Literal["recorded", "duplicate", "completed", "superseded"]
ACTIVE_LAG = 0.05  # seconds

# The attempt this process opened for each job it runs now, so its failure is recorded
# against that attempt, never against a newer one another worker opened after this one
# was given up for dead (a worker cut off from the network, back after the sweep).
opened_attempts: dict[str, int] = {}


def _payload(raw: Any) -> JobPayload:
    try:
        return JobPayload.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise PermanentJobError(f"invalid job payload at {where}: {first['msg']}") from None


@heartbeating
def run_phase1_job(raw_payload: Any) -> dict[str, Any]:
    """Create the plan's Phase 1 tasks; the job's RQ entry point.

    The tasks and the `completed` execution row are written in one transaction, so a run
    either does all of it or none; a second run of a completed job changes nothing.
    """
    job = get_current_job()
    if job is None:
        raise PermanentJobError("run_phase1_job must run inside an RQ job")
    token = logformat.set_job(job.id, _plan_id(job))
    try:
        if not tracing.enabled():
            return _run(raw_payload, job, None)
        # Issue 24: the attempt as a consumer span, continuing the trace in the job's meta.
        with attempt_trace.attempt_span(job, describe_failure) as span:
            return _run(raw_payload, job, span)
    finally:
        logformat.job_fields.reset(token)


def _run(raw_payload: Any, job: Job, span: Any) -> dict[str, Any]:
    payload = _payload(raw_payload)
    ctx = context.for_worker_process()
    with lockwatch.watching(ctx, job.id):
        return _work(ctx, job, payload, span)


def _work(ctx: Phase1, job: Job, payload: JobPayload, span: Any) -> dict[str, Any]:
    plan_id = str(payload.planId)
    opened_attempts.pop(job.id, None)  # one this process opened in an earlier run is over

    with tracing.db_span("open attempt", ctx.database_url), ctx.transaction() as conn:
        lockwatch.note_backend(job.id, conn)
        started = phase1_tasks.open_attempt(
            conn,
            job.id,
            payload.planId,
            job.worker_name,
            job.retries_left or 0,
            idle_timeout_ms=ctx.settings.db_statement_timeout_ms,
        )
        row = audit.get(conn, job.id) if started is None else None
    if started is None:
        if row is None:
            raise PermanentJobError(f"job {job.id} has no execution row in PostgreSQL")
        if row["cancelled_at"] is not None:
            raise JobCancelled(f"job {job.id} was cancelled; this run created nothing")
        log.info("job %s already completed; a repeated run changes nothing", job.id)
        return dict(row["result"] or {})

    if started.was == "failed":  # sent back from the DLQ by RQ's tools, not phase1's
        requeued_elsewhere(ctx, job, started.attempt)
    # `job:active` goes out with the outcome when that comes within ACTIVE_LAG (one round
    # trip fewer for a quick job), on its own after ACTIVE_LAG otherwise.
    attempt = started.attempt
    opened_attempts[job.id] = attempt
    logformat.set_attempt(attempt)
    tracing.set_attributes(span, {"phase1.attempt": attempt})
    active = events.make(events.ACTIVE, job.id, plan_id, attempt)
    events.emit_after_success(job.connection, ctx.settings, [active], within=ACTIVE_LAG)
    with tracing.db_span("create tasks", ctx.database_url), ctx.transaction() as conn:
        lockwatch.note_backend(job.id, conn)
        outcome = phase1_tasks.create_tasks(
            conn,
            job.id,
            started,
            payload.planId,
            idle_timeout_ms=ctx.settings.db_statement_timeout_ms,
        )
    if outcome.superseded:
        if cancelled(ctx, job.id):
            raise JobCancelled(f"job {job.id} was cancelled while it ran; it created nothing")
        raise AttemptSuperseded(
            f"attempt {attempt} of job {job.id} was given up for dead and taken over by "
            "another worker; this run created nothing"
        )
    opened_attempts.pop(job.id, None)
    result = outcome.result
    log.info("job %s attempt %s: the plan's Phase 1 tasks are created", job.id, attempt)
    if not outcome.ran:
        return result
    # Progress and completion once the work is committed; with phase1's worker in the same
    # round trip as its success bookkeeping.
    progress = {"progress": 90, "step": "tasks-created"}
    events.emit_after_success(
        job.connection,
        ctx.settings,
        [
            events.make(events.PROGRESS, job.id, plan_id, attempt, progress),
            events.make(events.COMPLETED, job.id, plan_id, attempt, {"result": result}),
        ],
    )
    return result


def cancelled(ctx: Phase1, job_id: str) -> bool:
    """Whether an operator cancelled the job (PostgreSQL's row says so)."""
    with ctx.read() as conn:
        row = audit.get(conn, job_id)
    return row is not None and row["cancelled_at"] is not None


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


def _plan_id(job: Job) -> str | None:
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
    token = logformat.set_job(job.id, _plan_id(job), attempt)
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
    plan_id = _plan_id(job)
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


def requeued_elsewhere(ctx: Phase1, job: Job, attempt: int) -> None:
    """Bookkeeping for a dead-lettered job that RQ's own tools sent back (rq-dashboard's
    Requeue, `rq requeue`, `Job.requeue()`), seen as its next attempt opens: as with
    `phase1 dlq requeue`, its entry leaves the DLQ, its retry budget starts afresh and
    `job:requeued` is recorded. (Also right after an interrupted `phase1 dlq requeue`: the
    entry is gone then, and only PostgreSQL is brought up to date.)"""
    settings = ctx.settings
    name = settings.queue
    job.retries_left = settings.max_retries  # the worker decides this attempt's retry on it
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.dlq_entry(name, job.id))
        pipe.zrem(keys.dlq_index(name), job.id)
        pipe.hset(job.key, "retries_left", settings.max_retries)
        removed = bool(pipe.execute()[0])
    with ctx.transaction() as conn:
        dead_letters.mark_requeued(conn, job.id)
        audit.restart_budget(conn, job.id, settings.max_retries)
    if not removed:
        return
    log.warning(
        "job %s was sent back from the dead-letter queue by RQ's own tools; its entry is "
        "removed and its retry budget restarted, as `phase1 dlq requeue` would",
        job.id,
    )
    plan_id = (job.meta or {}).get("planId")
    data = {"queue": name, "freshAttempts": settings.max_attempts, "by": "rq"}
    event = events.make(events.REQUEUED, job.id, str(plan_id), (attempt - 1) or None, data)
    events.emit(ctx.redis, settings, event)
