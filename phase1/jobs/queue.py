"""Enqueueing Phase 1 jobs (retry policy, timeout, callbacks) and looking them up."""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import RedisError
from rq import Callback, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.scripts import _build_hset_args

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import audit
from phase1.errors import NotFoundError, UnavailableError
from phase1.jobs import events
from phase1.schemas import Event, JobPayload, JobView
from phase1.settings import Settings, redact_url
from phase1.telemetry import tracing

FAILURE_CALLBACK = "phase1.job.on_failure"
# Finished jobs stay in Redis a while for rq tools; PostgreSQL remembers them for good.
RESULT_TTL = 3600
# RQ's failed registry keeps exhausted jobs this long; the DLQ (ours) is the real record.
FAILURE_TTL = 365 * 24 * 3600


def retry_policy(settings: Settings) -> Retry | None:
    """RQ's Retry with the schedule padded so the *last* interval repeats (RQ repeats the
    first) and cut to `max` entries (RQ indexes from the end of the list)."""
    schedule = settings.retry_schedule()
    if not schedule:
        return None
    # RQ's annotation says int, but it only does timedelta(seconds=...) with the value.
    return Retry(max=len(schedule), interval=schedule)  # type: ignore[arg-type]


def job_options(settings: Settings) -> dict[str, Any]:
    return {
        "retry": retry_policy(settings),
        "job_timeout": settings.job_timeout,
        "on_failure": Callback(FAILURE_CALLBACK, timeout=max(10, settings.job_timeout)),
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
    }


def enqueue(ctx: Phase1, job_id: str, plan_id: UUID, *, pipeline: Pipeline | None = None) -> Job:
    """Put the job on the queue; a job id Redis already holds is left alone (no double run).

    Raises UnavailableError when Redis cannot take it; the caller's PostgreSQL row stays
    `pending` and the reconciler enqueues it later.
    """
    with _send_span(ctx, job_id, plan_id):  # issue 24
        return _enqueue(ctx, job_id, plan_id, pipeline)


def _send_span(ctx: Phase1, job_id: str, plan_id: UUID) -> AbstractContextManager[Any]:
    """The enqueue as an OpenTelemetry producer span (messaging semantic conventions)."""
    return tracing.span(
        f"send {ctx.settings.queue}",
        kind="producer",
        attributes={
            "messaging.system": "rq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
            "messaging.destination.name": ctx.settings.queue,
            "messaging.message.id": job_id,
            "phase1.plan_id": str(plan_id),
        },
    )


def _enqueue(ctx: Phase1, job_id: str, plan_id: UUID, pipeline: Pipeline | None) -> Job:
    payload = JobPayload(planId=plan_id).model_dump(mode="json")
    # rq's unique check is a Lua script that runs at once, outside any pipeline; a pipelined
    # enqueue is only used for fresh ids, which nothing else can hold.
    try:
        return ctx.queue().enqueue(
            keys.JOB_FUNC,
            payload,
            job_id=job_id,
            unique=pipeline is None,
            description=f"Phase 1 tasks for plan {plan_id}",
            meta=tracing.traced({"planId": str(plan_id)}),  # issue 24: the trace travels
            pipeline=pipeline,
            **job_options(ctx.settings),
        )
    except DuplicateJobError:
        return Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc


# RQ's unique enqueue (rq.scripts.UNIQUE_ENQUEUE_SCRIPT: the job hash, its expiry, the queue
# push) with the queue's registration that RQ sends before it and the `job:enqueued` event
# after it: one round trip, and the event only for the call that enqueued the job.
ENQUEUE_UNIQUE = """
-- KEYS: job hash, queue list, RQ's set of queues, event stream
-- ARGV: job id, TTL (-1: none), stream MAXLEN, event JSON ('' for none), HSET pairs...
redis.call('SADD', KEYS[3], KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
return 1
"""


_scripts: weakref.WeakKeyDictionary[Redis, Script] = weakref.WeakKeyDictionary()


def enqueue_announced(ctx: Phase1, job_id: str, plan_id: UUID, event: Event) -> bool:
    """Enqueue a fresh job and append its `job:enqueued` event in one round trip; False when
    Redis holds the job already (a concurrent approval enqueued it; no event then). Events
    with webhook deliveries take the two-step path (enqueue, then emit)."""
    settings = ctx.settings
    if events.wants_webhooks(settings, event):
        enqueue(ctx, job_id, plan_id)
        events.emit(ctx.redis, settings, event)
        return True
    with _send_span(ctx, job_id, plan_id):  # issue 24
        return _enqueue_announced(ctx, job_id, plan_id, event)


def _enqueue_announced(ctx: Phase1, job_id: str, plan_id: UUID, event: Event) -> bool:
    settings = ctx.settings
    queue = ctx.queue()
    payload = JobPayload(planId=plan_id).model_dump(mode="json")
    options = job_options(settings)
    job = queue.create_job(
        keys.JOB_FUNC,
        args=(payload,),
        job_id=job_id,
        timeout=options["job_timeout"],
        result_ttl=options["result_ttl"],
        failure_ttl=options["failure_ttl"],
        retry=options["retry"],
        on_failure=options["on_failure"],
        description=f"Phase 1 tasks for plan {plan_id}",
        meta=tracing.traced({"planId": str(plan_id)}),  # issue 24: the trace travels
    )
    job.origin = queue.name
    queue._prepare_for_queue(job)  # what RQ sets before it saves: version, enqueued_at, status
    script = _scripts.get(ctx.redis)
    if script is None:
        script = _scripts[ctx.redis] = ctx.redis.register_script(ENQUEUE_UNIQUE)
    try:
        created = script(
            keys=[job.key, queue.key, queue.redis_queues_keys, keys.event_stream(settings.queue)],
            args=[
                job.id,
                job.ttl if job.ttl is not None else -1,
                settings.event_stream_maxlen,
                event.model_dump_json(),
                *_build_hset_args(job),  # type: ignore[no-untyped-call]
            ],
        )
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc
    if created:
        events.notify(event)
    return bool(created)


def job_in_redis(ctx: Phase1, job_id: str) -> bool:
    try:
        return bool(ctx.redis.exists(keys.rq_job(job_id)))
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc


def view(ctx: Phase1, job_id: str) -> JobView:
    """The job as the polling route shows it, from PostgreSQL (the system of record)."""
    if len(job_id) > 255:
        raise NotFoundError("job not found (id longer than 255 characters)")
    with ctx.read() as conn:  # one primary-key read: no transaction block needed
        row = audit.get(conn, job_id)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    return JobView.from_row(row)
