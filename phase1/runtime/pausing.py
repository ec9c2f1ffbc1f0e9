"""What a phase1 worker takes from while queues are paused (phase1.jobs.pause).

The paused set is read again at most once a second, so a busy worker pays no round trip per
job for it, and a pause or resume reaches every worker within about a second.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import RedisError
from rq.queue import Queue

from phase1.jobs.pause import read_paused

log = logging.getLogger(__name__)

REREAD_S = 1.0


class PausedQueues:
    """The paused queue names, reread from Redis at most every REREAD_S seconds."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._names: set[str] = set()
        self._read_at = float("-inf")

    def names(self) -> set[str]:
        moment = time.monotonic()
        if moment - self._read_at >= REREAD_S:
            self._read_at = moment
            try:
                names = read_paused(self._redis)
            except RedisError as exc:  # keep the last answer; the work loop handles outages
                log.debug("could not read the paused queues: %s", exc)
            else:
                if names != self._names:
                    log.warning("paused queues now: %s", ", ".join(sorted(names)) or "none")
                self._names = names
        return self._names

    def filter(self, queues: list[Queue]) -> list[Queue]:
        """`queues` without the paused ones (the same list when none is paused)."""
        names = self.names()
        if not names:
            return queues
        return [q for q in queues if q.name not in names]
