"""An in-process RQ worker that writes RQ's own data model in fewer Redis round trips.

`FastWorker` is RQ's `SimpleWorker` (no fork per job) with the bookkeeping of the success
path folded together; every key, field, registry entry and status it writes is the one RQ's
own worker writes, so `rq info`, rq-dashboard and a plain `rq worker` beside it stay correct.
What changes is only *when* and *in how many round trips* they go out:

- the execution record (prepare_execution) and the job's `started` state
  (prepare_job_execution) go out in one pipeline instead of two;
- the worker's own heartbeat (its hash's `last_heartbeat` and expiries) and the `rq suspend`
  check run at most every HOUSEKEEPING_S seconds, not two or three times a job: a worker key
  lives `worker_ttl + 60` seconds (8 minutes by default), so a beat a second is plenty; an
  `rq suspend` takes effect within that second. The beat RQ's dequeue sends right after
  popping a job is left to the pipeline that marks the job started;
- the worker's `state` is written only when it changes (RQ writes `idle` twice a job), and the
  `idle` after a job rides in the job's own success (or failure) pipeline;
- the job's `last_heartbeat` at the end of a successful run rides in the success pipeline
  instead of a round trip of its own;
- taking a job off a queue and reading its hash is one Lua call (TAKE: RQ's LMOVE to the
  queue's intermediate list, for every queue — RQ does so only for a worker of one queue and
  LPOPs otherwise, so a worker dying right after the pop lost the job — then HGETALL) when a
  job is waiting; an empty queue falls back to RQ's own blocking dequeue;
- the success bookkeeping is one MULTI/EXEC instead of RQ's WATCH, SMEMBERS and MULTI/EXEC:
  the transaction reads the job's dependents count (SCARD) atomically with the `finished`
  status, and only a job that has dependents then takes RQ's own `move_dependents_to_ready`
  (a dependent enqueued later sees the parent finished, as in RQ);
- writes a job asks to send once it has succeeded (`after_success`: its last events and its
  last heartbeat) ride in that same transaction;
- so does TAKE for the next job: a busy worker spends two round trips a job (started, then
  success + next). A job taken that way sits in the intermediate list until the worker marks
  it started; a worker told to stop, or suspended, puts it back at the front of its queue,
  and one that dies leaves it where RQ's maintenance finds it;
- per-job log lines go out at DEBUG (one INFO line at start and stop stays);
- a plain job (no success callback, webhook, repeat or rate limit, a result kept for a while)
  takes the lane (phase1.lane): its success and the start of the next job are one Lua call,
  so a busy worker spends one round trip a job, and no RQ object is saved per job.

Failures, retries, repeats and rate-limited jobs take RQ's own paths unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.serializers
import rq.utils
import rq.worker.base
from redis.client import Pipeline
from redis.exceptions import NoScriptError, RedisError
from rq import SimpleWorker
from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException
from rq.utils import as_text, now, utcformat
from rq.worker import WorkerStatus

from phase1 import lane, staging, taking

HOUSEKEEPING_S = 1.0

log = logging.getLogger(__name__)

_rq_resolve_serializer = rq.serializers.resolve_serializer
_resolved: dict[Any, Any] = {}


def resolve_serializer(serializer: Any = None) -> Any:
    """RQ's resolve_serializer, remembered per serializer. RQ calls it for every Job, Queue,
    registry and Result it builds (about eight times a job), and its check against the
    runtime `Serializer` protocol costs tens of µs each in Python 3.11 (8% of a no-op job)."""
    try:
        return _resolved[serializer]
    except KeyError:
        pass
    except TypeError:  # unhashable: not remembered
        return _rq_resolve_serializer(serializer)
    resolved = _rq_resolve_serializer(serializer)  # a bad one raises, and is not remembered
    if len(_resolved) < 64:
        _resolved[serializer] = resolved
    return resolved


_rq_str_to_date = rq.utils.str_to_date


def str_to_date(date_str: bytes | str) -> datetime:
    """RQ's str_to_date, for RQ's own timestamp format (2026-11-28T18:32:10.410070Z) in C:
    Job.restore reads two or three a job, and strptime costs about 7 µs each."""
    text = date_str.decode() if isinstance(date_str, bytes) else date_str
    if len(text) == 27 and text[10] == "T" and text[26] == "Z":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)  # aware, UTC: as RQ's
    return _rq_str_to_date(date_str)


def _speed_up_rq() -> None:
    """Have RQ's modules use resolve_serializer and str_to_date above (same answers, same
    errors)."""
    for module in (rq.job, rq.queue, rq.registry, rq.results, rq.worker.base):
        if getattr(module, "resolve_serializer", None) is _rq_resolve_serializer:
            module.resolve_serializer = resolve_serializer  # type: ignore[attr-defined]
    if getattr(rq.job, "str_to_date", None) is _rq_str_to_date:
        rq.job.str_to_date = str_to_date  # type: ignore[attr-defined]


# RQ's per-job INFO messages (format strings), logged at DEBUG here.
_PER_JOB_MESSAGES = frozenset(
    {
        "Worker %s: %s: %s",
        "Worker %s: %s: %s (%s)",
        "Successfully completed job %s in %ss on worker %s",
        "Successfully completed %s job in %ss on worker %s",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result is kept for %s seconds",
    }
)


class _JobLinesAtDebug:
    """RQ's worker logger, with the per-job INFO lines demoted to DEBUG."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg in _PER_JOB_MESSAGES:
            self._log.debug(msg, *args, **kwargs)
        else:
            self._log.info(msg, *args, **kwargs)


