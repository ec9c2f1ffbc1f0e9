"""Pausing one queue: phase1 workers stop taking its jobs (approvals still enqueue them).

The paused queue names are one Redis set (keys.PAUSED_QUEUES), so every worker on every host
sees a pause within the second it rereads it (phase1.runtime.worker). RQ's own `rq suspend`
stops every queue of every worker; this stops one and leaves the rest, webhooks included.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from phase1 import keys
from phase1.context import Phase1, redis_unavailable
from phase1.errors import InvalidInputError


def _name(ctx: Phase1, queue: str | None) -> str:
    name = ctx.settings.queue if queue is None else queue.strip()
    if not name or len(name) > 255 or any(c.isspace() for c in name):
        raise InvalidInputError(f"queue name {queue!r} is not valid (non-empty, no spaces)")
    return name


def pause(ctx: Phase1, queue: str | None = None) -> None:
    """Pause `queue` (PHASE1_QUEUE by default); pausing a paused queue changes nothing."""
    name = _name(ctx, queue)
    try:
        ctx.redis.sadd(keys.PAUSED_QUEUES, name)
    except RedisError as exc:
        raise redis_unavailable(ctx.redis_url, exc) from exc


def resume(ctx: Phase1, queue: str | None = None) -> None:
    """Let workers take `queue`'s jobs again; resuming a queue not paused changes nothing."""
    name = _name(ctx, queue)
    try:
        ctx.redis.srem(keys.PAUSED_QUEUES, name)
    except RedisError as exc:
        raise redis_unavailable(ctx.redis_url, exc) from exc


def read_paused(redis: Redis) -> set[str]:
    """The paused queue names, from any Redis client (workers read it with their own)."""
    members: Any = redis.smembers(keys.PAUSED_QUEUES)
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


def paused(ctx: Phase1) -> set[str]:
    """The names of the queues paused now."""
    try:
        return read_paused(ctx.redis)
    except RedisError as exc:
        raise redis_unavailable(ctx.redis_url, exc) from exc


def is_paused(ctx: Phase1, queue: str | None = None) -> bool:
    """Whether `queue` (PHASE1_QUEUE by default) is paused."""
    name = _name(ctx, queue)
    try:
        return bool(ctx.redis.sismember(keys.PAUSED_QUEUES, name))
    except RedisError as exc:
        raise redis_unavailable(ctx.redis_url, exc) from exc
