"""FastWorker.queues_to_take, the hook to pause queues: every take of the worker (TAKE, the
step pipeline's takes and peeks, RQ's blocking dequeue) asks it; a queue it leaves out keeps
its jobs, and with no queue left the worker takes nothing and waits without spinning."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausing_worker import PAUSED_KEY, PausingWorker
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from support import RQ, Processes, wait_until

from phase1.engine import pipeline
from phase1.settings import Settings


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    connection.delete(PAUSED_KEY)
    connection.close()


def _queues(redis: Redis, queue_name: str) -> tuple[Queue, Queue]:
    return (
        Queue(f"{queue_name}-a", connection=redis, serializer=JSONSerializer),
        Queue(f"{queue_name}-b", connection=redis, serializer=JSONSerializer),
    )


def _worker(redis: Redis, queues: tuple[Queue, Queue]) -> PausingWorker:
    return PausingWorker(
        list(queues), connection=redis, serializer=JSONSerializer, name=f"p-{uuid.uuid4().hex[:8]}"
    )


def test_a_queue_left_out_keeps_its_jobs_while_the_others_drain(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick jobs (so STEPs take and peek ahead) on both queues, one of them paused: the
    paused one's jobs are neither run nor taken into its intermediate list."""
    monkeypatch.setattr(pipeline, "QUICK_S", 5.0)  # every run counts as quick
    paused, running = _queues(redis, queue_name)
    redis.sadd(PAUSED_KEY, paused.name)
    kept = [paused.enqueue("lane_jobs.noop", result_ttl=600) for _ in range(5)]
    done = [running.enqueue("lane_jobs.noop", result_ttl=600) for _ in range(12)]
    worker = _worker(redis, (paused, running))
    worker.work(burst=True, logging_level="WARNING")
    assert all(job.get_status() == JobStatus.FINISHED for job in done)
    assert [job.get_status() for job in kept] == [JobStatus.QUEUED] * 5
    assert paused.get_job_ids() == [job.id for job in kept]
    assert redis.llen(f"{paused.key}:intermediate") == 0
    assert worker.asked >= len(done)  # asked at every take, not once

    redis.srem(PAUSED_KEY, paused.name)  # taken up again: its jobs run, in order
    worker = _worker(redis, (paused, running))
    worker.work(burst=True, logging_level="WARNING")
    assert all(job.get_status() == JobStatus.FINISHED for job in kept)


def test_a_burst_worker_with_every_queue_left_out_takes_nothing(
    redis: Redis, queue_name: str
) -> None:
    queues = _queues(redis, queue_name)
    redis.sadd(PAUSED_KEY, *(q.name for q in queues))
    jobs = [q.enqueue("lane_jobs.noop", result_ttl=600) for q in queues]
    started = time.monotonic()
    assert _worker(redis, queues).work(burst=True, logging_level="WARNING") is False
    assert time.monotonic() - started < 10
    assert [job.get_status() for job in jobs] == [JobStatus.QUEUED] * 2


def test_a_worker_with_no_queue_to_take_from_waits_without_spinning_then_takes(
    redis: Redis, settings: Settings, processes: Processes
) -> None:
    """A real worker process on two queues. Both paused: their jobs wait, and the worker idles
    (a small share of a core at most). One taken up again: its job runs while the other's
    waits. The other taken up again too, while the worker blocks on the first: its job runs
    within seconds."""
    first = Queue(settings.queue, connection=redis, serializer=JSONSerializer)
    second = Queue(f"{settings.queue}-b", connection=redis, serializer=JSONSerializer)
    redis.sadd(PAUSED_KEY, first.name, second.name)
    argv = [RQ, "worker", first.name, second.name, "--url", settings.redis_url or ""]
    argv += ["--serializer", "rq.serializers.JSONSerializer"]
    argv += ["--worker-class", "pausing_worker.PausingWorker"]
    env = {"PYTHONPATH": f"{Path(__file__).parents[1]}:{Path(__file__).parents[2]}"}
    worker = processes.start(argv, settings, env=env)
    waiting = first.enqueue("lane_jobs.noop", result_ttl=600)
    other = second.enqueue("lane_jobs.noop", result_ttl=600)
    wait_until(
        lambda: (
            b"Listening on" in Path(processes.tmp_path / "proc-0.log").read_bytes()
            or worker.poll() is not None
        ),
        timeout=60,
        what="the worker started",
    )
    assert worker.poll() is None, processes.log()
    cpu_before = _cpu_seconds(worker.pid)
    window = time.monotonic() + 2.5
    while time.monotonic() < window:  # the jobs must stay queued all this while
        assert waiting.get_status() == other.get_status() == JobStatus.QUEUED
        time.sleep(0.1)
    cpu = _cpu_seconds(worker.pid) - cpu_before
    assert cpu < 1.0, f"the paused worker used {cpu:.2f} s of CPU in 2.5 s"
    assert redis.llen(f"{first.key}:intermediate") == redis.llen(f"{second.key}:intermediate") == 0

    redis.srem(PAUSED_KEY, second.name)
    wait_until(lambda: other.get_status() == JobStatus.FINISHED, timeout=30, what="its job run")
    assert waiting.get_status() == JobStatus.QUEUED and first.get_job_ids() == [waiting.id]

    redis.srem(PAUSED_KEY, first.name)
    wait_until(lambda: waiting.get_status() == JobStatus.FINISHED, timeout=30, what="the job run")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