class FastWorker(SimpleWorker):
    """RQ's SimpleWorker with its per-job Redis bookkeeping in fewer round trips."""

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
        _speed_up_rq()
        super().__init__(*args, **kwargs)
        if self.queue_class is Queue:  # a queue class of the caller's own is kept
            self.queue_class = taking.FastQueue
        self.log = _JobLinesAtDebug(self.log)  # type: ignore[assignment]
        self._state_written: str | None = None
        self._housekept_at = float("-inf")
        self._suspension_checked_at = float("-inf")
        self._prepare_pipeline: Pipeline | None = None
        self._ended_heartbeat: tuple[str, str] | None = None  # (job id, timestamp)
        self._beat_deferred_for: tuple[str, str, bool] | None = None  # taking.popped
        self._prefetched: tuple[Job, Queue] | None = None  # taken in the last success
        self._no_take_once = False
        # Built once, not a job: the worker's queues by key, and TAKE's arguments for an order.
        self._queues_by_key = {q.key: q for q in self.queues}
        self._take_call: tuple[tuple[str, ...], list[Any]] = ((), [])
        self._step_take: tuple[tuple[str, ...], list[Any]] = ((), [])
        self._next: lane.Started | None = None  # the job a lane step started for next
        # For prepare_job_execution: the job the lane started (its writes are done).
        self._already_started: tuple[str, Execution] | None = None
        # A subclass with a heartbeat TTL of its own (not a rule) keeps RQ's start path.
        self._lane_on = type(self).get_heartbeat_ttl is FastWorker.get_heartbeat_ttl
        self._worker_executions = WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.name)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        default, mult, extra, add, forever = self.heartbeat_ttl_rule
        t = job.timeout or default
        if t < 0:
            return forever
        return int(t + max(extra, t * mult) + add)

    # -- the worker's own heartbeat, state and suspension check ---------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None or timeout is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            self._housekept_at = time.monotonic()
            return
        if time.monotonic() - self._housekept_at < HOUSEKEEPING_S:
            return
        if taking.popped is not None and taking.popped is not self._beat_deferred_for:
            # RQ's dequeue beats once more after popping a job; the pipeline that marks that
            # job started beats a moment later: one round trip fewer for a waiting worker.
            # (Once per pop: a popped job that never starts delays one beat, no more.)
            self._beat_deferred_for = taking.popped
            return
        with self.connection.pipeline() as pipe:
            super().heartbeat(pipeline=pipe)
            pipe.execute()
        self._housekept_at = time.monotonic()

    def check_for_suspension(self, burst: bool) -> None:
        if time.monotonic() - self._suspension_checked_at < HOUSEKEEPING_S:
            return
        if self._prefetched is not None and is_suspended(self.connection, self):
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
        """SimpleWorker's execute_job: a plain job through the lane (phase1.lane), others with
        prepare_execution's writes left in a pipeline that prepare_job_execution sends."""
        if self._prefetched is not None and self._prefetched[0].id == job.id:
            self._prefetched = None  # started now: no longer to hand back
        if taking.popped is not None and taking.popped[1] == job.id:
            taking.popped = None
        started, self._next = self._next, None
        plain = self._plain(job)
        if started is not None and started.job_id == job.id:
            execution = started.execution
        elif plain:
            execution = self._lane_start(job)
        else:
            self._execute_in_rq_steps(job, queue)
            return
        self.executions[execution.id] = execution
        stage = staging.current = staging.Stage(self.connection)
        try:
            if plain:
                self._perform_plain(job, queue, execution)
            else:  # started for next by the lane, but not plain: RQ's steps from here
                self._already_started = (job.id, execution)
                self.perform_job(job, queue, execution)
        finally:
            self._already_started = None
            self._ended_heartbeat = None
            staging.current = None
            stage.close()
        if self._next is None:  # else busy with the job started for next
            self.set_state(WorkerStatus.IDLE)

    def _execute_in_rq_steps(self, job: Job, queue: Queue) -> None:
        pipeline = self.connection.pipeline()
        stage = staging.current = staging.Stage(self.connection)
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
            staging.current = None
            stage.close()  # what a path other than plain success left (retry, repeat)
        if self._next is None:
            self.set_state(WorkerStatus.IDLE)

    # -- the lane: a plain job's start, success and the next job's start ------------------

    def _plain(self, job: Job) -> bool:
        """Whether the job's success is the lane's to record (RQ's steps otherwise)."""
        return (
            self._lane_on
            and not job.repeats_left
            and not job._success_callback_name
            and not job.webhooks
            and not job.has_rate_limit
            and job.get_result_ttl(self.default_result_ttl) > 0
        )

    def _lane_start(self, job: Job) -> Execution:
        """Start a job the worker holds (one STEP)."""
        moment = time.time()
        execution = self._execution(job.id, uuid4().hex, moment)
        intermediate = IntermediateQueue.get_intermediate_queue_key(
            Queue.redis_queue_namespace_prefix + job.origin
        )
        args = self._step_header(moment)
        args += ["0", "given", job.id, job.key, job.origin, self.get_heartbeat_ttl(job)]
        args += [intermediate, execution.id]
        self._step(args, [])
        self._state_written = self._state = WorkerStatus.BUSY
        return execution

    def _execution(self, job_id: str, execution_id: str, moment: float) -> Execution:
        execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = datetime.fromtimestamp(moment, UTC)
        return execution

    def _step_header(self, moment: float) -> list[Any]:
        stamp = utcformat(datetime.fromtimestamp(moment, UTC))
        self._housekept_at = time.monotonic()  # every start beats for the worker too
        return lane.header(moment, stamp, self.key, self.name, self._worker_executions)

    def _step(self, args: list[Any], staged: list[staging.Staged]) -> Any:
        """Run STEP (with the job's staged writes after it, in one MULTI/EXEC)."""
        if not staged:
            try:
                return self.connection.evalsha(lane.STEP_SHA, 0, *args)
            except NoScriptError:  # a Redis restarted or flushed: load it (nothing was written)
                self.connection.script_load(lane.STEP)
                return self.connection.evalsha(lane.STEP_SHA, 0, *args)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.evalsha(lane.STEP_SHA, 0, *args)
            for write, _ in staged:
                write(pipe)
            results = pipe.execute(raise_on_error=False)
        errors = [r for r in results[1:] if isinstance(r, Exception)]
        if isinstance(results[0], NoScriptError):  # the staged writes went: STEP alone
            self.connection.script_load(lane.STEP)
            results[0] = self.connection.evalsha(lane.STEP_SHA, 0, *args)
        elif isinstance(results[0], Exception):
            raise results[0]
        if errors:
            raise errors[0]
        return results[0]

    def _perform_plain(self, job: Job, queue: Queue, execution: Execution) -> None:
        """RQ's perform_job for a job already started, with the success in one STEP."""
        self._mark_started(job, execution)
        try:
            job.started_at = now()
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                value = job.perform()
            if isinstance(value, Retry):
                self._finalize_success(job, queue, execution, value)
                return
            job.ended_at = job.last_heartbeat = now()
            job._result = value
            job._status = JobStatus.FINISHED
            self._finish_plain(job, queue, execution, value)
        except:  # noqa: E722 -- as RQ's perform_job: anything raised fails the job
            self._finalize_failure(job, queue, execution, sys.exc_info())

    def _mark_started(self, job: Job, execution: Execution) -> None:
        """What RQ's prepare_for_execution sets on the job, the lane having written it."""
        job.worker_name = self.name
        job.last_heartbeat = job.started_at = execution.created_at
        job._status = JobStatus.STARTED

    def _finish_plain(self, job: Job, queue: Queue, execution: Execution, value: Any) -> None:
        stage = staging.current
        staged = stage.take() if stage is not None else []
        assert job.started_at is not None and job.ended_at is not None
        ended = utcformat(job.ended_at)
        moment = time.time()
        args = self._step_header(moment)
        args += ["1", job.id, job.key, job.origin, execution.id]
        args += [job.get_result_ttl(self.default_result_ttl), ended]
        args += [repr(execution.created_at.timestamp()), repr(job.ended_at.timestamp())]
        args += [lane.encoded(value, self.serializer)]
        args += [repr((job.ended_at - job.started_at).total_seconds())]
        args += [job.dependents_key, job.dependencies_key]
        next_execution = uuid4().hex
        args += self._step_take_args(next_execution) if self._take_next() else ["none"]
        try:
            answer = self._step(args, staged)
        except BaseException:
            if stage is not None:  # not sent: the failure path sends them
                stage.restage(staged)
            raise
        self.executions.pop(execution.id, None)
        self._state_written = self._state = WorkerStatus.IDLE
        if len(answer) > 1:
            self._keep_started(answer, next_execution, moment)
        for _, then in staged:
            if then is not None:
                then()
        if answer[0]:  # dependents: RQ's own (WATCHed) move, now that this one is finished
            queue.enqueue_ready_jobs_by_queue(queue.move_dependents_to_ready(job))
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("Successfully completed job %s on worker %s", job.id, self.name)

    def _take_next(self) -> bool:
        if self._no_take_once:
            self._no_take_once = False
            return False
        return not (
            self._stop_requested
            or self._prefetched is not None
            or not taking.can_take(self.connection)
        )

    def _step_take_args(self, execution_id: str) -> list[Any]:
        order = tuple(q.key for q in self._ordered_queues)
        if self._step_take[0] != order:  # RQ may reorder its queues (other dequeue strategies)
            keys, args = taking.take_args(list(self._ordered_queues), self.job_class)
            pairs = [x for pair in zip(keys, args[1:], strict=True) for x in pair]
            rule = list(self.heartbeat_ttl_rule)
            self._step_take = (order, [args[0], *rule, len(keys), *pairs])
        return ["take", execution_id, *self._step_take[1]]

    def _keep_started(self, answer: Any, execution_id: str, moment: float) -> None:
        """Hold the job STEP took and started for next, as the next dequeue's answer."""
        _, queue_key, job_id, flat, ttl, pttl = answer
        queue_key, job_id = as_text(queue_key), as_text(job_id)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        started = lane.Started(
            job_id=job_id,
            origin=as_text(fields.get(b"origin", b"")),
            execution=self._execution(job_id, execution_id, moment),
            queue_key=queue_key,
            ttl=int(ttl),
            pttl=int(pttl),
            before={f: fields[f] for f in lane.STARTED_FIELDS if f in fields},
        )
        self._state_written = self._state = WorkerStatus.BUSY
        try:
            self._prefetched = self._taken([queue_key, job_id, flat])
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            self._unstart(started)
            self._no_take_once = True
            return
        self._next = started

    def _unstart(self, started: lane.Started) -> None:
        key = self.job_class.key_for(started.job_id)
        try:
            self.connection.eval(
                lane.UNSTART, 0, *lane.unstart_args(started, key, self._worker_executions)
            )
            self.log.info(
                "Worker %s: put job %s back on %s", self.name, started.job_id, started.queue_key
            )
        except RedisError as exc:  # left started: the abandoned-job cleanup finds it
            self.log.warning(
                "Worker %s: could not put job %s back: %s", self.name, started.job_id, exc
            )
        self.executions.pop(started.execution.id, None)
        self._state_written = None

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
            if staging.current is not None:  # before the failure is handled, as they happened
                staging.send(self.connection, staging.current.take())
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
        stage = staging.current
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
                results = pipe.execute(raise_on_error=False)
            errors = [r for r in (results[:-1] if take else results) if isinstance(r, Exception)]
            if errors:
                raise errors[0]
        except BaseException:
            if stage is not None:  # not sent: the failure path sends them
                stage.restage(staged)
            raise
        if take:
            self._keep_taken(results[-1])
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
        if self._no_take_once:
            self._no_take_once = False
            return False
        if (
            self._stop_requested
            or self._prefetched is not None
            or not taking.can_take(self.connection)
        ):
            return False
        order = tuple(q.key for q in self._ordered_queues)
        if self._take_call[0] != order:  # RQ may reorder its queues (other dequeue strategies)
            keys, args = taking.take_args(list(self._ordered_queues), self.job_class)
            self._take_call = (order, [len(keys), *keys, *args])
        pipe.evalsha(taking.TAKE_SHA, *self._take_call[1])
        return True

    def _taken(self, answer: Any) -> tuple[Job, Queue]:
        """The (job, queue) of a TAKE answer (queue key, job id, hash)."""
        return taking.taken(
            answer,
            self.connection,
            self.queue_class,
            self.job_class,
            self.serializer,
            self.death_penalty_class,
            self._queues_by_key,
        )

    def _keep_taken(self, answer: Any) -> None:
        if isinstance(answer, Exception):  # NOSCRIPT after a Redis restart: load it for next time
            self.log.debug("Worker %s: taking the next job failed: %s", self.name, answer)
            with contextlib.suppress(RedisError):
                self.connection.script_load(taking.TAKE)
            return
        if not answer:
            return
        try:
            self._prefetched = self._taken(answer)
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            self._hand_back(as_text(answer[0]), as_text(answer[1]))
            self._no_take_once = True

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # The taken job stays in _prefetched until execute_job starts it: a stop signal that
        # comes before the caller holds it (and raises StopRequested) must still hand it back.
        taken = self._prefetched
        if taken is None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.heartbeat()  # at most once a second
        if self.should_run_maintenance_tasks:  # as RQ's dequeue does, also under steady load
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
        job, queue = taken
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        return taken

    def hand_back_taken(self) -> None:
        """A job taken for next but not started goes back to the front of its queue; so does
        one a stop signal caught between its pop and the worker holding it."""
        taken, self._prefetched = self._prefetched, None
        started, self._next = self._next, None
        if taken is not None and started is not None and started.job_id == taken[0].id:
            self._unstart(started)
        elif taken is not None:
            self._hand_back(taken[1].key, taken[0].id)
        popped, taking.popped = taking.popped, None
        # Only for a stop: a dequeue that failed otherwise (a job RQ cannot read) is RQ's.
        if popped is not None and self._stop_requested:
            queue_key, job_id, intermediate = popped
            self._hand_back(queue_key, job_id, from_intermediate=intermediate)

    def _hand_back(self, queue_key: str, job_id: str, *, from_intermediate: bool = True) -> None:
        intermediate = IntermediateQueue(queue_key, self.connection).key
        try:
            if from_intermediate:
                self.connection.eval(taking.HAND_BACK, 2, intermediate, queue_key, job_id)
            else:  # RQ's BLPOP: the id is in no list
                self.connection.lpush(queue_key, job_id)
            self.log.info("Worker %s: put job %s back on %s", self.name, job_id, queue_key)
        except RedisError as exc:  # left in the intermediate list: RQ's maintenance finds it
            self.log.warning("Worker %s: could not put job %s back: %s", self.name, job_id, exc)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.hand_back_taken()

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
