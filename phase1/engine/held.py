"""The jobs a FastWorker holds: taken off their queue (into RQ's intermediate list) and not
started yet, or started by a STEP and not run yet; and putting them back on their queue as
they were (UNSTART for a started one, HAND_BACK from the intermediate list for the others).

A held job must not start once the maintenance pass (phase1.engine.leftbehind) may have put it
back on its queue (seen in the intermediate list for STUCK_AFTER): another worker could run
it too. So a job held GIVE_BACK_AFTER seconds (the quick job it waited behind turned slow, or
the worker stalled) goes back instead of starting. One held LET_GO_AFTER is not even handed
back: the pass may have put it back and another worker taken it into the same list, where a
hand-back would take it from that one; it is left to the pass.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text

from phase1.engine.leftbehind import STUCK_AFTER
from phase1.engine.scripts import HAND_BACK, STARTED_FIELDS, UNSTART

if TYPE_CHECKING:
    from phase1.engine.worker import FastWorker

GIVE_BACK_AFTER = STUCK_AFTER / 4
LET_GO_AFTER = STUCK_AFTER * 3 / 4


def before_start(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields STEP's start changes, as they were (for UNSTART)."""
    return {f: fields[f] for f in STARTED_FIELDS if f in fields}


@dataclass
class Taken:
    """A job taken off its queue (into its intermediate list), started or not: by a STEP
    (`lane`), or by TAKE (then never started before it runs, and with no hash kept)."""

    job: Job
    queue: Queue
    pttl: int  # the job key's expiry before its start (-1: none)
    before: dict[bytes, bytes]  # STARTED_FIELDS as they were
    execution: Execution | None = None  # once started
    taken_at: float = float("inf")  # time.monotonic() when the call that took it was sent
    lane: bool = True

    def held_for(self) -> float:
        """How long it has waited in the worker's hands unstarted, at least (0 if started)."""
        return 0.0 if self.execution is not None else max(0.0, time.monotonic() - self.taken_at)


@dataclass
class HeldJobs:
    """The job to run next and the ones taken after it, in order, and putting them back."""

    worker: FastWorker
    next: Taken | None = None
    after: deque[Taken] = field(default_factory=deque)

    def __bool__(self) -> bool:
        return self.next is not None or bool(self.after)

    def following(self) -> Taken | None:
        """The job held to run next, if a STEP took it."""
        return self.next if self.next is not None and self.next.lane else None

    def started_next(self) -> bool:
        """Whether a STEP has started the job to run next (the worker stays busy)."""
        nxt = self.next
        return nxt is not None and nxt.lane and nxt.execution is not None

    def keep(self, taken: Taken) -> None:
        """Hold a job: as the one to run next, or after the ones held."""
        if self.next is None:
            self.next = taken
        else:
            self.after.append(taken)

    def pop(self, job: Job) -> Taken | None:
        """`job` is run now: no longer held (the one after it is next). Its Taken if a STEP
        took it."""
        nxt = self.next
        if nxt is None or nxt.job.id != job.id:
            return None
        self.next = self.after.popleft() if self.after else None
        return nxt if nxt.lane else None

    def too_long(self) -> bool:
        """Whether the job held to run next has waited unstarted GIVE_BACK_AFTER seconds (the
        jobs held behind it were taken after it)."""
        return self.next is not None and self.next.held_for() >= GIVE_BACK_AFTER

    def return_all(self) -> None:
        """Put back the jobs held, the last first, so they keep their order; one held
        unstarted LET_GO_AFTER seconds is left to the maintenance pass."""
        held = [self.next] if self.next is not None else []
        held += self.after
        self.next, self.after = None, deque()
        for taken in reversed(held):
            waited = taken.held_for()
            if waited >= LET_GO_AFTER:
                self.worker.log.warning(
                    "Worker %s: job %s waited %.0f s unstarted in this worker's hands; the "
                    "maintenance pass puts it back on its queue (it may have already)",
                    self.worker.name,
                    taken.job.id,
                    waited,
                )
                continue
            self.put_back(taken)

    def put_back(self, taken: Taken) -> None:
        """Back to the front of its queue: a started job as it was before its start, and one
        whose start was not written (or is not known to be) from the intermediate list."""
        if taken.execution is not None and self.unstart(
            taken.queue.key,
            taken.job.id,
            taken.job.origin,
            taken.execution.id,
            taken.pttl,
            taken.before,
        ):
            return
        self.hand_back(taken.queue.key, taken.job.id)

    def put_back_unread(
        self,
        queue_key: str,
        job_id: str,
        fields: dict[bytes, bytes],
        pttl: int,
        started: tuple[str, float] | None,
    ) -> None:
        """Put back a job a STEP took whose hash could not be read (`started`: the execution
        id and moment the STEP started it with, if it did)."""
        if started is None:
            self.hand_back(queue_key, job_id)
            return
        origin = as_text(fields.get(b"origin", b""))
        self.unstart(queue_key, job_id, origin, started[0], int(pttl), before_start(fields))

    def unstart(
        self,
        queue_key: str,
        job_id: str,
        origin: str,
        execution_id: str,
        pttl: int,
        before: dict[bytes, bytes],
    ) -> bool:
        """UNSTART; whether the job was started by this worker (and is back on its queue)."""
        worker = self.worker
        args: list[Any] = [job_id, worker.job_class.key_for(job_id), origin]
        args += [execution_id, queue_key, worker.executions_key, pttl]
        for name in STARTED_FIELDS:
            value = before.get(name)
            args += [name, "0", ""] if value is None else [name, "1", value]
        done = True  # on an error, not handed back either: left started for the cleanup
        try:
            done = bool(worker.connection.eval(UNSTART, 0, *args))
            if done:
                worker.log.info("Worker %s: put job %s back on %s", worker.name, job_id, queue_key)
        except RedisError as exc:  # left started: the abandoned-job cleanup finds it
            worker.log.warning("Worker %s: could not put job %s back: %s", worker.name, job_id, exc)
        worker.executions.pop(execution_id, None)
        worker.note_state(None)
        return done

    def hand_back(self, queue_key: str, job_id: str, *, from_intermediate: bool = True) -> None:
        """A job taken and not started, back to the front of its queue."""
        worker = self.worker
        intermediate = IntermediateQueue(queue_key, worker.connection).key
        try:
            if from_intermediate:
                back = worker.connection.eval(HAND_BACK, 2, intermediate, queue_key, job_id)
            else:  # RQ's BLPOP: the id is in no list
                back = worker.connection.lpush(queue_key, job_id)
            if back:
                worker.log.info("Worker %s: put job %s back on %s", worker.name, job_id, queue_key)
        except RedisError as exc:  # left listed: the maintenance pass puts it back
            worker.log.warning("Worker %s: could not put job %s back: %s", worker.name, job_id, exc)
