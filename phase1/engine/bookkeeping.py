"""The lane: a busy FastWorker's bookkeeping for a plain job in one Lua call per job.

One call (STEP) records the success of the job just run, starts the next one and takes the
one after it off its queue (into RQ's intermediate list), with exactly the keys, fields,
registry entries and expiries RQ's own worker writes for those steps (execution record,
`wip` registry, worker heartbeat and state, job hash; result stream, `finished` registry,
expiries, worker counters). Only the Python changes: no RQ Job save, Result or Execution
objects per job, one EVALSHA packed instead of about 40 commands.

STEP is sent and the next job run at once; its answer (the jobs taken after it, the finished
job's dependents) is read when that job ends. Redis runs one connection's commands in order,
so the start is written before anything the worker writes about the job later, and every
other path for the job (its failure, a Retry, RQ's own steps, putting it back) reads the
answer first. A job that reads its own RQ status in its first moments may still see it
`queued`; a job with staged writes (a Phase 1 job's events) waits for its STEP.

Behind a quick job the worker holds up to HELD taken jobs, so at its end the job to run next
is known already: the STEP that finishes it and starts that one goes out first, and the
answer of the STEP before it is read after (two on their way at most). The worker then
waits for Redis only when Redis, not the worker, is the bottleneck. A STEP Redis refuses
(NOSCRIPT after its script cache was emptied, out of memory) is read with those sent after
it and run again in order; one whose successor ran (another client loaded the script in
between) runs without the start of the job its successor finished, and takes no more jobs.
STEPs lost with their connection run again on another connection, each doing only what it
had not done ('refinish', 'regiven': the answer may have been lost after Redis ran it), and
taking no job (the ones the lost STEP took, if it ran, wait in their intermediate list for
the maintenance pass). If Redis cannot be reached for that, what they did stays unknown: the
jobs the worker holds go back to their queues (UNSTART, or from the intermediate list when
their start was not written), and the job being finished takes its failure path. Sending STEPs
and reading their answers lives in phase1.engine.steps; the held jobs, and putting them back, in
phase1.engine.prefetch.

A job STEP started that the worker then does not run (stop, suspension, `max_jobs`) goes
back as it was, at the front of its queue (UNSTART). A worker killed in that moment leaves
a started job that RQ's abandoned-job cleanup (and phase1's orphan sweep) deal with, as for
a worker killed right after RQ's own prepare step.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from redis.connection import Connection
from rq import SimpleWorker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import as_text, now
from rq.worker import WorkerStatus

from phase1.engine import success_writes
from phase1.engine.dequeue import can_take as _can_take
from phase1.engine.dequeue import taken
from phase1.engine.prefetch import HeldJobs, Taken, before_start
from phase1.engine.scripts import encoded, stamp, utc
from phase1.engine.steps import Pending

# A job that runs in under QUICK_S, QUICK_RUNS times in a row, is quick: while one runs, the
# worker holds the job after it (taken off its queue, not started), so the next STEP can
# start that one without waiting for an answer. Slower jobs get no job held behind them (it
# would wait for them, and another worker could have run it).
QUICK_S = 0.002
QUICK_RUNS = 3
# How many taken jobs may wait in a worker's hands behind a quick one: two, so that the STEP
# that starts the next job can go out before the answer of the one before it is read (the
# worker then waits for Redis only when Redis is the slower of the two).
HELD = 2


class LaneWorker(HeldJobs, SimpleWorker):
    """The lane's half of FastWorker: a plain job's start, success and the next job's start
    in one STEP, and, while a plain job runs, the STEP that started it still on its way.

    The next job's start is *sent* before it runs and its answer read when it ends: Redis
    runs a connection's commands in order, so the start is written before anything this
    worker writes about the job later. Any other path for the job (its failure, a Retry,
    RQ's steps for a job that is not plain, putting it back) first reads that answer.
    """

    heartbeat_ttl_rule: tuple[int, int, int, int, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state_written: str | None = None
        self._housekept_at = float("-inf")
        self._no_take_once = False
        self._prefetched: tuple[Job, Queue] | None = None  # the job to run next
        self._prefetched_taken: Taken | None = None  # … when the lane took it
        self._take_sent_at = float("inf")  # when the TAKE that took _prefetched was sent
        self._peeked: deque[Taken] = deque()  # the ones after it (HELD at most), in order
        self._pending: deque[Pending] = deque()  # oldest first
        self._sender: Connection | None = None  # the connection STEPs are sent on unanswered
        self._unsure_starts: dict[str, str] = {}  # lost starts: job id → intermediate list
        self._quick_runs: dict[str, int] = {}  # function name: quick runs in a row
        self._queues_by_key = {q.key: q for q in self.queues}
        self._next_call: tuple[tuple[str, ...], list[Any]] = ((), [])
        self._worker_executions = WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.name)
        self._header_tail = [self.key, self.name, self._worker_executions]

    def queues_to_take(self) -> list[Queue]:
        """The queues to take jobs from now (FastWorker.queues_to_take)."""
        return self._ordered_queues

    # -- which jobs ------------------------------------------------------------------------

    def _plain(self, job: Job) -> bool:
        """Whether the job's success is the lane's to record (RQ's steps otherwise)."""
        return (
            not job.repeats_left
            and not job._success_callback_name
            and not job.webhooks
            and not job.has_rate_limit
            and job.get_result_ttl(self.default_result_ttl) > 0
        )

    def _take_next(self) -> bool:
        """Whether to take or start another job now: not when stopping, or right after a job
        that could not be read was put back."""
        if self._no_take_once:
            self._no_take_once = False
            return False
        return not (self._stop_requested or not _can_take(self.connection))

    def _following(self) -> Taken | None:
        """The job the worker holds to run next, if the lane took it."""
        return self._prefetched_taken if self._prefetched is not None else None

    def _peeks(self, job: Job) -> int:
        """How many jobs a STEP that starts `job` may take to hold behind it: up to HELD with
        those held or on their way already, and none behind a job not known to be quick."""
        if not self._quick(job):
            return 0
        on_their_way = sum(pending.peeks for pending in self._pending)
        return max(0, HELD - len(self._peeked) - on_their_way)

    # -- a plain job's run -------------------------------------------------------------------

    def _lane_start(self, job: Job) -> Execution:
        """Start a job the worker holds (one STEP, which also takes the job after it)."""
        moment = time.time()
        execution = self._execution(job.id, moment)
        args = [*self._header(moment), "none", *self._given(job, execution)]
        peeks = self._peeks(job) if self._prefetched is None else 0
        args += self._next_args("-", take=False, peeks=peeks)
        sent_at = time.monotonic()
        self._after(self._step(args, []), None, None, None, sent_at)
        self._state_written = self._state = WorkerStatus.BUSY
        return execution

    def _perform_plain(self, job: Job, queue: Queue, execution: Execution) -> None:
        """RQ's perform_job for a job already started, with its success in one STEP."""
        self._mark_started(job, execution)
        self._unsure_starts.clear()  # only a loss during this job's run counts for it
        try:
            job.started_at = now()
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                value = job.perform()
            if isinstance(value, Retry):
                self._settle()
                self._finalize_success(job, queue, execution, value)
                return
            job.ended_at = job.last_heartbeat = now()
            job._result = value
            job._status = JobStatus.FINISHED
            self._finish_plain(job, queue, execution, value)
        except:  # noqa: E722 -- as RQ's perform_job: anything raised fails the job
            exc_info = sys.exc_info()
            self._settle_quietly()
            self._unlist(job)
            self._finalize_failure(job, queue, execution, exc_info)

    def _mark_started(self, job: Job, execution: Execution) -> None:
        """What RQ's prepare_for_execution sets on the job, for a job STEP started."""
        job.worker_name = self.name
        job.last_heartbeat = job.started_at = execution.created_at
        job._status = JobStatus.STARTED

    def _finish_plain(self, job: Job, queue: Queue, execution: Execution, value: Any) -> None:
        assert job.started_at is not None and job.ended_at is not None
        self._timed(job, (job.ended_at - job.started_at).total_seconds())
        moment = time.time()
        args = [*self._header(moment), "finish", job.id, job.key, job.origin, execution.id]
        args += [job.get_result_ttl(self.default_result_ttl), utc(job.ended_at)]
        args += [repr(execution.created_at.timestamp()), repr(job.ended_at.timestamp())]
        args += [encoded(value, self.serializer)]
        args += [repr((job.ended_at - job.started_at).total_seconds())]
        args += [job.dependents_key, job.dependencies_key if job._dependency_ids else ""]
        stage = success_writes.current
        # Ahead: the job to run next is held already (not started), so this STEP can start it
        # before the answer of the STEP on its way is read; that answer is read after it.
        if self._following() is not None:
            self._give_back_stale()
        following = self._following()
        ahead = (
            bool(self._pending)
            and following is not None
            and following.execution is None
            and not (stage is not None and stage.items)
        )
        if not ahead:
            self._settle()  # the STEP that started this job (and took the one after it)
            self._give_back_stale()
            following = self._following()
        staged = stage.take() if stage is not None else []
        go_on = self._take_next()
        next_execution = "-"
        if go_on and following is not None and following.execution is None:
            following.execution = self._execution(following.job.id, moment)
            args += self._given(following.job, following.execution)
            args += self._next_args("-", take=False, peeks=self._peeks(following.job))
        else:
            following = None
            args.append("none")
            if go_on and self._prefetched is None:
                next_execution = uuid4().hex
                args += self._next_args(next_execution, take=True, peeks=0)
            else:
                args.append("-")
        sent_at = time.monotonic()
        try:
            if following is not None and not staged:
                # The answer is read when `following` ends (or, ahead, the one before it now).
                self._send(args, job, queue)
                answer = None
                if ahead:
                    self._settle(keep_last=True)
            else:
                answer = self._step(args, staged)
        except BaseException:
            if following is not None:
                following.execution = None
            if stage is not None:  # not sent: the failure path sends them
                stage.restage(staged)
            raise
        self.executions.pop(execution.id, None)
        self._state_written = self._state = WorkerStatus.IDLE
        if following is not None:
            self._state_written = self._state = WorkerStatus.BUSY
        if answer is not None:
            self._after(answer, job, queue, (next_execution, moment), sent_at)
            if self._started_quick_job_alone():  # take the ones after it while it runs
                taken = self._prefetched_taken
                assert taken is not None
                peek = [*self._header(time.time()), "none", "none"]
                peek += self._next_args("-", take=False, peeks=self._peeks(taken.job))
                self._send(peek, None, None)
        for _, then in staged:
            if then is not None:
                then()
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("Successfully completed job %s on worker %s", job.id, self.name)

    # -- quick jobs: the ones a job may be taken ahead of ------------------------------------

    def _timed(self, job: Job, seconds: float) -> None:
        """Count the job's function's quick runs in a row (a slow run starts over)."""
        name = job.func_name or ""
        if seconds < QUICK_S:
            if name in self._quick_runs or len(self._quick_runs) < 256:
                self._quick_runs[name] = self._quick_runs.get(name, 0) + 1
        else:
            self._quick_runs.pop(name, None)

    def _quick(self, job: Job) -> bool:
        """Whether the job's function ran quickly its last QUICK_RUNS times: while it runs,
        the job after it may wait in this worker's hands (taken, not started)."""
        return self._quick_runs.get(job.func_name or "", 0) >= QUICK_RUNS

    def _started_quick_job_alone(self) -> bool:
        taken = self._prefetched_taken
        return (
            taken is not None
            and taken.execution is not None
            and not self._peeked
            and not self._pending
            and self._quick(taken.job)
        )

    # -- STEP's arguments ----------------------------------------------------------------------

    def _header(self, moment: float) -> list[Any]:
        self._housekept_at = time.monotonic()  # a start beats for the worker too
        return [int(moment), repr(moment), stamp(moment), *self._header_tail]

    def _execution(self, job_id: str, moment: float, execution_id: str = "") -> Execution:
        """The Execution STEP writes for a job it starts at `moment` (a new id by default)."""
        execution_id = execution_id or uuid4().hex
        execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = datetime.fromtimestamp(moment, UTC)
        return execution

    def _given(self, job: Job, execution: Execution) -> list[Any]:
        intermediate = IntermediateQueue.get_intermediate_queue_key(
            Queue.redis_queue_namespace_prefix + job.origin
        )
        ttl = self.get_heartbeat_ttl(job)
        return ["given", job.id, job.key, job.origin, ttl, intermediate, execution.id]

    def _next_args(self, execution_id: str, *, take: bool, peeks: int) -> list[Any]:
        """'next' (the execution id is for a job it takes and starts; `peeks`: how many it
        takes after that without starting them), or '-' (nothing)."""
        if not (take or peeks):
            return ["-"]
        queues = self.queues_to_take()  # none: the Lua takes nothing
        order = tuple(q.key for q in queues)
        if self._next_call[0] != order:  # RQ may reorder its queues (other dequeue strategies)
            keys = [q.key for q in queues]
            pairs: list[Any] = []
            for key in keys:
                pairs += [key, IntermediateQueue.get_intermediate_queue_key(key)]
            rule = list(self.heartbeat_ttl_rule)
            prefix = self.job_class.redis_job_namespace_prefix
            self._next_call = (order, [prefix, *rule, len(keys), *pairs])
        return [
            "next",
            execution_id,
            "1" if take else "0",
            peeks,
            *self._next_call[1],
        ]

    def _after(
        self,
        answer: Any,
        finished: Job | None,
        queue: Queue | None,
        started: tuple[str, float] | None,
        sent_at: float,
    ) -> None:
        """Keep what STEP took (`started`: the execution id and moment it started a job
        with; `sent_at`: when the STEP was sent); move the finished job's dependents (RQ's
        own, WATCHed move)."""
        dependents, taken, peeked = answer
        if taken:
            assert started is not None
            self._keep(taken, sent_at, started)
        for entry in peeked or ():
            self._keep(entry, sent_at)
        if finished is not None and queue is not None and dependents > 0:
            queue.enqueue_ready_jobs_by_queue(queue.move_dependents_to_ready(finished))

    def _keep(self, answer: Any, sent_at: float, started: tuple[str, float] | None = None) -> None:
        """Hold a job STEP took: as the job to run next, or as the one after it."""
        queue_key, job_id, flat, pttl = answer
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            job, queue = self._restore([queue_key, job_id, flat])
        except Exception:  # unreadable: back on its queue, for RQ's dequeue to deal with
            self._put_back_unread(as_text(queue_key), as_text(job_id), fields, pttl, started)
            self._no_take_once = True
            return
        taken = Taken(job, queue, int(pttl), before_start(fields), taken_at=sent_at)
        if started is not None:
            taken.execution = self._execution(job.id, started[1], started[0])
            self._state_written = self._state = WorkerStatus.BUSY
        if self._prefetched is None:
            self._prefetched, self._prefetched_taken = (job, queue), taken
        else:
            self._peeked.append(taken)

    def _restore(self, answer: Any) -> tuple[Job, Queue]:
        """The (job, queue) of a taken job's (queue key, job id, hash)."""
        return taken(
            answer,
            self.connection,
            self.queue_class,
            self.job_class,
            self.serializer,
            self.death_penalty_class,
            self._queues_by_key,
        )
