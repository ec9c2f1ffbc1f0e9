"""The step pipeline: a busy FastWorker's bookkeeping for a plain job in one Lua call per job.

One call (STEP) records the success of the job just run, starts the next one and takes the
one after it off its queue (into RQ's intermediate list), with exactly the keys, fields,
registry entries and expiries RQ's own worker writes for those steps.

STEP is sent and the next job run at once; its answer (the jobs taken after it, the finished
job's dependents) is read when that job ends. Redis runs one connection's commands in order,
so the start is written before anything the worker writes about the job later, and every
other path for the job (its failure, a Retry, RQ's own steps, putting it back) reads the
answer first. Behind a quick job the worker holds up to HELD taken jobs, so at its end the
job to run next is known already: the STEP that finishes it and starts that one goes out
first, and the answer of the STEP before it is read after (two on their way at most).

`StepPipeline` is owned by the worker; its state is the jobs held (phase1.engine.held), the
STEPs on their way (phase1.engine.sender) and what it learnt of the job functions' speed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import as_text, now
from rq.worker import WorkerStatus

from phase1.engine import rqcompat, scripts, success_writes
from phase1.engine.dequeue import can_take, take_args, taken
from phase1.engine.held import HeldJobs, Taken, before_start
from phase1.engine.rqformat import encoded, stamp, utc
from phase1.engine.sender import Pending, StepSender
from phase1.engine.stepargs import (
    Finish,
    Given,
    Header,
    Next,
    Step,
    StepAnswer,
    TakeFrom,
    TakenEntry,
)

if TYPE_CHECKING:
    from phase1.engine.worker import FastWorker

# A job that runs in under QUICK_S, QUICK_RUNS times in a row, is quick: while one runs, the
# worker holds the job after it (taken off its queue, not started), so the next STEP can
# start that one without waiting for an answer. Slower jobs get no job held behind them (it
# would wait for them, and another worker could have run it).
QUICK_S = 0.002
QUICK_RUNS = 3
# How many taken jobs may wait in a worker's hands behind a quick one: two, so that the STEP
# that starts the next job can go out before the answer of the one before it is read.
HELD = 2


class StepPipeline:
    """A FastWorker's STEPs: a plain job's start, success and the next job's start in one
    call, the jobs taken ahead, and the STEPs still on their way."""

    def __init__(self, worker: FastWorker) -> None:
        self.worker = worker
        self.held = HeldJobs(worker)
        self.sender = StepSender(worker, self._answered, self.held.return_all)
        self.quick_runs: dict[str, int] = {}  # function name: quick runs in a row
        self.no_take_once = False  # right after a job that could not be read was put back
        self.queues_by_key = {q.key: q for q in worker.queues}
        self.take_from: TakeFrom | None = None  # built once for an order of the queues
        self.take_from_order: tuple[str, ...] = ()
        self.take_call: tuple[tuple[str, ...], list[Any]] = ((), [])  # TAKE's, likewise

    # -- which jobs ------------------------------------------------------------------------

    def plain(self, job: Job) -> bool:
        """Whether the job's success is the pipeline's to record (RQ's steps otherwise)."""
        return (
            not job.repeats_left
            and not rqcompat.has_success_callback(job)
            and not job.webhooks
            and not job.has_rate_limit
            and job.get_result_ttl(self.worker.default_result_ttl) > 0
        )

    def holds_behind(self) -> bool:
        """Whether jobs taken ahead wait in the worker's hands (or are on their way)."""
        return bool(self.held.after or self.sender.pending or self.held.following() is not None)

    def take_next(self) -> bool:
        """Whether to take or start another job now: not when stopping, or right after a job
        that could not be read was put back."""
        if self.no_take_once:
            self.no_take_once = False
            return False
        return not (rqcompat.stop_requested(self.worker) or not can_take(self.worker.connection))

    def peeks(self, job: Job) -> int:
        """How many jobs a STEP that starts `job` may take to hold behind it: up to HELD with
        those held or on their way already, and none behind a job not known to be quick."""
        if not self.quick(job):
            return 0
        return max(0, HELD - len(self.held.after) - self.sender.peeks())

    def timed(self, job: Job, seconds: float) -> None:
        """Count the job's function's quick runs in a row (a slow run starts over)."""
        name = job.func_name or ""
        if seconds < QUICK_S:
            if name in self.quick_runs or len(self.quick_runs) < 256:
                self.quick_runs[name] = self.quick_runs.get(name, 0) + 1
        else:
            self.quick_runs.pop(name, None)

    def quick(self, job: Job) -> bool:
        """Whether the job's function ran quickly its last QUICK_RUNS times: while it runs,
        the job after it may wait in this worker's hands (taken, not started)."""
        return self.quick_runs.get(job.func_name or "", 0) >= QUICK_RUNS

    # -- a plain job's start and end -------------------------------------------------------

    def start(self, job: Job) -> Execution:
        """Start a job the worker holds (one STEP, which also takes the job after it)."""
        moment = time.time()
        execution = self.execution(job.id, moment)
        peeks = self.peeks(job) if self.held.next is None else 0
        step = Step(self.header(moment), None, self.given(job, execution), self.next("-", 0, peeks))
        sent_at = time.monotonic()
        self.after(self.sender.step(step, []), None, None, None, sent_at)
        self.worker.note_state(WorkerStatus.BUSY)
        return execution

    def finish(self, job: Job, queue: Queue, execution: Execution, value: Any) -> None:
        """Record a plain job's success, starting the job held to run next (or taking one)."""
        assert job.started_at is not None and job.ended_at is not None
        worker = self.worker
        working = (job.ended_at - job.started_at).total_seconds()
        self.timed(job, working)
        moment = time.time()
        finish = Finish(
            job.id,
            job.key,
            job.origin,
            execution.id,
            job.get_result_ttl(worker.default_result_ttl),
            utc(job.ended_at),
            repr(execution.created_at.timestamp()),
            repr(job.ended_at.timestamp()),
            encoded(value, worker.serializer),
            repr(working),
            job.dependents_key,
            job.dependencies_key if rqcompat.has_dependencies(job) else "",
        )
        step = Step(self.header(moment), finish)
        stage = success_writes.current
        # Ahead: the job to run next is held already (not started), so this STEP can start it
        # before the answer of the STEP on its way is read; that answer is read after it.
        if self.held.following() is not None:
            self.give_back_stale()
        following = self.held.following()
        ahead = (
            bool(self.sender.pending)
            and following is not None
            and following.execution is None
            and not (stage is not None and stage.items)
        )
        if not ahead:
            self.sender.settle()  # the STEP that started this job (and took the one after it)
            self.give_back_stale()
            following = self.held.following()
        staged = stage.take() if stage is not None else []
        go_on = self.take_next()
        next_execution = "-"
        if go_on and following is not None and following.execution is None:
            following.execution = self.execution(following.job.id, moment)
            step.given = self.given(following.job, following.execution)
            step.next = self.next("-", 0, self.peeks(following.job))
        else:
            following = None
            if go_on and self.held.next is None:
                next_execution = uuid4().hex
                step.next = self.next(next_execution, 1, 0)
        sent_at = time.monotonic()
        answer: StepAnswer | None = None
        try:
            if following is not None and not staged:
                # The answer is read when `following` ends (or, ahead, the one before it now).
                self.sender.send(step, job, queue)
                if ahead:
                    self.sender.settle(keep_last=True)
            else:
                answer = self.sender.step(step, staged)
        except BaseException:
            if following is not None:
                following.execution = None
            if stage is not None:  # not sent: the failure path sends them
                stage.restage(staged)
            raise
        worker.executions.pop(execution.id, None)
        worker.note_state(WorkerStatus.BUSY if following is not None else WorkerStatus.IDLE)
        if answer is not None:
            self.after(answer, job, queue, (next_execution, moment), sent_at)
            nxt = self.held.following()
            if nxt is not None and self._started_quick_job_alone(nxt):
                # Take the ones after it while it runs.
                peek = Step(self.header(time.time()), next=self.next("-", 0, self.peeks(nxt.job)))
                self.sender.send(peek, None, None)
        for _, then in staged:
            if then is not None:
                then()
        if worker.log.isEnabledFor(logging.DEBUG):
            worker.log.debug("Successfully completed job %s on worker %s", job.id, worker.name)

    def _started_quick_job_alone(self, nxt: Taken) -> bool:
        return (
            nxt.execution is not None
            and not self.held.after
            and not self.sender.pending
            and self.quick(nxt.job)
        )

    def run(self, job: Job, queue: Queue, execution: Execution) -> None:
        """RQ's perform_job for a plain job already started, with its success in one STEP."""
        worker = self.worker
        self.mark_started(job, execution)
        self.sender.unsure_starts.clear()  # only a loss during this run counts for it
        try:
            job.started_at = now()
            timeout = job.timeout or worker.queue_class.DEFAULT_TIMEOUT
            with worker.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                value = job.perform()
            if isinstance(value, Retry):
                self.sender.settle()
                rqcompat.finalize_success(worker, job, queue, execution, value)
                return
            job.ended_at = job.last_heartbeat = now()
            rqcompat.set_result_field(job, value)
            rqcompat.set_status_field(job, JobStatus.FINISHED)
            self.finish(job, queue, execution, value)
        except:  # noqa: E722 -- as RQ's perform_job: anything raised fails the job
            exc_info = sys.exc_info()
            self.sender.settle_quietly()
            self.sender.unlist(job)
            rqcompat.finalize_failure(worker, job, queue, execution, exc_info)

    def mark_started(self, job: Job, execution: Execution) -> None:
        """What RQ's prepare_for_execution sets on the job, for a job a STEP started."""
        job.worker_name = self.worker.name
        job.last_heartbeat = job.started_at = execution.created_at
        rqcompat.set_status_field(job, JobStatus.STARTED)

    def give_back_stale(self) -> bool:
        """Put back the jobs held, if the one to run next waited too long; whether it did."""
        if not self.held.too_long():
            return False
        self.sender.settle()
        self.held.return_all()
        return True

    def return_held(self) -> None:
        """Put back every job held (after the answers on their way, which may bring more)."""
        self.sender.settle()
        self.held.return_all()

    # -- STEP's parts ----------------------------------------------------------------------

    def header(self, moment: float) -> Header:
        worker = self.worker
        worker.note_beat()  # a start beats for the worker too
        return Header(
            int(moment), repr(moment), stamp(moment), worker.key, worker.name, worker.executions_key
        )

    def execution(self, job_id: str, moment: float, execution_id: str = "") -> Execution:
        """The Execution STEP writes for a job it starts at `moment` (a new id by default)."""
        execution_id = execution_id or uuid4().hex
        worker = self.worker
        execution = Execution(execution_id, job_id, worker.connection, worker_name=worker.name)
        execution.created_at = execution.last_heartbeat = datetime.fromtimestamp(moment, UTC)
        return execution

    def given(self, job: Job, execution: Execution) -> Given:
        intermediate = IntermediateQueue.get_intermediate_queue_key(
            Queue.redis_queue_namespace_prefix + job.origin
        )
        ttl = self.worker.get_heartbeat_ttl(job)
        return Given(job.id, job.key, job.origin, ttl, intermediate, execution.id)

    def next(self, execution_id: str, take: int, peeks: int) -> Next | None:
        """Take a job and start it with `execution_id` (`take`), then take up to `peeks`
        after it, from the queues the worker takes from now; None: nothing to take."""
        if not (take or peeks):
            return None
        queues = self.worker.queues_to_take()
        if not queues:  # none to take from now (paused, say)
            return None
        order = tuple(q.key for q in queues)
        if self.take_from is None or self.take_from_order != order:  # RQ may reorder them
            self.take_from_order = order
            pairs = tuple((k, IntermediateQueue.get_intermediate_queue_key(k)) for k in order)
            prefix = self.worker.job_class.redis_job_namespace_prefix
            self.take_from = TakeFrom(prefix, *self.worker.heartbeat_ttl_rule, queues=pairs)
        return Next(execution_id, take, peeks, self.take_from)

    # -- STEP's answers --------------------------------------------------------------------

    def _answered(self, answer: StepAnswer, pending: Pending) -> None:
        self.after(answer, pending.job, pending.queue, None, pending.sent_at)

    def after(
        self,
        answer: StepAnswer,
        finished: Job | None,
        queue: Queue | None,
        started: tuple[str, float] | None,
        sent_at: float,
    ) -> None:
        """Keep what STEP took (`started`: the execution id and moment it started a job
        with; `sent_at`: when the STEP was sent); move the finished job's dependents (RQ's
        own, WATCHed move)."""
        if answer.taken is not None:
            assert started is not None
            self._keep(answer.taken, sent_at, started)
        for entry in answer.peeked:
            self._keep(entry, sent_at)
        if finished is not None and queue is not None and answer.dependents > 0:
            queue.enqueue_ready_jobs_by_queue(queue.move_dependents_to_ready(finished))

    def _keep(
        self, entry: TakenEntry, sent_at: float, started: tuple[str, float] | None = None
    ) -> None:
        """Hold a job STEP took: as the job to run next, or as one after it."""
        fields = dict(zip(entry.flat[::2], entry.flat[1::2], strict=True))
        try:
            job, queue = self.restore([entry.queue_key, entry.job_id, entry.flat])
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            queue_key, job_id = as_text(entry.queue_key), as_text(entry.job_id)
            self.held.put_back_unread(queue_key, job_id, fields, entry.pttl, started)
            self.no_take_once = True
            return
        held = Taken(job, queue, int(entry.pttl), before_start(fields), taken_at=sent_at)
        if started is not None:
            held.execution = self.execution(job.id, started[1], started[0])
            self.worker.note_state(WorkerStatus.BUSY)
        self.held.keep(held)

    def restore(self, answer: Any) -> tuple[Job, Queue]:
        """The (job, queue) of a taken job's (queue key, job id, hash)."""
        worker = self.worker
        return taken(
            answer,
            worker.connection,
            worker.queue_class,
            worker.job_class,
            worker.serializer,
            worker.death_penalty_class,
            self.queues_by_key,
        )

    # -- TAKE in the success transaction of a job RQ's steps ran ----------------------------

    def take_in(self, pipe: Pipeline) -> bool:
        """Add TAKE for the next job to a success transaction, unless this worker is about
        to stop, holds jobs already or has no queue to take from (or Redis lacks LMOVE)."""
        if not self.take_next() or self.held:
            return False
        queues = self.worker.queues_to_take()
        if not queues:  # none to take from now (paused, say)
            return False
        order = tuple(q.key for q in queues)
        if self.take_call[0] != order:  # RQ may reorder its queues (other dequeue strategies)
            keys, args = take_args(queues, self.worker.job_class)
            self.take_call = (order, [len(keys), *keys, *args])
        pipe.evalsha(scripts.TAKE_SHA, *self.take_call[1])
        return True

    def keep_taken(self, answer: Any, sent_at: float) -> None:
        """Hold the job TAKE took (from `take_in`'s transaction) to run next."""
        worker = self.worker
        if isinstance(answer, Exception):  # NOSCRIPT after a Redis restart: load it for next time
            worker.log.debug("Worker %s: taking the next job failed: %s", worker.name, answer)
            with contextlib.suppress(RedisError):
                worker.connection.script_load(scripts.TAKE)
            return
        if not answer:
            return
        try:
            job, queue = self.restore(answer)
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            self.held.hand_back(as_text(answer[0]), as_text(answer[1]))
            self.no_take_once = True
            return
        self.held.next = Taken(job, queue, -1, {}, taken_at=sent_at, lane=False)
