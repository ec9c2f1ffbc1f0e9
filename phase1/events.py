"""Lifecycle events: in-process subscribers and a capped Redis Stream any process can read."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from phase1 import keys
from phase1.schemas import Event
from phase1.settings import Settings

log = logging.getLogger(__name__)

ENQUEUED = "job:enqueued"
ACTIVE = "job:active"
PROGRESS = "job:progress"
COMPLETED = "job:completed"
FAILED = "job:failed"
REQUEUED = "job:requeued"
TYPES = (ENQUEUED, ACTIVE, PROGRESS, COMPLETED, FAILED, REQUEUED)
ALL = "*"

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


def emit(redis: Redis | Pipeline, settings: Settings, event: Event) -> None:
    """Append the event to the queue's stream (in `redis`'s pipeline when given one), then
    notify in-process subscribers. Losing an event never fails the job: errors are logged."""
    body = event.model_dump_json()
    try:
        redis.xadd(
            keys.event_stream(settings.queue),
            {"e": body},
            maxlen=settings.event_stream_maxlen,
            approximate=True,
        )
    except RedisError:
        log.warning("could not append %s for job %s to the event stream", event.type, event.jobId)
    notify(event)


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
    block_ms: int | None = None,
    count: int = 500,
) -> Iterator[tuple[str, Event]]:
    """Events after stream id `since` (oldest first), optionally for one job; with `block_ms`
    waits that long for new ones once the backlog is read."""
    last = since
    stream = keys.event_stream(queue)
    while True:
        batch: Any
        if block_ms is None:
            batch = redis.xrange(stream, min=f"({last}", count=count)
        else:
            answer: Any = redis.xread({stream: last}, count=count, block=block_ms)
            batch = answer[0][1] if answer else []
        if not batch:
            return
        for stream_id, fields in batch:
            sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
            last = sid
            raw = fields.get(b"e") or fields.get("e")
            event = Event.model_validate(json.loads(raw))
            if job_id is None or event.jobId == job_id:
                yield sid, event
