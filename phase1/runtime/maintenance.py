"""Periodic housekeeping in a worker process: the reconciler, and whatever else registers.

Tasks run in one daemon thread, each at its own interval, so a busy or blocked work loop never
delays them; a task that raises is logged and tried again at its next turn.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Task:
    name: str
    interval: float
    run: Callable[[], object]
    due: float = 0.0


class Maintenance:
    """Runs registered tasks until stopped: `add(...)`, then `start()`, and `stop()` at exit."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, interval: float, run: Callable[[], object]) -> None:
        """Run `run()` about every `interval` seconds; the first run comes soon after start,
        with a little jitter so workers started together do not all run at once."""
        first = time.monotonic() + random.uniform(0, min(1.0, interval / 4))
        self.tasks.append(Task(name, interval, run, due=first))

    def start(self) -> None:
        if self._thread is None and self.tasks:
            self._thread = threading.Thread(
                target=self._loop, name="phase1-maintenance", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for task in self.tasks:
                if task.due <= now and not self._stop.is_set():
                    self._run(task)
                    task.due = time.monotonic() + task.interval
            wait = min(task.due for task in self.tasks) - time.monotonic()
            self._stop.wait(max(0.05, wait))

    @staticmethod
    def _run(task: Task) -> None:
        try:
            task.run()
        except Exception as exc:
            log.warning("maintenance task %s failed: %s", task.name, exc)
            log.debug("maintenance task %s failed", task.name, exc_info=True)
