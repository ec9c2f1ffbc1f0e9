"""Taking jobs off RQ's queues for FastWorker: TAKE (one Lua call), hand-back, and the
pop a stop signal may catch before the worker holds the job."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text, get_version

# Take the first waiting job of the queues (in order) and read its hash, in one call. The id
# moves to its queue's intermediate list (RQ's LMOVE, for every queue, not only when there is
# one): a worker that dies before it marks the job started leaves it where the maintenance
# pass finds it and puts it back (phase1.engine.leftbehind), instead of nowhere. Ids whose hash
# is gone are dropped, as RQ skips them.
TAKE = """
-- KEYS: queue keys, in order; ARGV[1]: job key prefix; ARGV[1 + i]: KEYS[i]'s intermediate list
for i, key in ipairs(KEYS) do
  local intermediate = ARGV[i + 1]
  while true do
    local id = redis.call('LMOVE', key, intermediate, 'LEFT', 'RIGHT')
    if not id then
      break
    end
    local hash = redis.call('HGETALL', ARGV[1] .. id)
    if #hash > 0 then
      return {key, id, hash}
    end
    redis.call('LREM', intermediate, 1, id)
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()

# Put a job taken but not started back at the front of its queue.
HAND_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def take_args(queues: list[Queue], job_class: type[Job]) -> tuple[list[str], list[str]]:
    keys = [q.key for q in queues]
    intermediates = [
        IntermediateQueue(k, q.connection).key for k, q in zip(keys, queues, strict=True)
    ]
    return keys, [job_class.redis_job_namespace_prefix, *intermediates]


def taken(
    answer: Any,
    connection: Redis,
    queue_class: type[Queue],
    job_class: type[Job],
    serializer: Any,
    death_penalty_class: Any,
    known: dict[str, Queue] | None = None,
) -> tuple[Job, Queue]:
    """The (job, queue) of a TAKE answer; raises as RQ's dequeue does for a job it cannot read.
    `known`: the worker's own Queue objects by key (no new Queue a job)."""
    queue_key, job_id, flat = as_text(answer[0]), as_text(answer[1]), answer[2]
    queue = (known or {}).get(queue_key) or queue_class.from_queue_key(
        queue_key,
        connection=connection,
        job_class=job_class,
        serializer=serializer,
        death_penalty_class=death_penalty_class,
    )
    job = job_class(job_id, connection=connection, serializer=serializer)
    try:
        job.restore(dict(zip(flat[::2], flat[1::2], strict=True)))
    except Exception as exc:  # as RQ's _fetch_dequeued_job reports it
        exc.job_id = job_id  # type: ignore[attr-defined]
        exc.queue = queue  # type: ignore[attr-defined]
        raise
    return job, queue


def can_take(connection: Redis) -> bool:
    return bool(get_version(connection) >= (6, 2, 0))  # LMOVE


# The job a dequeue popped that the worker does not hold yet: (queue key, job id, whether it
# went to the intermediate list). A stop signal landing then (an idle worker's signal raises
# StopRequested wherever the main thread is) ends the dequeue with the job popped; the worker
# puts it back on its way out (FastWorker.work). RQ's own worker loses it there.
popped: tuple[str, str, bool] | None = None


def note_popped(result: Any, intermediate: bool) -> None:
    global popped
    if result:
        popped = (as_text(result[0]), as_text(result[1]), intermediate)


class FastQueue(Queue):
    """RQ's Queue whose dequeue takes a waiting job and its hash in one round trip."""

    @classmethod
    def lpop(cls, queue_keys: Any, timeout: int | None, connection: Redis | None = None) -> Any:
        result = super().lpop(queue_keys, timeout, connection=connection)
        note_popped(result, False)
        return result

    @classmethod
    def lmove(cls, connection: Redis, queue_key: str, timeout: int | None) -> Any:
        result = super().lmove(connection, queue_key, timeout)
        note_popped(result, True)
        return result

    @classmethod
    def dequeue_any(
        cls,
        queues: Any,
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        job_cls: type[Job] = job_class or Job
        answer: Any = None
        if can_take(connection):
            keys, args = take_args(queues, job_cls)
            answer = connection.register_script(TAKE)(keys=keys, args=args)
        if not answer:  # nothing waiting: RQ's own (blocking) dequeue
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        note_popped(answer, True)
        return taken(answer, connection, cls, job_cls, serializer, death_penalty_class)


# How often a worker waiting for a job asks again which queues it may take from: a queue
# paused (or resumed) while it waits is seen within this many seconds.
TAKE_RECHECK_S = 1


def wait_and_take(
    worker: Any, timeout: int | None, max_idle_time: int | None
) -> tuple[Job, Queue] | None:
    """RQ's dequeue_job_and_maintain_ttl, taking from `worker.queues_to_take()` and blocking
    in slices of at most TAKE_RECHECK_S, so that the queues are asked for again that often.
    With no queue to take from, it takes nothing (a burst worker returns at once)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from rq.exceptions import DequeueTimeout
    from rq.worker import WorkerStatus

    worker.set_state(WorkerStatus.IDLE)
    worker.procline("Listening on " + ",".join(worker.queue_names()))
    idle_since = time.monotonic()
    wait_for_redis = 1.0
    while True:
        try:
            worker.heartbeat()
            if worker.should_run_maintenance_tasks:
                worker.run_maintenance_tasks()
            queues = worker.queues_to_take()
            block: int | None = None
            if timeout is not None:
                block = max(1, min(timeout, TAKE_RECHECK_S))
                if max_idle_time is not None:
                    left = max_idle_time - (time.monotonic() - idle_since)
                    if left <= 0:
                        return None
                    block = max(1, min(block, math.ceil(left)))
            if not queues:
                if block is None:
                    return None
                time.sleep(block)
                continue
            try:
                result = worker.queue_class.dequeue_any(
                    queues,
                    block,
                    connection=worker.connection,
                    job_class=worker.job_class,
                    serializer=worker.serializer,
                    death_penalty_class=worker.death_penalty_class,
                )
            except DequeueTimeout:
                continue
            if result is not None:
                job, queue = result
                worker.reorder_queues(reference_queue=queue)
                job.redis_server_version = worker.get_redis_server_version()
                worker.log.info("Worker %s: %s: %s", worker.name, queue.name, job.id)
            worker.heartbeat()
            return result  # type: ignore[no-any-return]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            worker.log.error(
                "Worker %s: could not connect to Redis: %s; retrying in %d s",
                worker.name,
                exc,
                wait_for_redis,
            )
            time.sleep(wait_for_redis)
            wait_for_redis = min(wait_for_redis * worker.exponential_backoff_factor, 60.0)
