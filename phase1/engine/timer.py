"""One timer thread per process for what a running job schedules: its heartbeats and the
staged writes that must go out on their own if the job runs long.

Starting a thread per job for these cost more than the rest of a quick job's Python: the
starting thread waits until the new one runs, which on two busy cores took milliseconds (a
profile of a worker running Phase 1 jobs under load: bench/RESULTS.md, two starts and a
join per job). One long-lived daemon thread serves every job of the process instead; a
forked child (a forking worker's horse) gets its own on first use.

A callback runs on the timer's thread and must be short (a Redis write); one that raises is
logged and forgotten. A cancelled callback that has already begun finishes its run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(order=True)
class Call:
    """A scheduled callback; `cancel()` keeps it from running (again)."""

    due: float
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    every: float | None = field(default=None, compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timer:
    """A heap of due callbacks and the one daemon thread that runs them."""

    def __init__(self) -> None:
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[Call] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Call:
        """Run `fn` once, `delay` seconds from now."""
        return self._add(delay, fn, None)

    def call_every(self, interval: float, fn: Callable[[], Any]) -> Call:
        """Run `fn` every `interval` seconds, the first time `interval` from now."""
        return self._add(interval, fn, interval)

    def _add(self, delay: float, fn: Callable[[], Any], every: float | None) -> Call:
        if self._pid != os.getpid():  # first use, or a forked child: the thread is not here
            self._reset()
            self._pid = os.getpid()
        call = Call(time.monotonic() + delay, next(self._seq), fn, every)
        with self._cond:
            heapq.heappush(self._heap, call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="phase1-timer", daemon=True)
                self._thread.start()
            elif self._heap[0] is call:
                self._cond.notify()
        return call

    def _next(self) -> Call:
        with self._cond:
            while True:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if self._heap and self._heap[0].due <= time.monotonic():
                    call = heapq.heappop(self._heap)
                    if call.every is not None:
                        call.due = max(call.due + call.every, time.monotonic())
                        call.seq = next(self._seq)
                        heapq.heappush(self._heap, call)
                    return call
                self._cond.wait(self._heap[0].due - time.monotonic() if self._heap else None)

    def _run(self) -> None:
        while True:
            call = self._next()
            try:
                call.fn()
            except Exception:
                log.exception("a scheduled callback of a job failed")

    def pending(self) -> int:
        """Callbacks scheduled and not cancelled (for tests)."""
        with self._cond:
            return sum(not c.cancelled for c in self._heap)


timer = Timer()
