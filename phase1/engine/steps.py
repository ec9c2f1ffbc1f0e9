"""Sending the lane's STEP and reading its answers: up to two STEPs on their way at once,
answered in the order they were sent (phase1.engine.bookkeeping's LaneWorker runs on this).

A STEP is sent on a connection of the lane's own and its answer read later (`_settle`), or
sent and waited for (`_step`, with a job's staged writes in one MULTI). A STEP Redis refuses
is read with the ones sent after it and run again in order (`_refused`, `_again`). STEPs whose
connection fails (reset, closed by the server) run again on another connection, in order,
each doing only what it had not done (`_replay`); when Redis cannot be reached for that, what
they did stays unknown, and the jobs the worker holds go back to their queues (`_lost`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from hiredis import pack_command
from redis import Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from rq.job import Job
from rq.queue import Queue

from phase1.engine import success_writes
from phase1.engine.scripts import (
    GIVEN_ARGS,
    STEP,
    STEP_SHA,
    given_at,
    given_of,
    next_at,
    peeks_of,
    replayed,
)


@dataclass
class Pending:
    """A STEP sent and not answered yet: a job started while the answer travels."""

    connection: Connection
    args: list[Any]
    job: Job | None  # the job it finished
    queue: Queue | None
    sent_at: float  # time.monotonic()

    @property
    def peeks(self) -> int:
        """How many jobs it may take without starting them."""
        return peeks_of(self.args)


class StepsOnTheirWay:
    """The STEPs a LaneWorker has sent and not yet read the answers of, oldest first."""

    connection: Redis
    log: logging.Logger
    name: str
    _pending: deque[Pending]
    _sender: Connection | None
    _unsure_starts: dict[str, str]  # job id: its intermediate list

    def _after(
        self,
        answer: Any,
        finished: Job | None,
        queue: Queue | None,
        started: Any,
        sent_at: float,
    ) -> None:
        raise NotImplementedError  # LaneWorker: keep what a STEP took

    def _return_held(self) -> None:
        raise NotImplementedError  # LaneWorker: put back the jobs it holds

    def _step(self, args: list[Any], staged: list[success_writes.Staged]) -> Any:
        """Run STEP and wait for it (with the job's staged writes after it, in one MULTI)."""
        self._settle()
        if not staged:
            return self._evalsha(args)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.evalsha(STEP_SHA, 0, *args)
            for write, _ in staged:
                write(pipe)
            results = pipe.execute(raise_on_error=False)
        errors = [r for r in results[1:] if isinstance(r, Exception)]
        if isinstance(results[0], NoScriptError):  # the staged writes went: STEP alone
            results[0] = self._evalsha(args)
        elif isinstance(results[0], Exception):
            raise results[0]
        if errors:
            raise errors[0]
        return results[0]

    def _evalsha(self, args: list[Any]) -> Any:
        """STEP, waited for; loaded first if Redis lacks it (restarted or flushed: a refused
        EVALSHA wrote nothing)."""
        try:
            return self.connection.evalsha(STEP_SHA, 0, *args)
        except NoScriptError:
            self.connection.script_load(STEP)
            return self.connection.evalsha(STEP_SHA, 0, *args)

    def _send(self, args: list[Any], job: Job | None, queue: Queue | None) -> None:
        """Send STEP on the lane's own connection and go on; _settle reads the answer."""
        if self._sender is None:
            self._sender = self.connection.connection_pool.get_connection()
        pending = Pending(self._sender, args, job, queue, time.monotonic())
        try:
            # hiredis packs STEP's str and int arguments directly (redis-py's send_command
            # would first look at each of its ~45 arguments for bytearrays and memoryviews).
            packed = pack_command(("EVALSHA", STEP_SHA, 0, *args))
            self._sender.send_packed_command([packed])  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if not self._replay([*self._pending, pending], exc):
                self._lost()
                raise
            return
        except BaseException:
            self._lost()
            raise
        self._pending.append(pending)

    def _drop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.disconnect()  # type: ignore[no-untyped-call]
            self.connection.connection_pool.release(sender)

    def _lost(self, *read: Pending) -> None:
        """The answers of the STEPs on their way (and of `read`, taken off them to be read)
        are lost (their connection failed): what they did is unknown. The jobs the worker
        holds go back to their queues (each as it was, whether its start was written or
        not); the starts of the others, the job just run among them, are noted as unsure
        (`_unsure_starts`: if not written, the job is still in its intermediate list)."""
        for pending in (*read, *self._pending):
            given = given_of(pending.args)
            if given is not None:
                self._unsure_starts[given[0]] = given[1]
        self._pending.clear()
        self._drop_sender()
        self._return_held()

    def _replay(self, lost: list[Pending], error: RedisConnectionError) -> bool:
        """The STEPs whose connection failed (`lost`, in the order they were sent), run again
        on another connection, in order, each doing only what it had not done (its answer may
        have been lost after it ran: lanescripts.replayed), and their answers acted on;
        whether that worked. A connection error means the server will not run them later:
        its end of the connection is gone (a timeout would not say so, and is not replayed).
        Not when Redis cannot be reached: then what they did stays unknown (`_lost`)."""
        self._pending.clear()
        self._drop_sender()
        answers: list[Any] = []
        failure: RedisError | None = None
        try:
            for pending in lost:
                answers.append(self._evalsha(replayed(pending.args)))
        except RedisError as exc:
            failure = exc
        for pending, answer in zip(lost, answers, strict=False):
            self._after(answer, pending.job, pending.queue, None, pending.sent_at)
        if failure is not None:  # the rest stay unknown, for `_lost`
            self._pending.extend(lost[len(answers) :])
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

    def _unlist(self, job: Job) -> None:
        """Take a failing job off its intermediate list when the STEP that was to start it
        was lost with its connection (if it got through, the job is not listed: no-op), so a
        plain `rq worker`'s cleanup of that list does not fail it a second time (phase1's own
        takes it off the list later, phase1.engine.leftbehind)."""
        intermediate = self._unsure_starts.pop(job.id, None)
        self._unsure_starts.clear()
        if intermediate is None:
            return
        try:
            self.connection.lrem(intermediate, 1, job.id)
        except RedisError as exc:  # left listed: the maintenance pass takes it off
            self.log.warning(
                "Worker %s: job %s left in %s: %s", self.name, job.id, intermediate, exc
            )

    def _settle(self, *, keep_last: bool = False) -> None:
        """Read the answers of the STEPs still on their way, oldest first; with `keep_last`,
        all but the one sent last (the worker then does not wait for it)."""
        while len(self._pending) > keep_last:
            pending = self._pending.popleft()
            try:
                answer = pending.connection.read_response()
            except ResponseError as exc:  # refused: nothing it does was written
                self._refused(pending, exc)
                continue
            except RedisConnectionError as exc:
                if not self._replay([pending, *self._pending], exc):
                    self._lost(pending)
                    raise
                continue
            except BaseException:
                self._lost(pending)
                raise
            self._after(answer, pending.job, pending.queue, None, pending.sent_at)

    def _refused(self, refused: Pending, error: ResponseError) -> None:
        """A STEP Redis refused, with the STEPs sent after it, in order. NOSCRIPT (a Redis
        restarted or flushed) runs it again; so does any other refusal (out of memory, say)
        that a later STEP got through (that one ran). A refusal no later STEP got past fails
        the job being finished, as any failure of its bookkeeping does."""
        later = list(self._pending)
        self._pending.clear()
        outcomes: list[Any] = [error]
        for pending in later:
            try:
                outcomes.append(pending.connection.read_response())
            except ResponseError as exc:
                outcomes.append(exc)
            except BaseException:
                self._lost(refused, *later)  # none of them is acted on now
                raise
        steps = [refused, *later]
        for k, (pending, outcome) in enumerate(zip(steps, outcomes, strict=True)):
            ran_after = any(not isinstance(o, Exception) for o in outcomes[k + 1 :])
            if isinstance(outcome, Exception):
                if not isinstance(outcome, NoScriptError) and not ran_after:
                    self._return_held()
                    raise outcome
                try:
                    outcome = self._again(pending, steps[k + 1] if ran_after else None)
                except RedisError as exc:
                    if isinstance(outcome, NoScriptError) or not ran_after:
                        self._return_held()
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
            self._after(outcome, pending.job, pending.queue, None, pending.sent_at)

    def _again(self, pending: Pending, ran_after: Pending | None) -> Any:
        """Run a refused STEP again, synchronously. When a STEP after it did run: without
        the start of the job that one finished (its start would come after its end), and
        without taking more jobs (they would come after the ones that STEP took)."""
        args, taken_off = pending.args, None
        if ran_after is not None:
            given = given_of(args)
            if given is not None and ran_after.job is not None and given[0] == ran_after.job.id:
                taken_off = (given[1], given[0])  # its start took it off this list
                at = given_at(args)
                args = [*args[:at], "none", *args[at + GIVEN_ARGS :]]
            at = next_at(args)
            if args[at] == "next":  # 'next', execution id, take, peeks, ...
                args = [*args[: at + 3], 0, *args[at + 4 :]]
        answer = self._evalsha(args)
        if taken_off is not None:
            self.connection.lrem(taken_off[0], 1, taken_off[1])
        return answer

    def _settle_quietly(self) -> None:
        try:
            self._settle()
        except Exception as exc:  # the failure path that follows reports the job itself
            self.log.warning("Worker %s: the last bookkeeping step failed: %s", self.name, exc)
