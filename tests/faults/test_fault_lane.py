"""The step pipeline with two STEPs on their way (engine.pipeline): Redis's script cache
emptied under them, Redis out of memory for one of them, their connection cut. Every job
still runs once and is recorded once, in RQ's own data model; nothing is left taken or
half-written. STEPs lost with their connection run again, each doing only what it had not
done."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from faults.faultkit import OwnRedis
from phase1.engine import pipeline
from phase1.engine.scripts import STEP_SHA
from phase1.engine.sender import Pending
from phase1.engine.stepargs import Step
from phase1.engine.worker import FastWorker

OwnRedisFactory = Callable[..., OwnRedis]


def _drain(redis: Redis, actions: list[str]) -> tuple[Redis, Queue, list[Job], dict[str, Any]]:
    """Run `lane_jobs.script_fault(action)` jobs in one in-process FastWorker; what its
    refused STEPs looked like: how many STEPs were on their way behind each, and whether a
    later one had run when each was sent again."""
    queue = Queue("lane-faults", connection=redis, serializer=JSONSerializer)
    jobs = [queue.enqueue("lane_jobs.script_fault", a, result_ttl=600) for a in actions]
    worker = FastWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=f"lane-{uuid.uuid4().hex[:8]}"
    )
    seen: dict[str, Any] = {"behind": [], "ran after": [], "worker": worker}
    sender = worker.pipeline.sender
    refused, again = sender.refused, sender.again

    def spy_refused(pending: Pending, error: Exception) -> None:
        seen["behind"].append(len(sender.pending))
        refused(pending, error)  # type: ignore[arg-type]

    def spy_again(pending: Pending, ran_after: Pending | None) -> Any:
        seen["ran after"].append(ran_after is not None)
        return again(pending, ran_after)

    sender.refused = spy_refused  # type: ignore[method-assign]
    sender.again = spy_again  # type: ignore[method-assign]
    worker.work(burst=True, logging_level="WARNING")
    return queue, jobs, seen


def _each_recorded_once(redis: Redis, queue: Queue, jobs: list[Job], worker: FastWorker) -> None:
    for job in jobs:
        assert job.get_status() == JobStatus.FINISHED, job.id
        assert redis.xlen(f"rq:results:{job.id}") == 1, job.id  # one success recorded
        assert redis.zcard(f"rq:executions:{job.id}") == 0
        assert not redis.keys(f"rq:execution:{job.id}:*")
    assert StartedJobRegistry(queue=queue).count == 0
    assert queue.count == 0 and redis.llen(f"{queue.key}:intermediate") == 0
    assert redis.scard(f"rq:worker:{worker.name}:executions") == 0
    assert int(redis.hget(worker.key, "successful_job_count") or 0) == len(jobs)


@pytest.fixture
def redis(own_redis: OwnRedisFactory) -> Iterator[Redis]:
    """A client of a redis-server of the test's own (its script cache is emptied)."""
    connection = Redis.from_url(own_redis().url)
    yield connection
    connection.close()


