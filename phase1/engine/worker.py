"""An in-process RQ worker that writes RQ's own data model in fewer Redis round trips.

`FastWorker` is RQ's `SimpleWorker` (no fork per job); every key, field, registry entry and
status it writes is the one RQ's own worker writes, so `rq info`, rq-dashboard and a plain
`rq worker` beside it stay correct. What changes is only *when* and *in how many round
trips* they go out, and how much Python it takes:

- a plain job (no success callback, webhook, repeat or rate limit, its result kept a while)
  takes the lane (bookkeeping.py): its success, the start of the next job and the take of the
  one after are one Lua call (STEP), sent without waiting while the next job runs. A busy
  worker spends one round trip a job and saves no RQ object per job;
- other jobs keep RQ's steps, folded: the execution record and the job's `started` state go
  out in one pipeline, the success bookkeeping (with the next job's take) in one MULTI/EXEC
  instead of RQ's WATCH, SMEMBERS and MULTI/EXEC (the dependents count is read inside it,
  and only a job with dependents takes RQ's own `move_dependents_to_ready`);
- writes a job asks to send once it has succeeded (`after_success`: its last events and its
  last heartbeat) ride in that same call;
- taking a job off a queue and reading its hash is one Lua call (TAKE: RQ's LMOVE to the
  queue's intermediate list, for every queue — RQ does so only for a worker of one queue and
  LPOPs otherwise, so a worker dying right after the pop lost the job — then HGETALL) when a
  job is waiting; an empty queue falls back to RQ's own blocking dequeue. A job taken ahead
  sits in the intermediate list (or, started by STEP, in RQ's started registry) until it
  runs; a worker told to stop, or suspended, puts it back as it was, at the front of its
  queue; one that dies leaves it where the maintenance pass puts it back on its queue
  (phase1.engine.leftbehind) or the orphan sweep finds it;
- the worker's own heartbeat and the `rq suspend` check run at most every HOUSEKEEPING_S
  seconds, not two or three times a job: a worker key lives `worker_ttl + 60` seconds, so a
  beat a second is plenty; an `rq suspend` takes effect within that second. The worker's
  `state` is written only when it changes;
- per-job log lines go out at DEBUG (one INFO line at start and stop stays).

Failures, retries, repeats and rate-limited jobs take RQ's own paths unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.utils import as_text, now, utcformat
from rq.worker import WorkerStatus

from phase1.engine import bookkeeping, dequeue, success_writes
from phase1.engine.rqspeedups import AlarmDeathPenalty, JobLinesAtDebug, speed_up_rq

HOUSEKEEPING_S = 1.0

log = logging.getLogger(__name__)


class FastWorker(bookkeeping.LaneWorker):
    """RQ's SimpleWorker with its per-job Redis bookkeeping in fewer round trips."""

    death_penalty_class = AlarmDeathPenalty

    # get_heartbeat_ttl(job) = t + max(extra, t * mult) + add, where t = job.timeout or
    # `default`; `forever` for a negative timeout. As data, so the lane's Lua applies it to a
    # job it takes: (default, mult, extra, add, forever). RQ's SimpleWorker: t + 60.
    heartbeat_ttl_rule: tuple[int, int, int, int, int] = (
        DEFAULT_WORKER_TTL,
        0,
        0,
        60,
        DEFAULT_WORKER_TTL,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        speed_up_rq()
        super().__init__(*args, **kwargs)
        if self.queue_class is Queue:  # a queue class of the caller's own is kept
            self.queue_class = dequeue.FastQueue
        self.log = JobLinesAtDebug(self.log)  # type: ignore[assignment]
        self._suspension_checked_at = float("-inf")
        self._prepare_pipeline: Pipeline | None = None
        self._ended_heartbeat: tuple[str, str] | None = None  # (job id, timestamp)
        self._beat_deferred_for: tuple[str, str, bool] | None = None  # dequeue.popped
        # Built once, not a job: TAKE's arguments for an order of the queues.
        self._take_call: tuple[tuple[str, ...], list[Any]] = ((), [])
        # For prepare_job_execution: the job the lane started (its writes are done).
        self._already_started: tuple[str, Execution] | None = None
        # A subclass with a heartbeat TTL of its own (not a rule) keeps RQ's start path.
        self._lane_on = type(self).get_heartbeat_ttl is FastWorker.get_heartbeat_ttl

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        default, mult, extra, add, forever = self.heartbeat_ttl_rule
        t = job.timeout or default
        if t < 0:
            return forever
        return int(t + max(extra, t * mult) + add)

    def queues_to_take(self) -> list[Queue]:
        """The queues to take jobs from now, in order (all of them by default). Every take
        goes through here; with none, the worker takes nothing and asks again within a
        second (TAKE_RECHECK_S)."""
        return self._ordered_queues

    # -- the worker's own heartbeat, state and suspension check ---------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None or timeout is not None:
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
        if time.monotonic() - self._suspension_checked_at < HOUSEKEEPING_S:
            return
        if self._holds_behind() and is_suspended(self.connection, self):
            self.hand_back_taken()
        super().check_for_suspension(burst)
        self._suspension_checked_at = time.monotonic()

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline=pipeline)
        self._state_written = state

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        self._state_written = None  # the birth record wrote the state its own way

    # -- preparing a job: one pipeline instead of two -------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """SimpleWorker's execute_job: a plain job through the lane (bookkeeping.py), others with
        prepare_execution's writes left in a pipeline that prepare_job_execution sends."""
        taken = None
        if self._prefetched is not None and self._prefetched[0].id == job.id:
            taken = self._prefetched_taken  # started now: no longer to hand back
            self._prefetched, self._prefetched_taken = None, None
            if self._peeked:  # the one after it is next now
                peeked = self._peeked.popleft()
                self._prefetched, self._prefetched_taken = (peeked.job, peeked.queue), peeked
        if dequeue.popped is not None and dequeue.popped[1] == job.id:
            dequeue.popped = None
        if self._holds_behind() and not self._quick(job):
            # Held for a quick job, they would wait for this one: back to their queues, for
            # any worker (after the answers on their way, which may bring more).
            self._settle()
            self._return_held()
        plain = self._lane_on and self._plain(job)
        if taken is not None and taken.execution is not None:
            execution = taken.execution  # the lane started it
            if not plain:
                self._settle()
        elif plain:
            execution = self._lane_start(job)
        else:
            self._settle()
            self._execute_in_rq_steps(job, queue)
            return
        self.executions[execution.id] = execution
        stage = success_writes.current = success_writes.Stage(self.connection)
        try:
            if plain:
                self._perform_plain(job, queue, execution)
            else:  # started by the lane, but not plain: RQ's steps from here
                self._already_started = (job.id, execution)
                self.perform_job(job, queue, execution)
        finally:
            self._already_started = None
            self._ended_heartbeat = None
            success_writes.current = None
            stage.close()
        if not self._started_next():
            self.set_state(WorkerStatus.IDLE)

    def _holds_behind(self) -> bool:
        """Whether jobs the lane took wait in this worker's hands (or are on their way)."""
        return bool(self._peeked or self._pending or self._following() is not None)

    def _started_next(self) -> bool:
        """Whether the lane has started the job to run next (the worker stays busy)."""
        taken = self._prefetched_taken
        return self._prefetched is not None and taken is not None and taken.execution is not None

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
        if not self._started_next():
            self.set_state(WorkerStatus.IDLE)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        started, self._already_started = self._already_started, None
        if started is not None and started[0] == job.id:  # the lane wrote it all already
            self._mark_started(job, started[1])
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
        if job.get_status(refresh=False) == JobStatus.FAILED:  # the failure path: RQ's own
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
        if job.repeats_left or job.has_rate_limit:
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
                    job._handle_success(
                        result_ttl,
                        pipeline=pipe,
                        worker_name=self.name,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=job.ended_at,
                    )
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                job._status = JobStatus.FINISHED
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                for write, _ in staged:
                    write(pipe)
                take = self._take_next_in(pipe)
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
            self._keep_taken(results[-1], sent_at)
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

    # -- taking the next job in the same transaction ------------------------------------------

    def _take_next_in(self, pipe: Pipeline) -> bool:
        """Add TAKE for the next job to the success transaction, unless this worker is about
        to stop (or Redis lacks LMOVE)."""
        if not self._take_next() or self._prefetched is not None or self._peeked:
            return False
        queues = self.queues_to_take()
        if not queues:
            return False
        order = tuple(q.key for q in queues)
        if self._take_call[0] != order:  # RQ may reorder its queues (other dequeue strategies)
            keys, args = dequeue.take_args(list(queues), self.job_class)
            self._take_call = (order, [len(keys), *keys, *args])
        pipe.evalsha(dequeue.TAKE_SHA, *self._take_call[1])
        return True

    def _keep_taken(self, answer: Any, sent_at: float) -> None:
        if isinstance(answer, Exception):  # NOSCRIPT after a Redis restart: load it for next time
            self.log.debug("Worker %s: taking the next job failed: %s", self.name, answer)
            with contextlib.suppress(RedisError):
                self.connection.script_load(dequeue.TAKE)
            return
        if not answer:
            return
        try:
            self._prefetched, self._prefetched_taken = self._restore(answer), None
            self._take_sent_at = sent_at
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            self._hand_back(as_text(answer[0]), as_text(answer[1]))
            self._no_take_once = True

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # The taken job stays in _prefetched until execute_job starts it: a stop signal that
        # comes before the caller holds it (and raises StopRequested) must still hand it back.
        self._give_back_stale()  # if it waited too long (a slow maintenance pass, a stall)
        taken = self._prefetched
        if taken is None:
            return dequeue.wait_and_take(self, timeout, max_idle_time)
        self.heartbeat()  # at most once a second (RQ's loop has just checked its maintenance)
        job, queue = taken
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        return taken

    def hand_back_taken(self) -> None:
        """A job taken for next but not started goes back to the front of its queue; so does
        one a stop signal caught between its pop and the worker holding it."""
        with contextlib.suppress(RedisError):
            self._settle()  # what the last STEPs took is known after their answers
        self._return_held()
        popped, dequeue.popped = dequeue.popped, None
        # Only for a stop: a dequeue that failed otherwise (a job RQ cannot read) is RQ's.
        if popped is not None and self._stop_requested:
            queue_key, job_id, intermediate = popped
            self._hand_back(queue_key, job_id, from_intermediate=intermediate)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.hand_back_taken()
            self._drop_sender()  # the lane's connection goes back to the pool, closed

    def cleanup_execution(
        self, job: Job, pipeline: Pipeline, execution: Execution | None = None
    ) -> None:
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
