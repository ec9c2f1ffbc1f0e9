"""The options every Phase 1 job is enqueued with, checked on fakeredis with RQ's own
SimpleWorker in burst mode (no network)."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis
import pytest
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from phase1.jobs.queue import FAILURE_CALLBACK, job_options, retry_policy
from phase1.settings import Settings


def always_fails(_payload: object) -> None:
    raise RuntimeError("boom")


def test_default_policy_is_three_retries_after_1_5_30_seconds_and_a_10s_timeout() -> None:
    options = job_options(Settings())
    retry = options["retry"]
    assert retry.max == 3
    assert retry.intervals == [1, 5, 30]
    assert options["job_timeout"] == 10
    assert options["on_failure"].name == FAILURE_CALLBACK


def test_no_retries_means_no_retry_object() -> None:
    assert retry_policy(Settings(max_retries=0)) is None


@pytest.mark.parametrize(
    ("max_retries", "intervals", "expected_waits"),
    [
        (3, [1, 5, 30], [1, 5, 30]),
        (5, [1, 2], [1, 2, 2, 2, 2]),  # the last interval repeats, not RQ's first
        (2, [1, 5, 30], [1, 5]),
    ],
)
def test_rq_waits_the_configured_interval_before_each_retry(
    max_retries: int, intervals: list[float], expected_waits: list[float]
) -> None:
    settings = Settings(max_retries=max_retries, retry_intervals=intervals)
    job = Job.create(always_fails, args=[{}], connection=fakeredis.FakeStrictRedis())
    retry = retry_policy(settings)
    assert retry is not None
    job.retries_left = retry.max
    job.retry_intervals = retry.intervals
    waits = []
    while job.should_retry:
        waits.append(job.get_retry_interval())
        job.retries_left -= 1
    assert waits == expected_waits


def test_a_failed_attempt_is_scheduled_after_the_first_interval() -> None:
    redis = fakeredis.FakeStrictRedis()
    queue = Queue("q", connection=redis, serializer=JSONSerializer)
    settings = Settings(retry_intervals=[7, 9, 11])
    options = job_options(settings)
    options.pop("on_failure")  # the real callback writes to PostgreSQL; not in a unit test
    before = datetime.now(UTC).timestamp()
    job = queue.enqueue(f"{__name__}.always_fails", {"x": 1}, **options)
    SimpleWorker([queue], connection=redis, serializer=JSONSerializer).work(burst=True)
    job.refresh()
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.retries_left == 2
    score = ScheduledJobRegistry(queue=queue).get_scheduled_time(job)
    # RQ keeps whole seconds in the scheduled registry.
    assert 6 <= score.timestamp() - before < 9
