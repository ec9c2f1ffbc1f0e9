"""The dead-letter queue: every exhausted job, with its story, until an operator acts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from phase1 import keys


def add(redis: Redis, queue: str, entry: dict[str, Any], *, retention: int = 0) -> bool:
    """Store `entry` (it must hold `jobId`) unless that job is in the DLQ already.

    Returns False when it was there: a job is never dead-lettered twice.
    """
    job_id = entry["jobId"]
    failed_at = datetime.now(UTC)
    entry = {**entry, "failedAt": failed_at.isoformat().replace("+00:00", "Z")}
    stored = redis.set(
        keys.dlq_entry(queue, job_id),
        json.dumps(entry, default=str),
        nx=True,
        ex=retention or None,
    )
    if not stored:
        return False
    redis.zadd(keys.dlq_index(queue), {job_id: failed_at.timestamp()})
    return True


def get(redis: Redis, queue: str, job_id: str) -> dict[str, Any] | None:
    raw = redis.get(keys.dlq_entry(queue, job_id))
    return None if raw is None else dict(json.loads(raw))


def list_entries(redis: Redis, queue: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Newest first."""
    members: Any = redis.zrevrange(keys.dlq_index(queue), 0, limit - 1)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in members]
    if not ids:
        return []
    raws = redis.mget([keys.dlq_entry(queue, i) for i in ids])
    return [json.loads(raw) for raw in raws if raw is not None]


def size(redis: Redis, queue: str) -> int:
    return int(redis.zcard(keys.dlq_index(queue)))
