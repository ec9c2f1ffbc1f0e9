"""Taking jobs off RQ's queues for FastWorker: TAKE's arguments and answer (the script is in
phase1.engine.scripts), and the pop a stop signal may catch before the worker holds the job."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text, get_version

from phase1.engine.scripts import TAKE


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
