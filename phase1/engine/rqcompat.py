"""Every private RQ name phase1 relies on, in one place, and whether the installed RQ is the one
they were checked against.

The fast worker writes RQ's keys by RQ's rules and steps into RQ's worker at private seams; a
minor RQ release may rename or change any of them (and a changed rule could make a job run
twice). So nothing else in phase1 touches an RQ private: it calls the accessors below, and
`PRIVATE_NAMES` lists each name with why it is needed. `supported()` says whether the
installed RQ is the minor these were tested with (TESTED_RQ); when it is not, FastWorker runs
RQ's own paths (phase1.engine.worker) and no speed-up patches RQ (phase1.engine.rqspeedups).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import rq

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.executions import Execution
    from rq.job import Job, JobStatus
    from rq.queue import Queue
    from rq.timeouts import BaseDeathPenalty
    from rq.worker import BaseWorker

TESTED_RQ = "3.0"

# RQ's private names used here: what each is, and why phase1 needs it.
PRIVATE_NAMES: dict[str, str] = {
    "BaseWorker._ordered_queues": "the queues in the order RQ's dequeue strategy takes them",
    "BaseWorker._stop_requested": "a stop was asked for: take no more jobs; set by the "
    "bounded shutdown",
    "BaseWorker._shutdown_requested_date": "when the first stop signal came (a repeat within "
    "a second is ignored)",
    "BaseWorker._state": "the state RQ reports, set without a write when Redis has it already",
    "BaseWorker._pubsub_exception_handler": "RQ's handler for errors of its command listener "
    "thread, which `subscribe` starts with a shorter poll",
    "BaseWorker._exc_handlers": "the exception handlers RQ's clean_registries is given",
    "BaseWorker._finalize_success": "RQ's end of a job that returned (a Retry among them)",
    "BaseWorker._finalize_failure": "RQ's end of a job that raised; phase1 puts an "
    "interrupted or superseded attempt back instead",
    "Job._status": "the status RQ keeps in memory, set where the write went out already",
    "Job._result": "the return value RQ keeps in memory for a finished job",
    "Job._handle_success": "RQ's Result and finished-registry writes, in the worker's pipeline",
    "Job._dependency_ids": "whether a job has dependencies (whose set expires with it)",
    "Job._success_callback_name": "whether a job has a success callback (RQ's path then)",
    "Queue._enqueue_job": "put a job back at the front of its queue in a caller's pipeline",
    "UnixSignalDeathPenalty._timeout": "the seconds the SIGALRM timeout arms the alarm for",
    "rq.serializers.resolve_serializer": "replaced in RQ's modules by a memoised one",
    "rq.utils.str_to_date": "replaced in rq.job by one that parses RQ's format in C",
}

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
W = TypeVar("W", bound=type[Any])


_warned = False


def warn_untested(log: logging.Logger) -> None:
    """One line, once a process: this RQ is not the one the engine was tested with."""
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "rq %s is installed but phase1's fast worker was tested with rq %s: running RQ's "
            "own worker paths",
            installed(),
            TESTED_RQ,
        )


def minor(version: str) -> str:
    """'3.0' of '3.0.2' (or of '3.0.0rc1')."""
    return ".".join(version.split(".")[:2])


def installed() -> str:
    return str(getattr(rq, "__version__", "?"))


def supported() -> bool:
    """Whether the installed RQ is the minor the names above were tested with."""
    return minor(installed()) == TESTED_RQ


# -- the worker ----------------------------------------------------------------------------


def ordered_queues(worker: BaseWorker) -> list[Queue]:
    return list(worker._ordered_queues)


@contextmanager
def ordered_queues_set_to(worker: BaseWorker, queues: list[Queue]) -> Iterator[None]:
    """RQ's blocking dequeue reads the worker's ordered queues: these, for its duration."""
    kept = worker._ordered_queues
    worker._ordered_queues = list(queues)
    try:
        yield
    finally:
        worker._ordered_queues = kept


def stop_requested(worker: BaseWorker) -> bool:
    return bool(worker._stop_requested)


def request_stop(worker: BaseWorker, when: datetime) -> None:
    """Mark a stop asked for at `when`, as RQ's own request_stop does."""
    worker._shutdown_requested_date = when
    worker._stop_requested = True


def shutdown_requested_date(worker: BaseWorker) -> datetime | None:
    return worker._shutdown_requested_date


def set_state_field(worker: BaseWorker, state: str) -> None:
    worker._state = state


def subscribe(worker: BaseWorker, poll_s: float) -> None:
    """RQ's subscribe (the thread that listens for `rq` commands), polling every `poll_s`
    (RQ: 60 s). redis-py 8's PubSubWorkerThread.stop() waits for the thread, which sleeps that
    long once unsubscribed: RQ's teardown, after register_death, stalled up to a minute, so a
    stopping worker exited late and its hash (expiring 60 s after its death) was gone."""
    worker.log.info("Worker %s: subscribing to channel %s", worker.name, worker.pubsub_channel_name)
    worker.pubsub = worker.connection.pubsub()
    worker.pubsub.subscribe(**{worker.pubsub_channel_name: worker.handle_payload})
    worker.pubsub_thread = worker.pubsub.run_in_thread(  # type: ignore[assignment]
        sleep_time=poll_s, daemon=True, exception_handler=worker._pubsub_exception_handler
    )


def exc_handlers(worker: BaseWorker) -> list[Any]:
    return list(worker._exc_handlers)


def finalize_success(
    worker: BaseWorker, job: Job, queue: Queue, execution: Execution, value: Any
) -> None:
    worker._finalize_success(job, queue, execution, value)


def finalize_failure(
    worker: BaseWorker, job: Job, queue: Queue, execution: Execution, exc_info: ExcInfo
) -> None:
    """RQ's end of a failed attempt, through any override (see `intercepts_failure`)."""
    worker._finalize_failure(job, queue, execution, exc_info)


def intercepts_failure(cls: W) -> W:
    """Class decorator: RQ's end of a failed attempt first asks the class's
    `intercept_failure(job, queue, execution, exc_info) -> ExcInfo | None`: the failure RQ's
    own end should record (usually `exc_info` itself), or None when the class handled the
    attempt."""

    def _finalize_failure(
        self: Any, job: Job, queue: Queue, execution: Execution, exc_info: ExcInfo
    ) -> None:
        failure = self.intercept_failure(job, queue, execution, exc_info)
        if failure is not None:
            owner: type[Any] = cls
            super(owner, self)._finalize_failure(job, queue, execution, failure)

    setattr(cls, "_finalize_failure", _finalize_failure)  # noqa: B010 -- named here only
    return cls


# -- jobs and queues -------------------------------------------------------------------------


def set_status_field(job: Job, status: JobStatus) -> None:
    job._status = status


def set_result_field(job: Job, value: Any) -> None:
    job._result = value


def has_dependencies(job: Job) -> bool:
    return bool(job._dependency_ids)


def has_success_callback(job: Job) -> bool:
    return bool(job._success_callback_name)


def write_success(job: Job, result_ttl: int, pipeline: Pipeline, **kwargs: Any) -> None:
    """RQ's Result and finished-registry writes for a job, in `pipeline`."""
    job._handle_success(result_ttl, pipeline=pipeline, **kwargs)


def enqueue_at_front(queue: Queue, job: Job, pipeline: Pipeline) -> None:
    queue._enqueue_job(job, pipeline=pipeline, at_front=True)


def penalty_timeout(penalty: BaseDeathPenalty) -> int:
    return int(penalty._timeout)
