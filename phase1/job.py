"""The function a worker runs for a Phase 1 job, and its failure callback."""

from __future__ import annotations

import logging
import traceback as tb_module
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from pydantic import ValidationError
from redis import Redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from phase1 import context, deadletter, events, executions, plans
from phase1.errors import PermanentJobError
from phase1.schemas import FailureReason, JobPayload

log = logging.getLogger(__name__)


def _payload(raw: Any) -> JobPayload:
    try:
        return JobPayload.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise PermanentJobError(f"invalid job payload at {where}: {first['msg']}") from None


def run_phase1_job(raw_payload: Any) -> dict[str, Any]:
    """Create the plan's Phase 1 tasks; the job's RQ entry point.

    The tasks and the `completed` execution row are written in one transaction, so a run
    either does all of it or none; a second run of a completed job changes nothing.
    """
    payload = _payload(raw_payload)
    job = get_current_job()
    if job is None:
        raise PermanentJobError("run_phase1_job must run inside an RQ job")
    ctx = context.for_worker_process()
    plan_id = str(payload.planId)

    with ctx.transaction() as conn:
        attempt = executions.start_attempt(conn, job.id, job.worker_name)
        if attempt is None:
            row = executions.get(conn, job.id)
    if attempt is None:
        if row is None:
            raise PermanentJobError(f"job {job.id} has no execution row in PostgreSQL")
        log.info("job %s already completed; a repeated run changes nothing", job.id)
        return dict(row["result"] or {})

    events.emit(job.connection, ctx.settings, events.make(events.ACTIVE, job.id, plan_id, attempt))
    with ctx.transaction() as conn:
        row = executions.get(conn, job.id, lock=True)
        if row is not None and row["status"] == "completed":
            return dict(row["result"] or {})
        created, tasks = plans.create_phase1_tasks(conn, payload.planId)
        events.progress(job, ctx.settings, plan_id, attempt, 90, step="tasks-created")
        result = {
            "planId": plan_id,
            "tasksCreated": len(created),
            "taskIds": [str(t.id) for t in tasks],
        }
        executions.complete(conn, job.id, attempt, result)
    events.emit(
        job.connection,
        ctx.settings,
        events.make(events.COMPLETED, job.id, plan_id, attempt, {"result": result}),
    )
    return result


def failure_reason(exc_type: type[BaseException] | None) -> FailureReason:
    if exc_type is None:
        return "exception"
    if issubclass(exc_type, PermanentJobError):
        return "permanent"
    if issubclass(exc_type, JobTimeoutException):
        return "timeout"
    if exc_type.__name__ == "AbandonedJobError":
        return "abandoned"
    return "exception"


def _plan_id(job: Job) -> str | None:
    meta_plan = job.meta.get("planId") if job.meta else None
    if meta_plan:
        return str(meta_plan)
    try:
        return str(job.args[0]["planId"])
    except (IndexError, KeyError, TypeError):
        return None


def on_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """RQ calls this on *every* failed attempt, before it decides whether to retry.

    Permanent errors use up the retry budget at once; the last failure dead-letters the job.
    """
    reason = failure_reason(exc_type)
    if reason == "permanent":
        job.retries_left = 0  # RQ reads this right after the callback: no retry
    final = not job.should_retry
    next_retry_at = None
    if not final:
        next_retry_at = datetime.now(UTC) + timedelta(seconds=job.get_retry_interval())
    record_failure(
        job,
        connection,
        reason=reason,
        error_type=exc_type.__name__ if exc_type else "Error",
        message=str(exc_value) if exc_value is not None else "",
        traceback_text="".join(tb_module.format_exception(exc_type, exc_value, tb))
        if exc_type and tb
        else None,
        final=final,
        next_retry_at=next_retry_at,
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
) -> None:
    """Write a failed attempt to the audit trail, the DLQ when final, and the event stream."""
    ctx = context.for_worker_process()
    settings = ctx.settings
    plan_id = _plan_id(job)
    message = message or error_type
    if reason == "timeout":
        message = f"attempt timed out after {job.timeout} s: {message}"
    with ctx.transaction() as conn:
        row = executions.get(conn, job.id)
        attempt = int(row["attempt_number"] or 1) if row else 1
        executions.fail_attempt(
            conn,
            job.id,
            attempt,
            final=final,
            error_type=error_type,
            error_message=message[:10_000],
            next_retry_at=next_retry_at.replace(tzinfo=None) if next_retry_at else None,
        )
        history = executions.attempts(conn, job.id) if final else []
    if final:
        deadletter.add(
            connection,
            settings.queue,
            {
                "jobId": job.id,
                "planId": plan_id,
                "queue": settings.queue,
                "reason": reason,
                "errorType": error_type,
                "message": message,
                "traceback": traceback_text,
                "payload": job.args[0] if job.args else None,
                "attempts": [
                    {
                        "attempt": a["attempt"],
                        "status": a["status"],
                        "worker": a["worker"],
                        "startedAt": a["started_at"],
                        "endedAt": a["ended_at"],
                        "errorType": a["error_type"],
                        "error": a["error_message"],
                    }
                    for a in history
                ],
            },
            retention=settings.dlq_retention,
        )
    data: dict[str, Any] = {
        "final": final,
        "reason": reason,
        "error": {"type": error_type, "message": message},
    }
    if next_retry_at is not None:
        data["nextRetryAt"] = next_retry_at.isoformat().replace("+00:00", "Z")
    events.emit(connection, settings, events.make(events.FAILED, job.id, plan_id, attempt, data))
