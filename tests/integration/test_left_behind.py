"""Jobs a worker took off their queue and died before starting (phase1.engine.leftbehind).

RQ's maintenance fails such a job ("stuck in intermediate queue") without its callbacks; a
phase1 worker puts it back at the front of its queue instead. On a real Redis, and with a
real worker process and PostgreSQL for a Phase 1 job."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support import Processes, wait_until

from phase1.context import build
from phase1.domain import audit, plans
from phase1.engine.dequeue import FastQueue
from phase1.engine.leftbehind import STUCK_AFTER, put_back_left_behind, sightings_key
from phase1.jobs import approval, deadletter
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

T = 1_000_000.0  # the passes' clock


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def queue(redis: Redis, queue_name: str) -> Queue:
    return Queue(queue_name, connection=redis, serializer=JSONSerializer)


def _enqueue(queue: Queue, count: int) -> list[str]:
    return [queue.enqueue("bench.jobs.noop", result_ttl=600).id for _ in range(count)]


def _take(queue: Queue) -> str:
    """What a worker's dequeue does: the first waiting job moves to the intermediate list."""
    job_id = queue.connection.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    assert job_id is not None
    return str(job_id.decode())


def _listed(queue: Queue) -> list[str]:
    return queue.intermediate_queue.get_job_ids()


def test_a_job_left_taken_goes_back_to_the_front_once_seen_there_long_enough(
    queue: Queue,
) -> None:
    first, second = _enqueue(queue, 2)
    assert _take(queue) == first
    assert put_back_left_behind(queue, now=T) == []  # first seen
    assert put_back_left_behind(queue, now=T + STUCK_AFTER - 1) == []
    assert _listed(queue) == [first] and queue.get_job_ids() == [second]

    assert put_back_left_behind(queue, now=T + STUCK_AFTER + 1) == [first]
    assert queue.get_job_ids() == [first, second] and _listed(queue) == []
    job = Job.fetch(first, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED
    assert not queue.connection.exists(sightings_key(queue.name))
    assert not queue.connection.exists(queue.intermediate_queue.get_first_seen_key(first))


def test_a_job_that_left_the_list_starts_over_when_taken_again(queue: Queue) -> None:
    (job_id,) = _enqueue(queue, 1)
    _take(queue)
    assert put_back_left_behind(queue, now=T) == []
    queue.connection.lmove(queue.intermediate_queue_key, queue.key, "RIGHT", "LEFT")  # handed back
    assert put_back_left_behind(queue, now=T + 30) == []  # its sighting is dropped
    _take(queue)
    assert put_back_left_behind(queue, now=T + STUCK_AFTER + 1) == []  # seen anew
    assert _listed(queue) == [job_id]
    assert put_back_left_behind(queue, now=T + 2 * STUCK_AFTER + 2) == [job_id]


def test_a_listed_job_not_waiting_to_run_is_only_taken_off_the_list(queue: Queue) -> None:
    """Started (the worker running it looks after it), already back on its queue (it must
    not be queued twice) or gone: none goes on the queue again."""
    started, queued_too, gone, waiting = _enqueue(queue, 4)
    for _ in range(4):
        _take(queue)
    redis = queue.connection
    redis.hset(Job.key_for(started), "status", JobStatus.STARTED.value)
    redis.rpush(queue.key, queued_too)
    redis.delete(Job.key_for(gone))
    assert put_back_left_behind(queue, now=T) == []
    assert put_back_left_behind(queue, now=T + STUCK_AFTER + 1) == [waiting]
    assert _listed(queue) == []
    assert queue.get_job_ids() == [waiting, queued_too]


def test_a_phase1_job_a_dead_worker_took_runs_once_and_fails_nothing(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    """Without a retry left: RQ's own pass failed it without running it, and its record in
    PostgreSQL stayed `pending` with no attempt and no dead-letter entry."""
    ctx = build(make_settings(max_retries=0, reconcile_interval=1))  # maintenance every 1 s
    try:
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, "Left behind", SAMPLE_ANALYSIS).id
        job_id = approval.approve(ctx, plan_id).job_id
        queue = ctx.queue()
        taken = FastQueue.dequeue_any(
            [queue], None, connection=ctx.redis, serializer=queue.serializer
        )
        assert taken is not None and taken[0].id == job_id  # ... and the worker died
        # Seen there two minutes ago, by RQ's pass and by phase1's: both are due at once.
        ago = time.time() - 2 * STUCK_AFTER
        ctx.redis.set(queue.intermediate_queue.get_first_seen_key(job_id), ago)
        ctx.redis.hset(sightings_key(queue.name), job_id, ago)

        worker = processes.worker(ctx.settings)
        wait_until(
            lambda: jobs.view(ctx, job_id).status in ("completed", "failed"),
            timeout=30,
            what="the job's end",
        )
        assert jobs.view(ctx, job_id).status == "completed"
        with ctx.transaction() as conn:
            attempts = audit.attempts(conn, job_id)
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "completed")]
        wait_until(
            lambda: (
                Job.fetch(job_id, connection=ctx.redis, serializer=queue.serializer).get_status()
                == JobStatus.FINISHED
            ),
            timeout=10,
            what="RQ's finished status",
        )
        assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is None
        assert _listed(queue) == [] and queue.failed_job_registry.count == 0
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    finally:
        ctx.close()
