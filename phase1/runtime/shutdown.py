"""Bounded graceful shutdown, in parts any worker class can reuse.

RQ's warm shutdown waits for the running job without a deadline, and its cold one leaves the
job `started` for abandoned-job cleanup to find minutes later. phase1 gives the job
PHASE1_SHUTDOWN_TIMEOUT seconds, then raises `ShutdownInterrupt` inside it (a signal to the
thread or work horse running it) and puts the job back at the front of its queue with its
retries untouched; the attempt is recorded as `interrupted` and the job as `pending` again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from redis import Redis
from rq.job import Job, JobStatus

from phase1 import context
from phase1.domain import audit
from phase1.engine import rqcompat
from phase1.errors import Phase1Error
from phase1.jobs import events

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.queue import Queue
    from rq.worker import BaseWorker

log = logging.getLogger(__name__)

# The signal that makes a running job raise ShutdownInterrupt (RQ itself uses none of USR1).
INTERRUPT_SIGNAL = signal.SIGUSR1
INTERRUPTED_MESSAGE = "interrupted by a worker shutdown; back on the queue without using a retry"


class ShutdownInterrupt(KeyboardInterrupt):
    """Raised inside a job when its worker stops and the shutdown timeout has passed.

    A KeyboardInterrupt, so a job's `except Exception` does not swallow it, and psycopg cancels
    the query it interrupts: the transaction rolls back at once and leaves no lock behind.
    """


class _Scope:
    """Whether this process is inside a job function, and whether an interrupt is due."""

    running = False
    pending = False
    cancel = False  # the next interrupt is a cancel: it stops the running job, no other


_scope = _Scope()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Mark the job function as running: an interrupt now raises ShutdownInterrupt in it (at
    once, when one came before the job started)."""
    _scope.running = True
    try:
        if _scope.pending:
            raise ShutdownInterrupt("the worker is stopping")
        yield
    finally:
        _scope.running = False


def interrupt_here() -> None:
    """Interrupt the job running in this thread, or the next one to start (main thread only)."""
    _scope.pending = True
    if _scope.running:
        raise ShutdownInterrupt("the worker is stopping and its shutdown timeout has passed")


def _on_interrupt_signal(_signum: int, _frame: FrameType | None) -> None:
    if _scope.cancel:
        _scope.cancel = False
        if _scope.running:
            raise ShutdownInterrupt("the job was cancelled by an operator")
        return
    interrupt_here()


def interrupt_for_cancel() -> None:
    """Interrupt the job running in the main thread now, for `phase1 cancel` (and, unlike a
    shutdown, not the next job: none is running, nothing happens)."""
    _scope.cancel = True
    interrupt_main_thread()


def install_interrupt_handler() -> None:
    """Let INTERRUPT_SIGNAL interrupt the job this process runs (call in the main thread)."""
    _scope.pending = False
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt_signal)


def interrupt_main_thread() -> None:
    """Deliver INTERRUPT_SIGNAL to the main thread: a real signal, so it also breaks a blocking
    system call (a socket wait in psycopg or redis) rather than waiting for it to return."""
    ident = threading.main_thread().ident
    if ident is not None:
        signal.pthread_kill(ident, INTERRUPT_SIGNAL)


class InterruptibleJob(Job):
    """RQ's Job whose function can be interrupted by a stopping worker (and nothing else can:
    RQ's bookkeeping and callbacks run outside the interruptible scope)."""

    def perform(self) -> Any:
        with interruptible():
            return super().perform()


def is_interrupt(exc_type: type[BaseException] | None) -> bool:
    return exc_type is not None and issubclass(exc_type, ShutdownInterrupt)


class Deadline:
    """Calls `steps` one after another from a daemon thread, each after its delay, until
    cancelled: e.g. "interrupt the job after the shutdown timeout, kill it 5 s later"."""

    def __init__(self, steps: list[tuple[float, Callable[[], None]]]) -> None:
        self._steps = steps
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="phase1-shutdown", daemon=True)
            self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _run(self) -> None:
        for delay, step in self._steps:
            if self._cancelled.wait(delay):
                return
            try:
                step()
            except Exception:
                log.exception("shutdown step %r failed", step)


def requeue_interrupted(
    worker: BaseWorker, job: Job, queue: Queue, execution: Execution | None
) -> int | None:
    """Put an interrupted job back at the front of its queue with its retries untouched, and
    record the attempt as `interrupted` in PostgreSQL (the job is `pending` again).

    PostgreSQL first: once the job is back on the queue another worker may start it at once.
    Returns the interrupted attempt's number (None when PostgreSQL could not say).
    """
    attempt: int | None = None
    ctx = context.for_worker_process()
    try:
        with ctx.transaction() as conn:
            attempt = audit.interrupt_attempt(conn, job.id, INTERRUPTED_MESSAGE)
    except Phase1Error as exc:
        # The next attempt's start closes this one; the job itself must still go back.
        log.warning("job %s: could not record the interruption in PostgreSQL: %s", job.id, exc)
    connection: Redis = worker.connection
    status, owner = (
        v.decode() if isinstance(v, bytes) else v
        for v in connection.hmget(job.key, ["status", "worker_name"])
    )
    if status is not None and (status != JobStatus.STARTED or owner != worker.name):
        return attempt  # put back already (by the work horse), and maybe started elsewhere
    with connection.pipeline() as pipe:
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        job.started_at = None
        job.ended_at = None
        # What RQ's own registry requeue calls; the public enqueue_job would start a second
        # MULTI on this pipeline for dependencies a phase1 job never has.
        rqcompat.enqueue_at_front(queue, job, pipe)
        pipe.execute()
    worker.log.warning(
        "Worker %s: job %s interrupted by shutdown (attempt %s); back at the front of %s with "
        "%s retries left",
        worker.name,
        job.id,
        attempt if attempt is not None else "?",
        queue.name,
        job.retries_left,
    )
    plan_id = (job.meta or {}).get("planId")
    if plan_id is None:
        return attempt  # not a Phase 1 job (a webhook delivery): no lifecycle event
    events.emit(
        connection,
        ctx.settings,
        events.make(
            events.ENQUEUED,
            job.id,
            str(plan_id),
            attempt,
            {"queue": queue.name, "reason": "interrupted"},
        ),
    )
    return attempt


def kill_process_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal `pid`'s process group (a work horse leads its own), ignoring one already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig)
