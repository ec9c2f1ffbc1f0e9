"""The function a worker runs for a Phase 1 job (`phase1.job.run_phase1_job`, as RQ stores it):
the attempt opened, the plan's tasks created and the job completed in PostgreSQL, its events
sent with the worker's success bookkeeping. Its failure path is phase1.jobs.failure."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job

from phase1 import context, keys
from phase1.context import Phase1
from phase1.domain import audit, dead_letters, phase1_tasks
from phase1.errors import AttemptSuperseded, JobCancelled, PermanentJobError
from phase1.jobs import attempt_trace, events, failure, lockwatch
from phase1.jobs.heartbeat import heartbeating
from phase1.schemas import JobPayload
from phase1.telemetry import logs as logformat
from phase1.telemetry import tracing

log = logging.getLogger(__name__)

ACTIVE_LAG = 0.05  # seconds


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
    token = logformat.set_job(job.id, failure.plan_id_of(job))
    try:
        if not tracing.enabled():
            return _run(raw_payload, job, None)
        # Issue 24: the attempt as a consumer span, continuing the trace in the job's meta.
        with attempt_trace.attempt_span(job, failure.describe_failure) as span:
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
    failure.opened_attempts.pop(job.id, None)  # one this process opened in an earlier run is over

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
    failure.opened_attempts[job.id] = attempt
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
    failure.opened_attempts.pop(job.id, None)
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
