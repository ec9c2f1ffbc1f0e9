"""Jobs a worker took off their queue and died before starting go back to the front of it.

RQ moves a job it dequeues to its queue's intermediate list and starts it a moment later;
phase1's worker also holds one or two taken jobs there while a quick job runs. A worker that
dies in between leaves them in that list. RQ's maintenance *fails* such a job ("Job was stuck
in intermediate queue"), through a failure path that runs none of the job's callbacks: a job
with no retry left ends failed without having run, and a Phase 1 job's PostgreSQL record stays
`pending` for good, with no attempt and no dead-letter entry (a retried one spends a retry on
a run that never happened). phase1's workers run this pass in its place: the job never
started, so it is put back where it was, at the front of its queue, with nothing counted.

A job counts as left behind once it has been in the list at every pass for `STUCK_AFTER`
seconds (RQ's own threshold: no live worker holds a taken job that long). The sightings are
kept in one hash per list, and a job not in the list at a pass loses its sighting, so a job
that leaves the list and is taken again later starts over.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import worker_registration
from rq.queue import Queue
from rq.registry import clean_registries
from rq.utils import as_text
from rq.utils import now as utc_now
from rq.worker import BaseWorker

from phase1.engine import rqcompat
from phase1.engine.scripts import PUT_BACK

log = logging.getLogger(__name__)

STUCK_AFTER = 60.0
SIGHTINGS_TTL = 24 * 3600  # a queue no worker looks after any more leaves nothing for good


def sightings_key(queue_name: str) -> str:
    """Hash of the jobs in a queue's intermediate list, each with the time first seen there."""
    return f"phase1:{queue_name}:intermediate-seen"


def put_back_left_behind(queue: Queue, now: float | None = None) -> list[str]:
    """One pass over `queue`'s intermediate list: note the jobs in it, and put back at the front
    of the queue those noted at every pass for `STUCK_AFTER` seconds. The ids put back."""
    redis = queue.connection
    now = time.time() if now is None else now
    listed = queue.intermediate_queue
    sightings = sightings_key(queue.name)
    in_list = listed.get_job_ids()
    seen = {as_text(k): float(v) for k, v in redis.hgetall(sightings).items()}
    listed_now = set(in_list)
    gone = [job_id for job_id in seen if job_id not in listed_now]
    new: dict[Any, Any] = {j: now for j in in_list if j not in seen}
    with redis.pipeline(transaction=False) as pipe:
        if gone:
            pipe.hdel(sightings, *gone)
        if new:
            pipe.hset(sightings, mapping=new)
        if in_list:
            pipe.expire(sightings, SIGHTINGS_TTL)
        pipe.execute()
    put_back = []
    for job_id in in_list:
        if job_id in new or now - seen[job_id] < STUCK_AFTER:
            continue
        outcome = redis.eval(
            PUT_BACK,
            5,
            listed.key,
            queue.key,
            queue.job_class.key_for(job_id),
            sightings,
            listed.get_first_seen_key(job_id),
            job_id,
        )
        if outcome == 1:
            put_back.append(job_id)
            log.warning(
                "job %s was taken off queue %s by a worker that stopped before starting it; "
                "it is back at the front of the queue",
                job_id,
                queue.name,
            )
        elif outcome == -1:
            log.info("job %s: a stale entry in %s's intermediate list removed", job_id, queue.name)
    return put_back


class PutsBackLeftBehind(BaseWorker):
    """A worker whose registry maintenance runs `put_back_left_behind` in place of RQ's pass
    over the intermediate lists (the rest is RQ's `clean_registries`, unchanged). On an RQ
    the engine was not tested with (rqcompat.supported), RQ's own pass."""

    def clean_registries(self) -> None:
        if not rqcompat.supported():
            super().clean_registries()  # type: ignore[no-untyped-call]
            return
        for queue in self.queues:
            if queue.acquire_maintenance_lock():  # one worker at a time, as RQ
                try:
                    self.log.info(
                        "Worker %s: cleaning registries for queue: %s", self.name, queue.name
                    )
                    clean_registries(queue, rqcompat.exc_handlers(self))
                    worker_registration.clean_worker_registry(queue)
                    put_back_left_behind(queue)
                finally:
                    queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = utc_now()  # type: ignore[assignment]
