"""The DLQ's Redis side, failure classification, heartbeats and orphan detection, on fakeredis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import fakeredis
import psycopg
import pytest
from rq.exceptions import AbandonedJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.timeouts import JobTimeoutException

from phase1 import keys
from phase1.context import Phase1
from phase1.errors import NotFoundError, PermanentJobError, UnavailableError
from phase1.jobs import deadletter, heartbeat
from phase1.jobs import queue as jobs
from phase1.jobs.failure import describe_failure
from phase1.runtime import sweep
from phase1.settings import Settings

QUEUE = "unit-q"


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def ctx(redis: fakeredis.FakeRedis) -> Phase1:
    settings = Settings(
        redis_url="redis://fake:6379/0",
        database_url="postgresql://fake/db",
        queue=QUEUE,
        max_retries=2,
        retry_intervals=[1],
        orphan_after=10,
    )
    # No PostgreSQL here: nothing below touches the pool.
    return Phase1(settings=settings, redis=redis, pool=cast(Any, None))


def entry(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"jobId": job_id, "reason": "exception", "errorType": "RuntimeError", **extra}


def test_an_entry_is_stored_once_with_no_expiry(redis: fakeredis.FakeRedis) -> None:
    assert deadletter.add(redis, QUEUE, entry("a", message="first"))
    assert not deadletter.add(redis, QUEUE, entry("a", message="second"))  # never twice
    stored = deadletter.get(redis, QUEUE, "a")
    assert stored is not None and stored["message"] == "first"
    assert stored["failedAt"].endswith("Z")
    assert redis.ttl(keys.dlq_entry(QUEUE, "a")) == -1
    assert deadletter.size(redis, QUEUE) == 1


def test_entries_list_newest_first_and_expired_ones_are_pruned(
    redis: fakeredis.FakeRedis,
) -> None:
    for job_id in ("old", "mid", "new"):
        deadletter.add(redis, QUEUE, entry(job_id))
        time.sleep(0.01)
    assert [e["jobId"] for e in deadletter.list_entries(redis, QUEUE)] == ["new", "mid", "old"]
    assert deadletter.job_ids(redis, QUEUE) == ["new", "mid", "old"]
    redis.delete(keys.dlq_entry(QUEUE, "mid"))  # as a retention would
    assert [e["jobId"] for e in deadletter.list_entries(redis, QUEUE)] == ["new", "old"]
    assert deadletter.size(redis, QUEUE) == 2


def test_a_retention_expires_entries(redis: fakeredis.FakeRedis) -> None:
    redis.zadd(keys.dlq_index(QUEUE), {"ancient": time.time() - 7200})
    deadletter.add(redis, QUEUE, entry("a"), retention=3600)
    assert 3590 < int(redis.ttl(keys.dlq_entry(QUEUE, "a"))) <= 3600
    assert deadletter.job_ids(redis, QUEUE) == ["a"]  # the index forgets expired ids too


def test_entries_carry_each_attempt(redis: fakeredis.FakeRedis) -> None:
    from datetime import datetime

    made = deadletter.make_entry(
        job_id="j",
        plan_id="p",
        queue=QUEUE,
        reason="timeout",
        error_type="JobTimeoutException",
        message="too slow",
        traceback_text=None,
        payload={"planId": "p"},
        history=[
            {
                "attempt": 1,
                "status": "failed",
                "worker": "w1",
                "started_at": datetime(2024, 1, 1, 12, 0, 0),
                "ended_at": datetime(2024, 1, 1, 12, 0, 10),
                "error_type": "JobTimeoutException",
                "error_message": "too slow",
            }
        ],
    )
    assert made["attempts"] == [
        {
            "attempt": 1,
            "status": "failed",
            "worker": "w1",
            "startedAt": "2024-01-01T12:00:00Z",
            "endedAt": "2024-01-01T12:00:10Z",
            "errorType": "JobTimeoutException",
            "error": "too slow",
        }
    ]


def enqueue(ctx: Phase1, job_id: str) -> Job:
    # Pipelined: the unpipelined enqueue's uniqueness check is a Lua script fakeredis lacks.
    with ctx.redis.pipeline() as pipe:
        job = jobs.enqueue(ctx, job_id, uuid.uuid4(), pipeline=pipe)
        pipe.execute()
    return job


def failed_job(ctx: Phase1, job_id: str) -> Job:
    """An RQ job that failed for good, with its DLQ entry, as the worker leaves it."""
    job = enqueue(ctx, job_id)
    ctx.queue().remove(job)
    job.retries_left = 0
    with ctx.redis.pipeline() as pipe:
        record_job_failure(job, "boom", pipe)
        pipe.execute()
    deadletter.add(ctx.redis, QUEUE, entry(job_id))
    return job


def test_move_to_queue_sends_the_job_back_with_a_fresh_budget(ctx: Phase1) -> None:
    job = failed_job(ctx, "j1")
    deadletter.move_to_queue(ctx, "j1", uuid.uuid4())
    assert deadletter.get(ctx.redis, QUEUE, "j1") is None and deadletter.size(ctx.redis, QUEUE) == 0
    fresh = Job.fetch("j1", connection=ctx.redis, serializer=ctx.queue().serializer)
    assert fresh.get_status() == JobStatus.QUEUED
    assert fresh.retries_left == 2 and fresh.timeout == ctx.settings.job_timeout
    assert ctx.queue().job_ids == ["j1"]
    assert job.id not in ctx.queue().failed_job_registry


def test_move_to_queue_is_all_or_nothing(ctx: Phase1, monkeypatch: pytest.MonkeyPatch) -> None:
    failed_job(ctx, "j1")
    before = deadletter.get(ctx.redis, QUEUE, "j1")

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("crashed half-way through the transaction")

    monkeypatch.setattr(jobs, "enqueue", broken)
    with pytest.raises(RuntimeError):
        deadletter.move_to_queue(ctx, "j1", uuid.uuid4())
    assert deadletter.get(ctx.redis, QUEUE, "j1") == before
    assert Job.fetch("j1", connection=ctx.redis).get_status() == JobStatus.FAILED
    assert ctx.queue().job_ids == [] and "j1" in ctx.queue().failed_job_registry


def test_move_to_queue_never_pushes_a_live_job_twice(ctx: Phase1) -> None:
    enqueue(ctx, "j1")  # back on the queue already (e.g. a reconciler)
    deadletter.add(ctx.redis, QUEUE, entry("j1"))
    deadletter.move_to_queue(ctx, "j1", uuid.uuid4())
    assert ctx.queue().job_ids == ["j1"]
    assert deadletter.size(ctx.redis, QUEUE) == 0


def test_move_to_queue_of_an_unknown_id_is_not_found(ctx: Phase1) -> None:
    with pytest.raises(NotFoundError, match="not in the dead-letter queue"):
        deadletter.move_to_queue(ctx, "nope", uuid.uuid4())


@pytest.mark.parametrize(
    ("exc", "reason", "error_type"),
    [
        (RuntimeError("boom"), "exception", "RuntimeError"),
        (PermanentJobError("plan gone"), "permanent", "PermanentJobError"),
        (JobTimeoutException("too slow"), "timeout", "JobTimeoutException"),
        (AbandonedJobError(), "abandoned", "AbandonedJobError"),
    ],
)
def test_failures_are_classified(exc: BaseException, reason: str, error_type: str) -> None:
    got_reason, got_type, message = describe_failure(type(exc), exc, 10)
    assert (got_reason, got_type) == (reason, error_type)
    assert message


def test_a_database_timeout_behind_a_wrapper_is_a_timeout() -> None:
    lock = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    try:
        raise UnavailableError("PostgreSQL is unavailable") from lock
    except UnavailableError as wrapped:
        reason, error_type, message = describe_failure(type(wrapped), wrapped, 10)
    assert (reason, error_type) == ("timeout", "LockNotAvailable")
    assert "lock timeout" in message and "10 s" in message


def test_a_job_beats_while_it_runs_and_its_last_beat_stays(redis: fakeredis.FakeRedis) -> None:
    """The first beat comes after one interval (until then, the execution RQ created when it
    started the job is its sign of life), then every interval."""

    def beat() -> float | None:
        return redis.zscore(keys.heartbeats(QUEUE), "j1")

    def when(predicate: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + 10
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    with heartbeat.beating(redis, QUEUE, "j1", interval=0.05):
        assert beat() is None
        assert when(lambda: beat() is not None), "a first beat"
        first = beat()
        assert first is not None
        assert when(lambda: (beat() or 0.0) > first), "a later beat"
    assert redis.zscore(keys.heartbeats(QUEUE), "j1") is not None


def started(ctx: Phase1, job_id: str, worker: str = "w1") -> Execution:
    job = enqueue(ctx, job_id)
    with ctx.redis.pipeline() as pipe:
        execution = Execution.create(job, ttl=100, pipeline=pipe, worker_name=worker)
        job.prepare_for_execution(worker, pipe)
        pipe.execute()
    return execution


def test_only_silent_started_jobs_are_orphans(ctx: Phase1) -> None:
    started(ctx, "beating")
    started(ctx, "silent", worker="w2")
    now = time.time() + 60  # a minute on: both executions are old
    ctx.redis.zadd(keys.heartbeats(QUEUE), {"beating": now - 1, "silent": now - 30})
    orphans = sweep.find_orphans(ctx, now=now)
    assert [(o.job_id, o.worker_name) for o in orphans] == [("silent", "w2")]
    assert orphans[0].silent_for > ctx.settings.orphan_after
    # A job that just started has not had time to beat: not an orphan.
    assert sweep.find_orphans(ctx, now=time.time()) == []


@pytest.mark.parametrize(
    ("ran_for", "reason", "said"),
    [(1, "abandoned", "killed by signal 9 (SIGKILL)"), (75, "timeout", "past the 10 s timeout")],
)
def test_a_killed_work_horse_records_its_attempt(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch, ran_for: float, reason: str, said: str
) -> None:
    """RQ hard-kills a horse at timeout + 60 s: that death is a timeout, others abandoned."""
    from datetime import UTC, datetime, timedelta

    from phase1.jobs import failure

    job = enqueue(ctx, "j1")
    job.started_at = datetime.now(UTC) - timedelta(seconds=ran_for)
    recorded: list[dict[str, Any]] = []
    monkeypatch.setattr(failure, "record_failure", lambda *a, **kw: recorded.append(kw))
    sweep.on_horse_killed(job, 4242, 9, None)  # wait status 9: killed by SIGKILL
    [call] = recorded
    assert call["reason"] == reason and call["error_type"] == "WorkHorseKilled"
    assert "work horse (pid 4242)" in call["message"] and said in call["message"]
    assert call["final"] is False and call["next_retry_at"] is not None  # 2 retries left


def test_a_failing_record_never_breaks_rqs_own_handling(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phase1.jobs import failure

    def down(*_a: Any, **_kw: Any) -> None:
        raise UnavailableError("PostgreSQL is down")

    monkeypatch.setattr(failure, "record_failure", down)
    sweep.on_horse_killed(enqueue(ctx, "j1"), 4242, 9, None)  # logs, does not raise


def test_beats_far_older_than_any_live_job_are_forgotten(
    ctx: Phase1, redis: fakeredis.FakeRedis
) -> None:
    now = time.time()
    redis.zadd(keys.heartbeats(QUEUE), {"ancient": now - 7200, "recent": now - 60})
    heartbeat._forget_ancient(redis, QUEUE, ctx.settings)
    assert [m.decode() for m in redis.zrange(keys.heartbeats(QUEUE), 0, -1)] == ["recent"]


def test_requeue_all_shows_a_bar_on_a_terminal_only_when_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from phase1.cli import common, dlq

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(common, "stderr", lambda: Console(stderr=True, force_terminal=True))
    with dlq._steps(dlq.PROGRESS_FROM - 1) as few:
        assert few._bar is None
    with dlq._steps(dlq.PROGRESS_FROM) as many:
        assert many._bar is not None
    monkeypatch.setattr(common, "stderr", lambda: Console(stderr=True, force_terminal=False))
    with dlq._steps(500) as piped:
        assert piped._bar is None  # piped: no escape codes in logs


def test_a_horse_killed_after_its_work_committed_gets_one_no_op_run(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phase1.jobs import failure

    job = enqueue(ctx, "j1")
    job.retries_left = 0  # RQ would fail it
    monkeypatch.setattr(failure, "record_failure", lambda *a, **kw: "completed")
    sweep.on_horse_killed(job, 4242, 9, None)
    assert job.should_retry  # so RQ runs it once more and marks it finished
