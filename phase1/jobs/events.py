"""Lifecycle events: in-process subscribers and a capped Redis Stream any process can read."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import Job

from phase1 import keys
from phase1.engine import success_writes
from phase1.jobs import webhooks
from phase1.keys import ACTIVE as ACTIVE
from phase1.keys import COMPLETED as COMPLETED
from phase1.keys import ENQUEUED as ENQUEUED
from phase1.keys import EVENT_TYPES as TYPES
from phase1.keys import FAILED as FAILED
from phase1.keys import PROGRESS as PROGRESS
from phase1.keys import REQUEUED as REQUEUED
from phase1.schemas import Event
from phase1.settings import Settings
from phase1.telemetry import tracing

log = logging.getLogger(__name__)

ALL = "*"
# How long `read(follow=True)` keeps trying through a Redis outage before it gives up.
FOLLOW_OUTAGE_S = 60.0

Handler = Callable[[Event], None]
_handlers: dict[str, list[Handler]] = {}


def subscribe(event_type: str, handler: Handler) -> Callable[[], None]:
    """Call `handler` for each event of `event_type` ("*" for all) emitted in this process.

    A handler that raises is logged and never changes the job's outcome. Returns a function
    that unsubscribes it.
    """
    if event_type != ALL and event_type not in TYPES:
        raise ValueError(f"unknown event type {event_type!r}; one of {', '.join(TYPES)} or '*'")
    _handlers.setdefault(event_type, []).append(handler)

    def unsubscribe() -> None:
        if handler in _handlers.get(event_type, []):
            _handlers[event_type].remove(handler)

    return unsubscribe


def make(
    event_type: str,
    job_id: str,
    plan_id: str | None,
    attempt: int | None,
    data: dict[str, Any] | None = None,
) -> Event:
    return Event(
        id=str(uuid.uuid4()),
        type=event_type,
        jobId=job_id,
        planId=plan_id,
        attempt=attempt,
        at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        data=data or {},
    )


def emit(redis: Redis | Pipeline, settings: Settings, event: Event) -> Event:
    """Append the event to the queue's stream and enqueue its webhook deliveries, together.

    Given a client, it writes at once (one transaction when there are deliveries) and then
    notifies in-process subscribers. Given a pipeline, it only stages the writes in it: call
    `notify(event)` once `pipe.execute()` has succeeded, so that subscribers never hear of an
    event that was not written. Losing an event never fails the job: errors are logged.
    """
    wanted = wants_webhooks(settings, event)
    if isinstance(redis, Pipeline):
        if wanted:
            client = Redis(connection_pool=redis.connection_pool)
            webhooks.enqueue(redis, settings, event, client)
        _append(redis, settings, event)
        return event
    try:
        if wanted:
            with redis.pipeline(transaction=True) as pipe:
                webhooks.enqueue(pipe, settings, event, redis)
                _append(pipe, settings, event)
                pipe.execute()
        else:
            _append(redis, settings, event)
    except RedisError as exc:
        log.warning("could not write %s of job %s to Redis: %s", event.type, event.jobId, exc)
    notify(event)
    return event


def emit_many(redis: Redis, settings: Settings, batch: list[Event]) -> None:
    """Emit several events in one round trip (one MULTI/EXEC), then notify subscribers."""
    try:
        with redis.pipeline(transaction=True) as pipe:
            for event in batch:
                emit(pipe, settings, event)
            pipe.execute()
    except RedisError as exc:
        log.warning("could not write %d events to Redis: %s", len(batch), exc)
    for event in batch:
        notify(event)


def emit_after_success(
    redis: Redis, settings: Settings, batch: list[Event], *, within: float | None = None
) -> None:
    """From inside a job: emit the events with the worker's success bookkeeping (one round
    trip for both, phase1's worker), or now (any other worker). With `within`, a job still
    running that many seconds later sends them on their own then. Either way subscribers
    hear of them once written, and in the order emitted."""

    # Issue 24: written after the job's span ended, webhook deliveries still join its trace.
    traced = tracing.capture()

    def write(pipe: Pipeline) -> None:
        with tracing.restored(traced):
            for event in batch:
                emit(pipe, settings, event)

    def then() -> None:
        for event in batch:
            notify(event)

    if not success_writes.after_success(write, then, within=within):
        emit_many(redis, settings, batch)


def _append(target: Redis | Pipeline, settings: Settings, event: Event) -> None:
    target.xadd(
        keys.event_stream(settings.queue),
        {"e": event.model_dump_json()},
        maxlen=settings.event_stream_maxlen,
        approximate=True,
    )


def wants_webhooks(settings: Settings, event: Event) -> bool:
    """Webhooks go out for the configured types; of `job:failed`, only the final one."""
    if not settings.webhook_urls or event.type not in settings.webhook_events:
        return False
    return event.type != FAILED or bool(event.data.get("final"))


def progress(
    job: Job, settings: Settings, plan_id: str | None, attempt: int, percent: int, **data: Any
) -> Event:
    """From inside an RQ job: emit `job:progress` with `data.progress` (0-100) and details."""
    details = {"progress": max(0, min(100, percent)), **data}
    return emit(job.connection, settings, make(PROGRESS, job.id, plan_id, attempt, details))


def notify(event: Event) -> None:
    for handler in [*_handlers.get(event.type, []), *_handlers.get(ALL, [])]:
        try:
            handler(event)
        except Exception:
            log.exception("event handler %r failed on %s", handler, event.type)


def read(
    redis: Redis,
    queue: str,
    *,
    since: str = "0-0",
    job_id: str | None = None,
    follow: bool = False,
    block_ms: int = 1000,
    count: int = 500,
) -> Iterator[tuple[str, Event]]:
    """(stream id, event) for each event after stream id `since`, oldest first, optionally of
    one job. With `follow` it then waits for new ones (each XREAD blocking up to `block_ms`)
    for as long as the caller keeps iterating."""
    last = since
    stream = keys.event_stream(queue)
    lost_at: float | None = None
    while True:
        batch: Any
        if follow:
            try:
                answer: Any = redis.xread({stream: last}, count=count, block=block_ms)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # Following outlives a Redis restart or a Sentinel failover (the client asks
                # for the primary again on its next connection), up to FOLLOW_OUTAGE_S.
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at > FOLLOW_OUTAGE_S:
                    raise
                log.warning("following events: Redis unavailable (%s); trying again", exc)
                time.sleep(1.0)
                continue
            lost_at = None
            batch = answer[0][1] if answer else []
        else:
            batch = redis.xrange(stream, min=f"({last}", count=count)
        if not batch and not follow:
            return
        for stream_id, fields in batch:
            sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
            last = sid
            try:
                event = Event.model_validate_json(fields.get(b"e") or fields.get("e") or b"")
            except ValueError:
                log.warning("skipping stream entry %s: not a phase1 event", sid)
                continue
            if job_id is None or event.jobId == job_id:
                yield sid, event


def last_id(redis: Redis, queue: str) -> str:
    """The stream id of the newest event ("0-0" when there is none): a `since` for "from now"."""
    newest: Any = redis.xrevrange(keys.event_stream(queue), count=1)
    if not newest:
        return "0-0"
    sid = newest[0][0]
    return sid.decode() if isinstance(sid, bytes) else str(sid)
