"""The jobs a LaneWorker holds: taken off their queue (into RQ's intermediate list) and not
started yet, or started by a STEP and not run yet; and putting them back on their queue, as
they were (UNSTART for a started one, a hand-back from the intermediate list for the others).

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
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text

from phase1.engine.leftbehind import STUCK_AFTER
from phase1.engine.scripts import HAND_BACK, STARTED_FIELDS, UNSTART
from phase1.engine.steps import StepsOnTheirWay

GIVE_BACK_AFTER = STUCK_AFTER / 4
LET_GO_AFTER = STUCK_AFTER * 3 / 4


def before_start(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields STEP's start changes, as they were (for UNSTART)."""
    return {f: fields[f] for f in STARTED_FIELDS if f in fields}


@dataclass
class Taken:
    """A job the lane took off its queue (into its intermediate list), started or not."""

    job: Job
    queue: Queue
    pttl: int  # the job key's expiry before its start (-1: none)
    before: dict[bytes, bytes]  # STARTED_FIELDS as they were
    execution: Execution | None = None  # once started
    taken_at: float = float("inf")  # time.monotonic() when the call that took it was sent

    def held_for(self) -> float:
        """How long it has waited in the worker's hands unstarted, at least (0 if started)."""
        return 0.0 if self.execution is not None else max(0.0, time.monotonic() - self.taken_at)


class HeldJobs(StepsOnTheirWay):
    """A LaneWorker's held jobs: the one to run next (`_prefetched`, with `_prefetched_taken`
    when the lane took it, else TAKE did at `_take_sent_at`) and the ones after it
    (`_peeked`), and putting them back."""

    job_class: type[Job]
    executions: dict[str, Execution]
    _prefetched: tuple[Job, Queue] | None
    _prefetched_taken: Taken | None
    _take_sent_at: float
    _peeked: deque[Taken]
    _worker_executions: str
    _state_written: str | None

    def _held_too_long(self) -> bool:
        """Whether the job held to run next has waited unstarted GIVE_BACK_AFTER seconds (the
        jobs held behind it were taken after it)."""
        if self._prefetched is None:
            return False
        taken = self._prefetched_taken
        if taken is None:  # taken by TAKE
            return time.monotonic() - self._take_sent_at >= GIVE_BACK_AFTER
        return taken.held_for() >= GIVE_BACK_AFTER

    def _give_back_stale(self) -> bool:
        """Put back the jobs held, if the one to run next waited too long (`_held_too_long`);
        whether it did."""
        if not self._held_too_long():
            return False
        self._settle()
        self._return_held()
        return True

    def _return_held(self) -> None:
        """Put back the jobs held to run next, the last first, so they keep their order; one
        held unstarted LET_GO_AFTER seconds is left to the maintenance pass."""
        held, self._peeked = list(self._peeked), deque()
        prefetched, following = self._prefetched, self._prefetched_taken
        self._prefetched, self._prefetched_taken = None, None
        if prefetched is not None:  # taken by TAKE (not started) unless the lane took it
            took = Taken(prefetched[0], prefetched[1], -1, {}, taken_at=self._take_sent_at)
            held.insert(0, following or took)
        for held_job in reversed(held):
            waited = held_job.held_for()
            if waited >= LET_GO_AFTER:
                self.log.warning(
                    "Worker %s: job %s waited %.0f s unstarted in this worker's hands; the "
                    "maintenance pass puts it back on its queue (it may have already)",
                    self.name,
                    held_job.job.id,
                    waited,
                )
                continue
            self._put_back(held_job)

    def _put_back(self, taken: Taken) -> None:
        """Back to the front of its queue: a started job as it was before its start, and one
        whose start was not written (or is not known to be) from the intermediate list."""
        if taken.execution is not None and self._unstart(
            taken.queue.key,
            taken.job.id,
            taken.job.origin,
            taken.execution.id,
            taken.pttl,
            taken.before,
        ):
            return
        self._hand_back(taken.queue.key, taken.job.id)

    def _put_back_unread(
        self,
        queue_key: str,
        job_id: str,
        fields: dict[bytes, bytes],
        pttl: int,
        started: tuple[str, float] | None,
    ) -> None:
        if started is None:
            self._hand_back(queue_key, job_id)
            return
        origin = as_text(fields.get(b"origin", b""))
        self._unstart(queue_key, job_id, origin, started[0], int(pttl), before_start(fields))

    def _unstart(
        self,
        queue_key: str,
        job_id: str,
        origin: str,
        execution_id: str,
        pttl: int,
        before: dict[bytes, bytes],
    ) -> bool:
        """UNSTART; whether the job was started by this worker (and is back on its queue)."""
        args: list[Any] = [job_id, self.job_class.key_for(job_id), origin]
        args += [execution_id, queue_key, self._worker_executions, pttl]
        for field in STARTED_FIELDS:
            value = before.get(field)
            args += [field, "0", ""] if value is None else [field, "1", value]
        done = True  # on an error, not handed back either: left started for the cleanup
        try:
            done = bool(self.connection.eval(UNSTART, 0, *args))
            if done:
                self.log.info("Worker %s: put job %s back on %s", self.name, job_id, queue_key)
        except RedisError as exc:  # left started: the abandoned-job cleanup finds it
            self.log.warning("Worker %s: could not put job %s back: %s", self.name, job_id, exc)
        self.executions.pop(execution_id, None)
        self._state_written = None
        return done

    def _hand_back(self, queue_key: str, job_id: str, *, from_intermediate: bool = True) -> None:
        intermediate = IntermediateQueue(queue_key, self.connection).key
        try:
            if from_intermediate:
                back = self.connection.eval(HAND_BACK, 2, intermediate, queue_key, job_id)
            else:  # RQ's BLPOP: the id is in no list
                back = self.connection.lpush(queue_key, job_id)
            if back:
                self.log.info("Worker %s: put job %s back on %s", self.name, job_id, queue_key)
        except RedisError as exc:  # left listed: the maintenance pass puts it back
            self.log.warning("Worker %s: could not put job %s back: %s", self.name, job_id, exc)
