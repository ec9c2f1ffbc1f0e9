"""Redis writes a job stages to go out with its worker's success bookkeeping.

A job run by phase1's FastWorker hands it writes (`after_success`) that the worker sends in
the transaction that records the job's success: its last events and its last heartbeat
cost no round trip of their own. Under any other worker (plain `rq worker`, a forking
worker's horse, a script) `after_success` answers False and the caller writes at once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from phase1.engine.timer import Call, timer

log = logging.getLogger(__name__)

Write = Callable[[Pipeline], Any]
Then = Callable[[], Any] | None
Staged = tuple[Write, Then]


class Stage:
    """Redis writes the running job staged to go out with its success bookkeeping.

    An entry staged `within` seconds goes out on its own, from the process's timer thread,
    if the job is still running by then (so a long job's `active` event is not held back)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.items: list[Staged] = []
        self.lock = threading.Lock()
        self.timers: list[Call] = []

    def add(self, item: Staged, within: float | None) -> None:
        with self.lock:
            self.items.append(item)
        if within is not None:
            self.timers.append(timer.call_later(within, functools.partial(self._send_due, item)))

    def take(self) -> list[Staged]:
        with self.lock:
            items, self.items = self.items, []
        return items

    def restage(self, items: list[Staged]) -> None:
        with self.lock:
            self.items[:0] = items

    def _send_due(self, item: Staged) -> None:
        with self.lock:  # the entry and everything staged before it, in order
            if item not in self.items:
                return
            cut = self.items.index(item) + 1
            due, self.items = self.items[:cut], self.items[cut:]
        send(self.connection, due)

    def close(self) -> None:
        """End of the job: stop the timers; what is still staged goes out now."""
        for call in self.timers:
            call.cancel()
        send(self.connection, self.take())


# The stage of the job this process runs; None when no FastWorker runs a job here (plain
# `rq worker`, a forking worker's horse, a script).
current: Stage | None = None


def after_success(write: Write, then: Then = None, *, within: float | None = None) -> bool:
    """From inside a job: stage Redis writes (`write(pipeline)`) to go out in the worker's
    success transaction, and `then()` to run once they are written. Returns False when no
    FastWorker runs this job in this process: the caller writes them itself, now.

    With `within`, they go out on their own if the job is still running that many seconds
    later. If the job fails, the staged writes go out before RQ's failure handling."""
    stage = current
    if stage is None:
        return False
    stage.add((write, then), within)
    return True


def send(connection: Redis, staged: list[Staged]) -> None:
    """Send staged writes in a round trip of their own, then run their `then`s."""
    if not staged:
        return
    try:
        with connection.pipeline(transaction=True) as pipe:
            for write, _ in staged:
                write(pipe)
            pipe.execute()
    except RedisError as exc:
        log.warning("could not send %d staged writes of a job: %s", len(staged), exc)
    for _, then in staged:
        if then is not None:
            then()
