"""Worker processes: RQ workers on phase1's queues, always with a scheduler."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from typing import Any

from rq import Worker
from rq.serializers import JSONSerializer

from phase1 import keys, sweep
from phase1.context import Phase1, install_worker_context
from phase1.fastworker import FastWorker  # issue 7B

log = logging.getLogger(__name__)


class Phase1Worker(FastWorker):  # issue 7B: was SimpleWorker; FastWorker is one, faster
    """Runs jobs in its own process (no fork per job): pooled PostgreSQL connections stay
    open across jobs. RQ's SIGALRM timeout still bounds each attempt.

    Usable from plain rq too: `rq worker -w phase1.worker.Phase1Worker ...`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)


class Phase1ForkingWorker(Worker):
    """RQ's forking worker (a fresh process per job), for jobs that need isolation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        # issue 3: a horse killed without reporting still gets its attempt recorded.
        kwargs.setdefault("work_horse_killed_handler", sweep.on_horse_killed)
        super().__init__(*args, **kwargs)


def queue_names(ctx: Phase1) -> list[str]:
    return [ctx.settings.queue, keys.webhook_queue(ctx.settings.queue)]


def run(ctx: Phase1, *, burst: bool = False, fork: bool = False, name: str | None = None) -> bool:
    """Run one worker in this process until stopped (or, with `burst`, until queues drain)."""
    install_worker_context(ctx)
    worker_class = Phase1ForkingWorker if fork else Phase1Worker
    worker = worker_class(
        [ctx.queue(q) for q in queue_names(ctx)],
        connection=ctx.redis,
        name=name,
    )
    sweeper = sweep.start(ctx)  # issue 3: orphaned jobs of dead workers, found in seconds
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        sweeper.stop()


def supervise(argv: list[str], processes: int, *, burst: bool) -> int:
    """Run `processes` worker processes (each `phase1 worker --processes 1 ...`), restart one
    that crashes (unless in burst mode), and pass SIGINT/SIGTERM on to all of them."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn() -> None:
        child = subprocess.Popen([sys.executable, "-m", "phase1", "worker", *argv])
        children[child.pid] = child

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(processes):
        spawn()
    worst = 0
    while children:
        for pid, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[pid]
            worst = max(worst, code if code > 0 else 0)
            if not stopping and not burst and code != 0:
                log.warning("worker process %s exited with %s; starting another", pid, code)
                spawn()
        time.sleep(0.2)
    return 0 if stopping else worst
