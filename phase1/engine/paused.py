"""Taking jobs only from the queues a FastWorker may take from now (its `queues_to_take`
hook, which pauses queues by leaving them out). With every queue named, RQ's own dequeue
runs as it is; otherwise RQ's would block on the same list until a job came, and a queue
taken up again would not be seen, so the worker blocks a second at a time instead."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue
from rq.worker import WorkerStatus

from phase1.engine import rqcompat

if TYPE_CHECKING:
    from phase1.engine.worker import FastWorker

RQDequeue = Callable[[int | None, int | None], tuple[Job, Queue] | None]


def dequeue(
    worker: FastWorker, rq_dequeue: RQDequeue, timeout: int | None, max_idle_time: int | None
) -> tuple[Job, Queue] | None:
    """RQ's (blocking) dequeue when `queues_to_take` names every queue. Otherwise a burst
    worker takes what it may now, if anything; a waiting one blocks on the queues named
    (none: sleeps) a second at a time, beating and running maintenance as RQ's loop
    does, so that a queue taken up again, or left out, is seen within that second."""
    while True:
        queues = worker.queues_to_take()
        if queues == rqcompat.ordered_queues(worker):  # all of them: RQ's own, as it is
            return rq_dequeue(timeout, max_idle_time)
        result = None
        if timeout is None:  # burst: nothing to wait for
            if not queues:
                return None
            with rqcompat.ordered_queues_set_to(worker, queues):
                result = rq_dequeue(None, max_idle_time)
            if result is None:
                return None
        else:
            worker.set_state(WorkerStatus.IDLE)
            worker.heartbeat()
            if worker.should_run_maintenance_tasks:
                worker.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            if rqcompat.stop_requested(worker):
                return None
            if not queues:
                time.sleep(1.0)
                continue
            with contextlib.suppress(DequeueTimeout):
                result = worker.queue_class.dequeue_any(
                    queues,
                    1,
                    connection=worker.connection,
                    job_class=worker.job_class,
                    serializer=worker.serializer,
                    death_penalty_class=worker.death_penalty_class,
                )
            if result is None:
                continue
            result[0].redis_server_version = worker.get_redis_server_version()  # type: ignore[no-untyped-call]
        worker.reorder_queues(reference_queue=result[1])  # on all of them, as RQ
        return result
