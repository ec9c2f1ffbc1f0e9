"""A worker on an RQ it was not tested with (phase1.engine.rqcompat): it says so in one line and
runs RQ's own paths, so none of the engine's Lua reaches Redis and the jobs still complete.

The worker runs in a process of its own where `rq.__version__` reads 3.9.0 (a sitecustomize
module sets it before phase1 loads): the version is what changes, not the check."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from support import RQ, Processes

from faults.faultkit import OwnRedis
from phase1.engine import rqcompat, scripts
from phase1.settings import Settings

WARNING = "running RQ's own worker paths"
JOBS = 5


@pytest.mark.timeout(240)
def test_a_worker_on_an_untested_rq_runs_rqs_own_paths(
    own_redis: Callable[..., OwnRedis], settings: Settings, processes: Processes, tmp_path: Path
) -> None:
    server = own_redis()
    redis = Redis.from_url(server.url)
    patched = tmp_path / "untested-rq"
    patched.mkdir()
    (patched / "sitecustomize.py").write_text('import rq\n\nrq.__version__ = "3.9.0"\n')
    queue = Queue(settings.queue, connection=redis, serializer=JSONSerializer)
    jobs = [queue.enqueue("lane_jobs.noop", result_ttl=600) for _ in range(JOBS)]

    argv = [RQ, "worker", settings.queue, "--burst", "--url", server.url]
    argv += ["--serializer", "rq.serializers.JSONSerializer"]
    argv += ["--worker-class", "phase1.worker.Phase1Worker"]
    tests = Path(__file__).parents[1]
    env = {"PYTHONPATH": f"{patched}:{tests}", "REDIS_URL": server.url}
    worker = processes.start(argv, settings, env=env)
    # RQ's own teardown may wait out its command listener's 60 s poll before it exits (the
    # engine polls every second; on an untested RQ it leaves RQ's listener as it is).
    assert worker.wait(timeout=150) == 0, processes.log()

    log = processes.log()
    lines = [line for line in log.splitlines() if WARNING in line]
    assert len(lines) == 1, log
    assert "rq 3.9.0" in lines[0] and f"rq {rqcompat.TESTED_RQ}" in lines[0], lines
    assert all(job.get_status() == JobStatus.FINISHED for job in jobs), log
    assert redis.xlen(f"rq:results:{jobs[0].id}") == 1
    shas = [hashlib.sha1(text.encode()).hexdigest() for text in scripts.ALL.values()]
    assert redis.script_exists(*shas) == [False] * len(shas)  # RQ's paths ran, not the engine's
    assert queue.count == 0 and redis.llen(f"{queue.key}:intermediate") == 0


def test_the_same_worker_on_the_tested_rq_runs_the_engines_scripts(
    own_redis: Callable[..., OwnRedis], settings: Settings, processes: Processes
) -> None:
    """The control: without the patch the same worker says nothing and loads the engine's
    scripts (so the check above can see a difference)."""
    server = own_redis()
    redis = Redis.from_url(server.url)
    queue = Queue(settings.queue, connection=redis, serializer=JSONSerializer)
    jobs = [queue.enqueue("lane_jobs.noop", result_ttl=600) for _ in range(JOBS)]
    argv = [RQ, "worker", settings.queue, "--burst", "--url", server.url]
    argv += ["--serializer", "rq.serializers.JSONSerializer"]
    argv += ["--worker-class", "phase1.worker.Phase1Worker"]
    env = {"PYTHONPATH": str(Path(__file__).parents[1]), "REDIS_URL": server.url}
    worker = processes.start(argv, settings, env=env)
    assert worker.wait(timeout=60) == 0, processes.log()
    assert WARNING not in processes.log()
    assert all(job.get_status() == JobStatus.FINISHED for job in jobs)
    step = hashlib.sha1(scripts.STEP.encode()).hexdigest()
    take = hashlib.sha1(scripts.TAKE.encode()).hexdigest()
    assert redis.script_exists(step, take) != [False, False]
