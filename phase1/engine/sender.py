"""Sending the engine's STEP calls and reading their answers: up to two on their way at once,
answered in the order they were sent. phase1.engine.pipeline's StepPipeline owns one.

A STEP is sent on a connection of the sender's own and its answer read later (`settle`), or
sent and waited for (`step`, with a job's staged writes in one MULTI). A STEP Redis refuses
is read with the ones sent after it and run again in order (`refused`, `again`). STEPs whose
connection fails (reset, closed by the server) run again on another connection, in order,
each doing only what it had not done (`replay`); when Redis cannot be reached for that, what
they did stays unknown, and the jobs the worker holds go back to their queues (`lost`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hiredis import pack_command
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from rq.job import Job
from rq.queue import Queue

from phase1.engine import success_writes
from phase1.engine.scripts import STEP, STEP_SHA
from phase1.engine.stepargs import Step, StepAnswer, step_answer

if TYPE_CHECKING:
    from phase1.engine.worker import FastWorker


@dataclass
class Pending:
    """A STEP sent and not answered yet: a job started while the answer travels."""

    connection: Connection
    step: Step
    job: Job | None  # the job it finished
    queue: Queue | None
    sent_at: float  # time.monotonic()


class StepSender:
    """The STEPs a worker has sent and not yet read the answers of, oldest first. Each answer
    goes to `on_answer` in order; `on_lost` puts back the jobs the worker holds when what the
    STEPs on their way did cannot be known."""

    def __init__(
        self,
        worker: FastWorker,
        on_answer: Callable[[StepAnswer, Pending], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.worker = worker
        self.connection = worker.connection
        self.log = worker.log
        self.name = worker.name
        self.on_answer = on_answer
        self.on_lost = on_lost
        self.pending: deque[Pending] = deque()
        self.sender: Connection | None = None  # the connection STEPs are sent on unanswered
        self.unsure_starts: dict[str, str] = {}  # lost starts: job id → intermediate list

    def peeks(self) -> int:
        """How many jobs the STEPs on their way may take without starting them."""
        return sum(pending.step.peeks for pending in self.pending)

    def step(self, step: Step, staged: list[success_writes.Staged]) -> StepAnswer:
        """Run STEP and wait for it (with the job's staged writes after it, in one MULTI)."""
        self.settle()
        args = step.to_args()
        if not staged:
            return step_answer(self.evalsha(args))
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.evalsha(STEP_SHA, 0, *args)
            for write, _ in staged:
                write(pipe)
            results = pipe.execute(raise_on_error=False)
        errors = [r for r in results[1:] if isinstance(r, Exception)]
        if isinstance(results[0], NoScriptError):  # the staged writes went: STEP alone
            results[0] = self.evalsha(args)
        elif isinstance(results[0], Exception):
            raise results[0]
        if errors:
            raise errors[0]
        return step_answer(results[0])

    def evalsha(self, args: list[Any]) -> Any:  # STEP's raw answer
        """STEP, waited for; loaded first if Redis lacks it (restarted or flushed: a refused
        EVALSHA wrote nothing)."""
        try:
            return self.connection.evalsha(STEP_SHA, 0, *args)
        except NoScriptError:
            self.connection.script_load(STEP)
            return self.connection.evalsha(STEP_SHA, 0, *args)

    def send(self, step: Step, job: Job | None, queue: Queue | None) -> None:
        """Send STEP on the lane's own connection and go on; _settle reads the answer."""
        if self.sender is None:
            self.sender = self.connection.connection_pool.get_connection()
        pending = Pending(self.sender, step, job, queue, time.monotonic())
        try:
            # hiredis packs STEP's str and int arguments directly (redis-py's send_command
            # would first look at each of its arguments for bytearrays and memoryviews).
            packed = pack_command(("EVALSHA", STEP_SHA, 0, *step.to_args()))
            self.sender.send_packed_command([packed])  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if not self.replay([*self.pending, pending], exc):
                self.lost()
                raise
            return
        except BaseException:
            self.lost()
            raise
        self.pending.append(pending)

    def drop(self) -> None:
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.disconnect()  # type: ignore[no-untyped-call]
            self.connection.connection_pool.release(sender)

    def lost(self, *read: Pending) -> None:
        """The answers of the STEPs on their way (and of `read`, taken off them to be read)
        are lost (their connection failed): what they did is unknown. The jobs the worker
        holds go back to their queues (each as it was, whether its start was written or
        not); the starts of the others, the job just run among them, are noted as unsure
        (`_unsure_starts`: if not written, the job is still in its intermediate list)."""
        for pending in (*read, *self.pending):
            given = pending.step.given
            if given is not None:
                self.unsure_starts[given.id] = given.intermediate
        self.pending.clear()
        self.drop()
        self.on_lost()

    def replay(self, lost: list[Pending], error: RedisConnectionError) -> bool:
        """The STEPs whose connection failed (`lost`, in the order they were sent), run again
        on another connection, in order, each doing only what it had not done (its answer may
        have been lost after it ran: Step.replayed), and their answers acted on;
        whether that worked. A connection error means the server will not run them later:
        its end of the connection is gone (a timeout would not say so, and is not replayed).
        Not when Redis cannot be reached: then what they did stays unknown (`_lost`)."""
        self.pending.clear()
        self.drop()
        answers: list[Any] = []
        failure: RedisError | None = None
        try:
            for pending in lost:
                answers.append(step_answer(self.evalsha(pending.step.replayed().to_args())))
        except RedisError as exc:
            failure = exc
        for pending, answer in zip(lost, answers, strict=False):
            self.on_answer(answer, pending)
        if failure is not None:  # the rest stay unknown, for `_lost`
            self.pending.extend(lost[len(answers) :])
            self.log.warning(
                "Worker %s: bookkeeping steps lost with their connection (%s) could not all "
                "run again: %s",
                self.name,
                error,
                failure,
            )
            return False
        self.log.warning(
            "Worker %s: %d bookkeeping steps lost with their connection (%s) ran again",
            self.name,
            len(lost),
            error,
        )
        return True

    def unlist(self, job: Job) -> None:
        """Take a failing job off its intermediate list when the STEP that was to start it
        was lost with its connection (if it got through, the job is not listed: no-op), so a
        plain `rq worker`'s cleanup of that list does not fail it a second time (phase1's own
        takes it off the list later, phase1.engine.leftbehind)."""
        intermediate = self.unsure_starts.pop(job.id, None)
        self.unsure_starts.clear()
        if intermediate is None:
            return
        try:
            self.connection.lrem(intermediate, 1, job.id)
        except RedisError as exc:  # left listed: the maintenance pass takes it off
            self.log.warning(
                "Worker %s: job %s left in %s: %s", self.name, job.id, intermediate, exc
            )

    def settle(self, *, keep_last: bool = False) -> None:
        """Read the answers of the STEPs still on their way, oldest first; with `keep_last`,
        all but the one sent last (the worker then does not wait for it)."""
        while len(self.pending) > keep_last:
            pending = self.pending.popleft()
            try:
                answer = step_answer(pending.connection.read_response())
            except ResponseError as exc:  # refused: nothing it does was written
                self.refused(pending, exc)
                continue
            except RedisConnectionError as exc:
                if not self.replay([pending, *self.pending], exc):
                    self.lost(pending)
                    raise
                continue
            except BaseException:
                self.lost(pending)
                raise
            self.on_answer(answer, pending)

    def refused(self, refused: Pending, error: ResponseError) -> None:
        """A STEP Redis refused, with the STEPs sent after it, in order. NOSCRIPT (a Redis
        restarted or flushed) runs it again; so does any other refusal (out of memory, say)
        that a later STEP got through (that one ran). A refusal no later STEP got past fails
        the job being finished, as any failure of its bookkeeping does."""
        later = list(self.pending)
        self.pending.clear()
        outcomes: list[Any] = [error]
        for pending in later:
            try:
                outcomes.append(pending.connection.read_response())
            except ResponseError as exc:
                outcomes.append(exc)
            except BaseException:
                self.lost(refused, *later)  # none of them is acted on now
                raise
        steps = [refused, *later]
        for k, (pending, outcome) in enumerate(zip(steps, outcomes, strict=True)):
            ran_after = any(not isinstance(o, Exception) for o in outcomes[k + 1 :])
            if isinstance(outcome, Exception):
                if not isinstance(outcome, NoScriptError) and not ran_after:
                    self.on_lost()
                    raise outcome
                try:
                    outcome = self.again(pending, steps[k + 1] if ran_after else None)
                except RedisError as exc:
                    if isinstance(outcome, NoScriptError) or not ran_after:
                        self.on_lost()
                        raise
                    # What it finished stays started: RQ's cleanup of abandoned jobs (and
                    # phase1's orphan sweep) deal with it, as after a worker killed mid-job.
                    self.log.error(
                        "Worker %s: the bookkeeping of job %s's success failed: %s",
                        self.name,
                        pending.job.id if pending.job is not None else "-",
                        exc,
                    )
                    continue
            self.on_answer(step_answer(outcome), pending)

    def again(self, pending: Pending, ran_after: Pending | None) -> Any:
        """Run a refused STEP again, synchronously. When a STEP after it did run: without
        the start of the job that one finished (its start would come after its end), and
        without taking more jobs (they would come after the ones that STEP took)."""
        step, taken_off = pending.step, None
        if ran_after is not None:
            given = step.given
            if given is not None and ran_after.job is not None and given.id == ran_after.job.id:
                taken_off = (given.intermediate, given.id)  # its start took it off this list
                step = replace(step, given=None)
            if step.next is not None:
                step = replace(step, next=replace(step.next, peeks=0))
        answer = self.evalsha(step.to_args())
        if taken_off is not None:
            self.connection.lrem(taken_off[0], 1, taken_off[1])
        return answer

    def settle_quietly(self) -> None:
        try:
            self.settle()
        except Exception as exc:  # the failure path that follows reports the job itself
            self.log.warning("Worker %s: the last bookkeeping step failed: %s", self.name, exc)
