"""phase1's worker classes on RQ: the fast in-process one (on phase1.engine's FastWorker) and
the forking one, with JSON jobs, a bounded graceful shutdown (shutdown.py), a work loop that
outlives Redis outages, cancel and pause, and a cut-off worker that defers to the one that took
its job over (cutoff.py). `phase1 worker` starts them through process.py."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from datetime import timedelta
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Worker
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from phase1.context import redis_pools
from phase1.engine import rqcompat
from phase1.engine.leftbehind import PutsBackLeftBehind
from phase1.engine.worker import FastWorker
from phase1.errors import JobCancelled
from phase1.jobs import cancel
from phase1.runtime import cutoff, forks, shutdown, sweep
from phase1.runtime.pausing import PausedQueues

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.queue import Queue

__all__ = ["Phase1ForkingWorker", "Phase1Worker"]

log = logging.getLogger(__name__)

# RQ derives the blocking dequeue's timeout (ttl - 15 s) and the connection's socket timeout
# (ttl - 5 s) from the worker TTL; its default of 420 s would let a hung Redis stall a worker
# for seven minutes. 20 s: the dequeue wakes every 5 s (to run maintenance when due), and a
# command to a hung Redis fails after 15 s.
WORKER_TTL = 20
HORSE_KILL_GRACE = 5.0  # after interrupting a work horse, before SIGKILL
HARD_EXIT_GRACE = 10.0  # after interrupting an in-process job that ignores it, before exiting
MAX_BACKOFF = 30.0
# Abandoned-job detection (RQ's StartedJobRegistry cleanup, run in worker maintenance) sees a
# job once its execution's heartbeat TTL has passed; see get_heartbeat_ttl below.
DEFAULT_JOB_TIMEOUT = 180  # RQ's Queue.DEFAULT_TIMEOUT
CALLBACK_TIMEOUT = 10  # phase1's on_failure gets max(10, job timeout)
HEARTBEAT_MARGIN = 10
JOB_MONITORING_INTERVAL = 5

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


def _stop_flag(thread: Any) -> None:
    """Tell redis-py's pubsub worker thread to end, without waiting for it: redis-py 8's
    `stop(timeout)` joins (unbounded by default), earlier ones only clear the flag."""
    try:
        thread.stop(timeout=0)
    except TypeError:  # redis-py < 8: stop() takes no timeout and does not join
        thread.stop()


@rqcompat.intercepts_failure
class _Phase1Base(PutsBackLeftBehind):
    """What both phase1 worker classes add to RQ's: JSON, the bounded shutdown, Redis outages."""

    def __init__(self, *args: Any, shutdown_timeout: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs["job_class"] = kwargs.get("job_class") or shutdown.InterruptibleJob
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        super().__init__(*args, **kwargs)
        redis_pools.add(self.connection.connection_pool)  # also under `rq worker -w`
        self.shutdown_timeout = shutdown_timeout
        self._job_in_hand: tuple[Job, Queue] | None = None
        self._cancelling: str | None = None  # the job `phase1 cancel` interrupted
        self._deadline: shutdown.Deadline | None = None

    # -- the work loop, restarted after a Redis outage ------------------------------------
    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop (same arguments); when it ends on an error (RQ quits on most Redis
        errors) rather than a stop request, wait for Redis with backoff and run it again."""
        burst = bool(args[0] if args else kwargs.get("burst", False))
        if self.shutdown_timeout is None:  # under plain `rq worker -w ...`: from the env
            from phase1.context import for_worker_process

            self.shutdown_timeout = for_worker_process().settings.shutdown_timeout
        shutdown.install_interrupt_handler()
        forks.install_fork_hook()
        worked, backoff = False, 1.0
        while True:
            started = time.monotonic()
            try:
                worked = bool(super().work(*args, **kwargs)) or worked
            except StopRequested:
                return worked
            except RedisError as exc:  # raised by RQ's bootstrap or teardown
                self.log.error("Worker %s: Redis error outside the work loop: %s", self.name, exc)
            if burst or rqcompat.stop_requested(self):
                return worked
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.log.warning("Worker %s: work loop stopped on an error; restarting it", self.name)
            try:
                self._await_redis(backoff)
            except StopRequested:
                return worked
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _await_redis(self, backoff: float) -> None:
        """Sleep, then ping Redis until it answers (a stop request interrupts the sleep)."""
        while True:
            time.sleep(backoff)
            try:
                self.connection.ping()
            except RedisError as exc:
                self.log.error("Worker %s: Redis still unavailable: %s", self.name, exc)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            # A registration that survived the outage would make RQ refuse to start again.
            with contextlib.suppress(RedisError):
                self.register_death()  # type: ignore[no-untyped-call]
            return

    def teardown(self) -> None:
        """RQ's teardown, each step on its own, so a dead Redis cannot leave the pubsub thread
        or the scheduler process running."""
        if self.is_horse:
            return
        if self.scheduler:
            with contextlib.suppress(OSError):
                self.stop_scheduler()  # type: ignore[no-untyped-call]
        try:
            self.register_death()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            self.log.warning("Worker %s: could not register its death: %s", self.name, exc)
        if self.pubsub_thread:
            # RQ's pubsub thread reads with a 60 s timeout, and once unsubscribed it waits up
            # to 60 s for a subscription; redis-py 8's stop() joins it without a bound, so a
            # stopping worker hung up to a minute after its loop ended. Its flag goes first
            # (no wait), then the unsubscribe reply wakes its read and it ends at once.
            _stop_flag(self.pubsub_thread)
            with contextlib.suppress(RedisError):
                self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)  # a daemon: one still waiting never holds exit
            with contextlib.suppress(RedisError):
                self.pubsub.close()
            self.pubsub_thread = None

    # -- knowing whether a job is in hand --------------------------------------------------
    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self._job_in_hand = result
        return result

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            self._job_in_hand = None
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    def _busy(self) -> bool:
        return self._job_in_hand is not None or self.get_state() == WorkerStatus.BUSY

    # -- the bounded shutdown ---------------------------------------------------------------
    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First SIGTERM/SIGINT: take no more jobs; the job in hand has `shutdown_timeout`
        seconds to finish before it is interrupted and put back on the queue."""
        rqcompat.request_stop(self, now())
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        if not self._busy():
            self.log.info("Worker %s: stopping (idle)", self.name)
            raise StopRequested()
        job = self._job_in_hand[0].id if self._job_in_hand else "?"
        self.log.warning(
            "Worker %s: stopping; job %s has %s s to finish, then goes back on the queue "
            "(signal again to interrupt it now)",
            self.name,
            job,
            self.shutdown_timeout,
        )
        with contextlib.suppress(RedisError):
            self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        self._deadline = shutdown.Deadline(self._deadline_steps(float(self.shutdown_timeout or 0)))
        self._deadline.start()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A later signal interrupts the job now (RQ's cold shutdown would leave it `started`).
        A repeat within a second is the same stop delivered twice (a terminal and a
        supervisor both signalling) and is ignored."""
        asked = rqcompat.shutdown_requested_date(self)
        assert asked is not None
        if now() - asked < timedelta(seconds=1) or not self._busy():
            return
        self.log.warning("Worker %s: second stop signal; interrupting the job now", self.name)
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = shutdown.Deadline(self._deadline_steps(0.0))
        self._deadline.start()

    def _deadline_steps(self, after: float) -> list[tuple[float, Any]]:
        raise NotImplementedError

    def intercept_failure(
        self, job: Job, queue: Queue, execution: Execution, exc_info: ExcInfo
    ) -> ExcInfo | None:
        """RQ's end of a failed attempt asks this first (rqcompat.intercepts_failure): the
        failure RQ should record, or None when it is handled here.

        An interrupted job is no failure: it goes back on its queue (RQ would retry or fail
        it), unless `phase1 cancel` interrupted it: then it ends as cancelled, with no retry.
        Nor is the end of an attempt another worker took over while this one was cut off
        (the orphan sweep gave it up for dead): the job is that worker's now, so this one
        records its attempt as superseded and leaves RQ's state alone."""
        if shutdown.is_interrupt(exc_info[0]):
            if self._cancelling == job.id and not cancel.completed(job.id):
                self._cancelling = None
                job.retries_left = 0  # `phase1 cancel` records the rest in PostgreSQL
                cancelled = JobCancelled(f"job {job.id} was cancelled while it ran")
                return (JobCancelled, cancelled, exc_info[2])
            shutdown.requeue_interrupted(self, job, queue, execution)
            return None
        error = f"{exc_info[0].__name__ if exc_info[0] else 'Error'}: {exc_info[1]}"
        note = f"worker {self.name} on {self.hostname} came back ({error[:500]})"
        return None if cutoff.taken_over(self, job, note) else exc_info


class Phase1Worker(_Phase1Base, FastWorker):
    """Runs jobs in its own process (no fork per job): pooled PostgreSQL connections stay
    open across jobs. RQ's SIGALRM timeout still bounds each attempt.

    Usable from plain rq too: `rq worker -w phase1.worker.Phase1Worker ...`.
    """

    # How long the job's execution counts as alive without news (FastWorker's rule: timeout +
    # max(10, timeout) + 10). Nothing refreshes it while an in-process job runs, so it must
    # cover the attempt (bounded by the job timeout) and its failure callback; RQ adds 60 s to
    # the timeout, which left a killed worker's job `started` for over a minute before
    # cleanup could see it.
    heartbeat_ttl_rule = (
        DEFAULT_JOB_TIMEOUT,
        1,
        CALLBACK_TIMEOUT,
        HEARTBEAT_MARGIN,
        DEFAULT_WORKER_TTL,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused = PausedQueues(self.connection)

    def queues_to_take(self) -> list[Queue]:
        """RQ's order of the queues without the paused ones (`phase1 pause`)."""
        return self._paused.filter(super().queues_to_take())

    def _deadline_steps(self, after: float) -> list[tuple[float, Any]]:
        return [(after, shutdown.interrupt_main_thread), (HARD_EXIT_GRACE, self._give_up)]

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's stop-job command (`phase1 cancel` sends it) for the job in hand: interrupt it
        now, at whatever Python line it runs; its transaction rolls back."""
        stopped = self._stopped_job_id
        if stopped and self._job_in_hand is not None and self._job_in_hand[0].id == stopped:
            self._cancelling = stopped
            shutdown.interrupt_for_cancel()

    def _give_up(self) -> None:
        """The job ignored the interrupt (stuck outside Python): put it back and exit."""
        self.log.error("Worker %s: the job did not stop; requeueing it and exiting", self.name)
        if self._job_in_hand is not None:
            job, queue = self._job_in_hand
            with contextlib.suppress(Exception):
                shutdown.requeue_interrupted(self, job, queue, self.execution)
        with contextlib.suppress(Exception):
            self.hand_back_taken()
        os._exit(1)


class Phase1ForkingWorker(_Phase1Base, Worker):
    """RQ's forking worker (a fresh work horse per job), for jobs that need isolation.

    The horse ignores SIGINT/SIGTERM (the worker decides when to stop it, also under systemd's
    KillMode=control-group) and turns INTERRUPT_SIGNAL into ShutdownInterrupt.
    """

    _killed_for_shutdown: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # issue 3: a horse killed without reporting still gets its attempt recorded.
        kwargs.setdefault("work_horse_killed_handler", sweep.on_horse_killed)
        # The worker heartbeats its horse's execution this often (RQ: every 30 s).
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)
        import phase1.db  # noqa: F401 -- each horse forks with psycopg loaded, not importing it

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Until the next heartbeat plus a margin (RQ adds 60 s): a killed worker's job is
        seen as abandoned within seconds of its last heartbeat."""
        remaining = (job.timeout or DEFAULT_JOB_TIMEOUT) - working_time
        return int(max(1, min(remaining, self.job_monitoring_interval)) + HEARTBEAT_MARGIN)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        with forks.forking_horse():
            super().fork_work_horse(job, queue)

    def subscribe(self) -> None:
        """RQ's, its command listener polling every second: RQ's 60 s stalled the worker's
        exit by up to a minute (rqcompat.subscribe)."""
        if not rqcompat.supported():
            super().subscribe()  # type: ignore[no-untyped-call]
            return
        rqcompat.subscribe(self, 1.0)

    def setup_work_horse_signals(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown.install_interrupt_handler()

    def _deadline_steps(self, after: float) -> list[tuple[float, Any]]:
        return [(after, self._interrupt_horse), (HORSE_KILL_GRACE, self._kill_horse_for_shutdown)]

    def _interrupt_horse(self) -> None:
        if self.horse_pid and self._job_in_hand is not None:
            # Set first: a horse that dies of the signal itself is an interruption too.
            self._killed_for_shutdown = self._job_in_hand[0].id
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, shutdown.INTERRUPT_SIGNAL)

    def _kill_horse_for_shutdown(self) -> None:
        if self.horse_pid:
            self.log.error("Worker %s: work horse ignored the interrupt; killing it", self.name)
            shutdown.kill_process_group(self.horse_pid)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        if job.id != self._killed_for_shutdown:
            super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if job.id == self._killed_for_shutdown and not self.is_horse:
            shutdown.requeue_interrupted(self, job, queue, execution)
            return
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