@pytest.fixture(autouse=True)
def _every_run_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run counts as quick: the worker holds jobs (and sends STEPs ahead) from its
    fourth job on, however slow the machine is today."""
    monkeypatch.setattr(pipeline, "QUICK_S", 5.0)


def test_both_steps_on_their_way_refused_run_again_in_order(redis: Redis) -> None:
    """The cache is emptied while a job runs: the STEP sent at its end and the one sent at
    the next job's end (before the first one's answer was read) are both refused."""
    actions = [""] * 6 + ["flush"] + [""] * 6
    queue, jobs, seen = _drain(redis, actions)
    assert 1 in seen["behind"], seen  # refused with the next STEP on its way behind it
    assert seen["ran after"] and not any(seen["ran after"]), seen
    _each_recorded_once(redis, queue, jobs, seen["worker"])


def test_a_refused_step_whose_successor_ran_does_not_start_a_finished_job(redis: Redis) -> None:
    """Another client loads STEP between the two: the later STEP runs (it finishes the job the
    refused one was to start); the refused one runs again without that start."""
    actions = [""] * 6 + ["flush", "load"] + [""] * 6
    queue, jobs, seen = _drain(redis, actions)
    assert 1 in seen["behind"] and True in seen["ran after"], seen
    _each_recorded_once(redis, queue, jobs, seen["worker"])
    loaded = jobs[7]
    assert redis.hget(loaded.key, "status") == b"finished"
    assert Job.fetch(loaded.id, connection=redis, serializer=JSONSerializer).ended_at is not None


def test_a_step_refused_out_of_memory_runs_again_after_its_successor(redis: Redis) -> None:
    """Redis runs out of memory under the STEP sent at a job's end (it refuses it: nothing
    written) and has room again for the next one, sent at the next job's end before the first
    one's answer was read. The refused STEP runs again after it, without the start of the job
    that one finished, and every job is recorded once."""
    actions = [""] * 6 + ["full", "room"] + [""] * 6
    queue, jobs, seen = _drain(redis, actions)
    assert int(redis.info("errorstats").get("errorstat_OOM", {}).get("count", 0)) >= 1
    assert 1 in seen["behind"] and True in seen["ran after"], seen
    _each_recorded_once(redis, queue, jobs, seen["worker"])
    for job in jobs[6:8]:  # the job it finished, and the one it was to start
        fetched = Job.fetch(job.id, connection=redis, serializer=JSONSerializer)
        assert fetched.get_status() == JobStatus.FINISHED and fetched.ended_at is not None


def test_steps_lost_with_their_connection_run_again_and_each_job_is_recorded_once(
    redis: Redis,
) -> None:
    """A job cuts the worker's STEP connection while it runs: the STEP sent at its end (its
    success, and the next job's start) and the one after it are lost. The worker runs them
    again on another connection, in order: every job is recorded finished once, and none is
    left started (for the orphan sweep to run again) or failed with the connection's error."""
    actions = [""] * 6 + ["cut"] + [""] * 6
    queue, jobs, seen = _drain(redis, actions)
    assert not seen["behind"]  # lost, not refused
    _each_recorded_once(redis, queue, jobs, seen["worker"])


def test_a_step_run_again_after_it_ran_changes_nothing(redis: Redis) -> None:
    """A STEP whose answer is lost after Redis ran it is run again as well: its finish and its
    start each happen only where the first run did not do them, so running again every STEP
    of a drain (each after it ran) changes nothing in Redis."""
    queue = Queue("lane-replays", connection=redis, serializer=JSONSerializer)
    worker = FastWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=f"lane-{uuid.uuid4().hex[:8]}"
    )
    jobs = [queue.enqueue("lane_jobs.script_fault", "", result_ttl=600) for _ in range(12)]
    sent: list[Step] = []
    sender = worker.pipeline.sender
    send = sender.send

    def spy(step: Step, job: Any, queue: Any) -> None:
        sent.append(step)
        send(step, job, queue)

    sender.send = spy  # type: ignore[method-assign]
    worker.work(burst=True, logging_level="WARNING")
    _each_recorded_once(redis, queue, jobs, worker)
    finishing = [step for step in sent if step.finish is not None and step.given is not None]
    assert len(finishing) >= 3, "the drain must send STEPs that finish one job and start another"

    def state() -> Any:
        return (
            [redis.hgetall(job.key) for job in jobs],
            [redis.xlen(f"rq:results:{job.id}") for job in jobs],
            redis.zrange(f"rq:wip:{queue.name}", 0, -1),
            redis.zrange(f"rq:finished:{queue.name}", 0, -1, withscores=True),
            redis.hgetall(worker.key),
            redis.smembers(f"rq:worker:{worker.name}:executions"),
            redis.llen(f"{queue.key}:intermediate"),
        )

    before = state()
    for step in sent:
        redis.evalsha(STEP_SHA, 0, *step.replayed().to_args())
    assert state() == before
