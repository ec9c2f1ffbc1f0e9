"""A FastWorker whose paused queues are the members of a Redis set (for tests of the
`queues_to_take` hook, run by `rq worker -w pausing_worker.PausingWorker`)."""

from __future__ import annotations

import time
from typing import Any

from rq.queue import Queue

from phase1.engine.worker import FastWorker

PAUSED_KEY = "phase1-test:paused-queues"
LOOK_EVERY_S = 0.2


class PausingWorker(FastWorker):
    """Takes nothing from the queues named in PAUSED_KEY (looked up at most every 0.2 s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused: set[str] = set()
        self.looked_at = float("-inf")
        self.asked = 0  # how many times the hook was asked (in-process tests)

    def queues_to_take(self) -> list[Queue]:
        self.asked += 1
        if time.monotonic() - self.looked_at >= LOOK_EVERY_S:
            self.paused = {m.decode() for m in self.connection.smembers(PAUSED_KEY)}
            self.looked_at = time.monotonic()
        return [q for q in super().queues_to_take() if q.name not in self.paused]
