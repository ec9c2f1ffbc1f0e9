"""A worker cut off from Redis and PostgreSQL with a failed attempt in hand: before it
writes anything, it learns whether another worker took the job over meanwhile (the orphan
sweep gave it up for dead). Nothing it wrote would get through while cut off, and once the
network is back the answer decides what it may write. PostgreSQL alone down is an outage, not
a partition: the usual failure path then."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job

from phase1.engine import rqcompat
from phase1.jobs import failure

# How long a cut-off worker waits for the network before it handles the failure as usual.
CUT_OFF_WAIT = 600.0


def taken_over(worker: Any, job: Job, note: str) -> bool:
    """Whether the job's attempt in `worker` was taken over (failure.superseded_here):
    then its attempt is marked superseded with `note`, and the worker leaves the job alone.
    Waits (up to CUT_OFF_WAIT) while neither PostgreSQL nor Redis answers."""
    deadline = time.monotonic() + CUT_OFF_WAIT
    backoff = 1.0
    while True:
        verdict = failure.superseded_here(job, note)
        if verdict is not None:
            return verdict
        try:
            worker.connection.ping()
        except RedisError:
            pass
        else:  # Redis answers: ask PostgreSQL once more (the network may be back)
            return bool(failure.superseded_here(job, note))
        if rqcompat.stop_requested(worker) or time.monotonic() > deadline:
            return False
        worker.log.warning(
            "Worker %s: cut off from Redis and PostgreSQL with job %s's failure in hand; "
            "waiting to learn whether another worker took it over",
            worker.name,
            job.id,
        )
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
