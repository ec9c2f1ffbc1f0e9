"""An in-process RQ worker that writes RQ's own data model in fewer Redis round trips.

`FastWorker` is RQ's `SimpleWorker` (no fork per job); every key, field, registry entry and
status it writes is the one RQ's own worker writes, so `rq info`, rq-dashboard and a plain
`rq worker` beside it stay correct. What changes is *when* and *in how many round trips*:

- a plain job (no success callback, webhook, repeat or rate limit, its result kept a while)
  goes through the step pipeline the worker owns (phase1.engine.pipeline): one Lua call a job;
- other jobs keep RQ's steps, folded: the start in one pipeline, the success (with what the
  job staged, `after_success`, and the next job's TAKE) in one MULTI/EXEC;
- a waiting job is taken with its hash in one call (TAKE, into RQ's intermediate list for
  every queue); an empty queue falls back to RQ's blocking dequeue. Jobs taken ahead go back
  to the front of their queue when the worker stops or is suspended;
- the worker's heartbeat and the `rq suspend` check run at most every HOUSEKEEPING_S; its
  `state` is written only when it changes; per-job log lines go out at DEBUG.

Failures, retries, repeats and rate-limited jobs take RQ's own paths. This class holds every
override of RQ's worker; on an RQ other than the one tested (phase1.engine.rqcompat) each
defers to RQ's SimpleWorker. `queues_to_take` is the hook to pause queues.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from phase1.engine import dequeue, paused, rqcompat, success_writes
from phase1.engine.pipeline import StepPipeline
from phase1.engine.rqspeedups import AlarmDeathPenalty, JobLinesAtDebug, speed_up_rq

HOUSEKEEPING_S = 1.0
PUBSUB_POLL_S = 1.0

log = logging.getLogger(__name__)


class FastWorker(SimpleWorker):
    """RQ's SimpleWorker with its per-job Redis bookkeeping in fewer round trips."""

    death_penalty_class: type[UnixSignalDeathPenalty] = AlarmDeathPenalty

    # get_heartbeat_ttl(job) = t + max(extra, t * mult) + add, where t = job.timeout or
    # `default`; `forever` for a negative timeout. As data, so STEP's Lua applies it to a
    # job it takes: (default, mult, extra, add, forever). RQ's SimpleWorker: t + 60.
    heartbeat_ttl_rule: tuple[int, int, int, int, int] = (
        DEFAULT_WORKER_TTL,
        0,
        0,
        60,
        DEFAULT_WORKER_TTL,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # On an RQ it was not tested with, RQ's SimpleWorker as it is: every override below
        # defers to RQ, no Lua of the engine runs and RQ's modules are left unpatched. One
        # flag checked at the few entry points RQ calls keeps one class for both (subclasses
        # such as phase1's stay what they are either way).
        self.fast = rqcompat.supported()
        self._state_written: str | None = None
        if not self.fast:
            rqcompat.warn_untested(log)
            super().__init__(*args, **kwargs)
            self.death_penalty_class = UnixSignalDeathPenalty  # RQ's (AlarmDeathPenalty: ours)
            return
        speed_up_rq()
        super().__init__(*args, **kwargs)
        if self.queue_class is Queue:  # a queue class of the caller's own is kept
            self.queue_class = dequeue.FastQueue
        self.log = JobLinesAtDebug(self.log)  # type: ignore[assignment]
        self.pipeline = StepPipeline(self)
        self._housekept_at = float("-inf")
        self._suspension_checked_at = float("-inf")
        self._prepare_pipeline: Pipeline | None = None
        self._ended_heartbeat: tuple[str, str] | None = None  # (job id, timestamp)
        self._beat_deferred_for: tuple[str, str, bool] | None = None  # dequeue.popped
        # For prepare_job_execution: the job the lane started (its writes are done).
        self._already_started: tuple[str, Execution] | None = None
        # A subclass with a heartbeat TTL of its own (not a rule) keeps RQ's start path.
        self._lane_on = type(self).get_heartbeat_ttl is FastWorker.get_heartbeat_ttl

    def note_state(self, state: str | None) -> None:
        """The pipeline wrote the worker's state (None: it is not known any more)."""
        self._state_written = state
        if state is not None:
            rqcompat.set_state_field(self, state)

    def note_beat(self) -> None:
        """The pipeline wrote the worker's heartbeat."""
        self._housekept_at = time.monotonic()

    def subscribe(self) -> None:
        """RQ's, its command listener polling every PUBSUB_POLL_S (see rqcompat.subscribe)."""
        if not self.fast:
            super().subscribe()  # type: ignore[no-untyped-call]
            return
        rqcompat.subscribe(self, PUBSUB_POLL_S)

    def queues_to_take(self) -> list[Queue]:
        """The queues to take jobs from now, in the order to try them: RQ's order of the
        worker's queues (its dequeue strategy). Every take of this worker asks it (the lane's
        STEP, TAKE, RQ's blocking dequeue); none: the worker takes nothing (the jobs it holds
        already still run) and looks again at least once a second. Override to pause queues;
        it is called once a job or more, so keep it cheap (no Redis round trip each time)."""
        return rqcompat.ordered_queues(self)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        default, mult, extra, add, forever = self.heartbeat_ttl_rule
        t = job.timeout or default
        if t < 0:
            return forever
        return int(t + max(extra, t * mult) + add)

    # -- the worker's own heartbeat, state and suspension check ---------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None or timeout is not None or not self.fast:
            super().heartbeat(timeout, pipeline=pipeline)
            self._housekept_at = time.monotonic()
            return
        if time.monotonic() - self._housekept_at < HOUSEKEEPING_S:
            return
        if dequeue.popped is not None and dequeue.popped is not self._beat_deferred_for:
            # RQ's dequeue beats once more after popping a job; the pipeline that marks that
            # job started beats a moment later: one round trip fewer for a waiting worker.
            # (Once per pop: a popped job that never starts delays one beat, no more.)
            self._beat_deferred_for = dequeue.popped
            return
        with self.connection.pipeline() as pipe:
            super().heartbeat(pipeline=pipe)
            pipe.execute()
        self._housekept_at = time.monotonic()

    def check_for_suspension(self, burst: bool) -> None:
        if not self.fast:
            super().check_for_suspension(burst)
            return
        if time.monotonic() - self._suspension_checked_at < HOUSEKEEPING_S:
            return
        if self.pipeline.holds_behind() and is_suspended(self.connection, self):
            self.hand_back_taken()
        super().check_for_suspension(burst)
        self._suspension_checked_at = time.monotonic()

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if self.fast and pipeline is None and state == self._state_written:
            rqcompat.set_state_field(self, state)
            return
        super().set_state(state, pipeline=pipeline)
        self._state_written = state

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        self._state_written = None  # the birth record wrote the state its own way

    # -- preparing a job: one pipeline instead of two -------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """SimpleWorker's execute_job: a plain job through the step pipeline, others with
        prepare_execution's writes left in a pipeline that prepare_job_execution sends."""
        if not self.fast:
            super().execute_job(job, queue)
            return
        lane = self.pipeline
        taken = lane.held.pop(job)  # run now: no longer to hand back
        if dequeue.popped is not None and dequeue.popped[1] == job.id:
            dequeue.popped = None
        if lane.holds_behind() and not lane.quick(job):
            # Held for a quick job, they would wait for this one: back to their queues, for
            # any worker (after the answers on their way, which may bring more).
            lane.return_held()
        plain = self._lane_on and lane.plain(job)
        if taken is not None and taken.execution is not None:
            execution = taken.execution  # the pipeline started it
            if not plain:
                lane.sender.settle()
        elif plain:
            execution = lane.start(job)
        else:
            lane.sender.settle()
            self._execute_in_rq_steps(job, queue)
            return
        self.executions[execution.id] = execution
        stage = success_writes.current = success_writes.Stage(self.connection)
        try:
            if plain:
                self.pipeline.run(job, queue, execution)
            else:  # started by the lane, but not plain: RQ's steps from here
                self._already_started = (job.id, execution)
                self.perform_job(job, queue, execution)
        finally:
            self._already_started = None
            self._ended_heartbeat = None
            success_writes.current = None
            stage.close()
        if not self.pipeline.held.started_next():
            self.set_state(WorkerStatus.IDLE)

    def _execute_in_rq_steps(self, job: Job, queue: Queue) -> None:
        pipeline = self.connection.pipeline()
        stage = success_writes.current = success_writes.Stage(self.connection)
        try:
            execution = Execution.create(
                job, self.get_heartbeat_ttl(job), pipeline=pipeline, worker_name=self.name
            )
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self._prepare_pipeline = pipeline
            self.perform_job(job, queue, execution)
        finally:
            self._prepare_pipeline = None
            self._ended_heartbeat = None
            pipeline.reset()
            success_writes.current = None
            stage.close()  # what a path other than plain success left (retry, repeat)
        if not self.pipeline.held.started_next():
            self.set_state(WorkerStatus.IDLE)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if not self.fast:
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        started, self._already_started = self._already_started, None
        if started is not None and started[0] == job.id:  # the lane wrote it all already
            self.pipeline.mark_started(job, started[1])
            return
        pipeline = self._prepare_pipeline
        if pipeline is None:  # not called from execute_job: RQ's own
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        self._prepare_pipeline = None
        # What RQ's prepare_job_execution writes, in the pipeline that holds the execution.
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        super().heartbeat(heartbeat_ttl, pipeline=pipeline)
        job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
        job.prepare_for_execution(self.name, pipeline=pipeline)
        pipeline.persist(job.key)
        # Always: TAKE moves ids to the intermediate list of every queue (a no-op otherwise).
        queue_key = Queue.redis_queue_namespace_prefix + job.origin
        pipeline.lrem(IntermediateQueue.get_intermediate_queue_key(queue_key), 1, job.id)
        pipeline.execute()
        self._housekept_at = time.monotonic()
        self.procline(  # type: ignore[no-untyped-call]
            f"Processing {job.func_name} from {job.origin} since {time.time()}"
        )

    # -- finishing a job: the end-of-run heartbeat and `idle` ride in RQ's pipeline ---------

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        if not self.fast or job.get_status(refresh=False) == JobStatus.FAILED:  # RQ's own
            if (
                success_writes.current is not None
            ):  # before the failure is handled, as they happened
                success_writes.send(self.connection, success_writes.current.take())
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()
        job.last_heartbeat = now()
        self._ended_heartbeat = (job.id, utcformat(job.last_heartbeat))

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any,
        execution: Execution,
    ) -> None:
        """RQ's success bookkeeping in one MULTI/EXEC (with what the job staged); RQ's own
        for repeating and rate-limited jobs."""
        if not self.fast or job.repeats_left or job.has_rate_limit:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        stage = success_writes.current
        staged = stage.take() if stage is not None else []
        assert job.started_at is not None and job.ended_at is not None
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.scard(job.dependents_key)
                self.increment_successful_job_count(pipeline=pipe)
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                if result_ttl != 0:
                    rqcompat.write_success(
                        job,
                        result_ttl,
                        pipeline=pipe,
                        worker_name=self.name,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=job.ended_at,
                    )
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                rqcompat.set_status_field(job, JobStatus.FINISHED)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                for write, _ in staged:
                    write(pipe)
                take = self.pipeline.take_in(pipe)
                sent_at = time.monotonic()
                results = pipe.execute(raise_on_error=False)
            errors = [r for r in (results[:-1] if take else results) if isinstance(r, Exception)]
            if errors:
                raise errors[0]
        except BaseException:
            if stage is not None:  # not sent: the failure path sends them
                stage.restage(staged)
            raise
        if take:
            self.pipeline.keep_taken(results[-1], sent_at)
        for _, then in staged:
            if then is not None:
                then()
        if results[0]:  # dependents: RQ's own (WATCHed) move, now that this one is finished
            queue.enqueue_ready_jobs_by_queue(queue.move_dependents_to_ready(job))
        self.log.debug(
            "Successfully completed job %s in %ss on worker %s",
            job.id,
            job.ended_at - job.started_at,
            self.name,
        )

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # The taken job stays held until execute_job starts it: a stop signal that
        # comes before the caller holds it (and raises StopRequested) must still hand it back.
        if not self.fast:
            return self._dequeue_from_queues_to_take(timeout, max_idle_time)
        self.pipeline.give_back_stale()  # if it waited too long (a slow maintenance pass, a stall)
        held = self.pipeline.held.next
        if held is None:
            return self._dequeue_from_queues_to_take(timeout, max_idle_time)
        self.heartbeat()  # at most once a second (RQ's loop has just checked its maintenance)
        job, queue = held.job, held.queue
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        return job, queue

    def _dequeue_from_queues_to_take(
        self, timeout: int | None, max_idle_time: int | None
    ) -> tuple[Job, Queue] | None:
        return paused.dequeue(self, super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    def hand_back_taken(self) -> None:
        """A job taken for next but not started goes back to the front of its queue; so does
        one a stop signal caught between its pop and the worker holding it. (RQ's own
        worker, on an untested RQ, holds none.)"""
        if not self.fast:
            return
        with contextlib.suppress(RedisError):
            self.pipeline.sender.settle()  # what the last STEPs took is known after them
        self.pipeline.held.return_all()
        popped, dequeue.popped = dequeue.popped, None
        # Only for a stop: a dequeue that failed otherwise (a job RQ cannot read) is RQ's.
        if popped is not None and rqcompat.stop_requested(self):
            queue_key, job_id, intermediate = popped
            self.pipeline.held.hand_back(queue_key, job_id, from_intermediate=intermediate)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        if not self.fast:
            return bool(super().work(*args, **kwargs))
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.hand_back_taken()
            self.pipeline.sender.drop()  # its connection goes back to the pool, closed

    def cleanup_execution(
        self, job: Job, pipeline: Pipeline, execution: Execution | None = None
    ) -> None:
        if not self.fast:
            super().cleanup_execution(job, pipeline, execution)
            return
        ended = self._ended_heartbeat  # kept: RQ retries its pipeline on WatchError
        if ended is not None and ended[0] == job.id and self._job_hash_kept(job):
            pipeline.hset(job.key, "last_heartbeat", ended[1])
        super().cleanup_execution(job, pipeline, execution)
        super().set_state(WorkerStatus.IDLE, pipeline=pipeline)
        self._state_written = WorkerStatus.IDLE

    def _job_hash_kept(self, job: Job) -> bool:
        """Whether the job's hash outlives this pipeline (result_ttl 0 deletes it: writing
        to it then would bring back a key without expiry)."""
        if job.get_status(refresh=False) != JobStatus.FINISHED:
            return True
        return job.get_result_ttl(self.default_result_ttl) != 0
