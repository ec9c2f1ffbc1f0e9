"""The step pipeline (engine.pipeline): a plain job's success and the next job's start in one
Lua call.

On a real Redis, with RQ's own SimpleWorker as the reference for what must be left behind."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Callback, Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from support import RQ, Processes, RoundTrips, wait_until

from phase1.engine import held, pipeline
from phase1.engine.leftbehind import STUCK_AFTER, put_back_left_behind
from phase1.engine.worker import FastWorker
from phase1.settings import Settings


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    connection.close()


def _queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def _work(worker_class: type[SimpleWorker], queue: Queue, **kwargs: Any) -> SimpleWorker:
    worker = worker_class(
        [queue],
        connection=queue.connection,
        serializer=JSONSerializer,
        name=f"lane-{uuid.uuid4().hex[:8]}",
    )
    worker.work(burst=True, logging_level="WARNING", **kwargs)
    return worker


def _left_behind(redis: Redis, queue: Queue, job_ids: list[str]) -> list[dict[str, Any]]:
    """What a finished job leaves in Redis, in a form two workers' runs can be compared in."""
    now = time.time()
    finished = dict(
        FinishedJobRegistry(queue=queue).connection.zrange(
            FinishedJobRegistry(queue=queue).key, 0, -1, withscores=True
        )
    )
    left = []
    for job_id in job_ids:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        fields = {k.decode() for k in redis.hkeys(job.key)}
        results = redis.xrange(f"rq:results:{job_id}")
        assert len(results) == 1
        left.append(
            {
                "status": job.get_status(),
                "fields": sorted(fields),
                "job ttl": round(redis.ttl(job.key), -1),
                "result fields": sorted(k.decode() for k in results[0][1]),
                "result": job.return_value(),
                "result ttl": round(redis.ttl(f"rq:results:{job_id}"), -1),
                "finished for": round(finished[job_id.encode()] - now, -1),
                "executions": redis.zcard(f"rq:executions:{job_id}"),
                "dependents ttl": round(redis.ttl(job.dependents_key), -1),
                "dependencies ttl": round(redis.ttl(job.dependencies_key), -1),
                "execution keys": len(redis.keys(f"rq:execution:{job_id}:*")),
                "started at <= ended at": job.started_at <= job.ended_at,
            }
        )
    return left


def test_the_lane_leaves_what_rqs_own_worker_leaves(redis: Redis, queue_name: str) -> None:
    runs = {}
    for kind, worker_class in (("rq", SimpleWorker), ("lane", FastWorker)):
        queue = _queue(redis, f"{queue_name}-{kind}")
        first = queue.enqueue("lane_jobs.answer", 7, result_ttl=600)
        job_ids = [
            first.id,
            queue.enqueue("lane_jobs.noop", result_ttl=600).id,
            queue.enqueue("lane_jobs.answer", 8, result_ttl=900, ttl=300).id,
            queue.enqueue("lane_jobs.answer", 9, result_ttl=700, depends_on=first).id,
        ]
        worker = _work(worker_class, queue)
        runs[kind] = _left_behind(redis, queue, job_ids)
        runs[kind].append({"worker state": redis.hget(worker.key, "state")})
        assert StartedJobRegistry(queue=queue).count == 0
        assert redis.scard(f"rq:worker:{worker.name}:executions") == 0
        stats = redis.hmget(worker.key, ["successful_job_count", "total_working_time"])
        assert int(stats[0] or 0) == 4 and float(stats[1] or 0) > 0
    assert runs["lane"] == runs["rq"]
    results = [r.get("result") for r in runs["lane"][:-1]]
    assert results == [{"answer": 7}, None, {"answer": 8}, {"answer": 9}]
    assert runs["lane"][3]["dependencies ttl"] == 700  # a dependency set expires with its job


def test_a_busy_worker_spends_one_round_trip_a_plain_job(
    redis: Redis, queue_name: str, round_trips: RoundTrips
) -> None:
    """Counted against an empty burst (the worker's own start and stop)."""
    queue = _queue(redis, queue_name)
    _work(FastWorker, queue)
    start = round_trips.count
    _work(FastWorker, queue)
    fixed = round_trips.count - start
    jobs = 200
    with redis.pipeline() as pipe:
        for _ in range(jobs):
            queue.enqueue("lane_jobs.noop", result_ttl=600, pipeline=pipe)
        pipe.execute()
    start = round_trips.count
    _work(FastWorker, queue)
    per_job = (round_trips.count - start - fixed) / jobs
    assert FinishedJobRegistry(queue=queue).count == jobs
    # One a job, plus the first job's take and start and a beat a second.
    assert per_job <= 1.1, per_job


def test_a_job_started_for_next_goes_back_as_it_was(redis: Redis, queue_name: str) -> None:
    """max_jobs=1 ends the burst after the first job, whose success started the second: the
    second goes back to the front of the queue, as it was before it was taken."""
    queue = _queue(redis, queue_name)
    first = queue.enqueue("lane_jobs.noop", result_ttl=600)
    second = queue.enqueue("lane_jobs.answer", 1, result_ttl=600, ttl=300)
    third = queue.enqueue("lane_jobs.noop", result_ttl=600)
    before = redis.hgetall(second.key)
    worker = _work(FastWorker, queue, max_jobs=1)

    assert first.get_status() == JobStatus.FINISHED
    assert queue.get_job_ids() == [second.id, third.id]
    assert redis.hgetall(second.key) == before
    assert 250 < redis.ttl(second.key) <= 300
    assert StartedJobRegistry(queue=queue).count == 0
    assert redis.zcard(f"rq:executions:{second.id}") == 0
    assert not redis.keys(f"rq:execution:{second.id}:*")
    assert redis.scard(f"rq:worker:{worker.name}:executions") == 0
    assert redis.llen(f"{queue.key}:intermediate") == 0

    _work(FastWorker, queue)
    assert Job.fetch(second.id, connection=redis, serializer=JSONSerializer).return_value() == {
        "answer": 1
    }


def test_jobs_the_lane_does_not_finish_take_rqs_steps(redis: Redis, queue_name: str) -> None:
    """A job started for next that is not plain (a success callback, no result kept, a
    failure, a retry) runs RQ's own success or failure steps."""
    queue = _queue(redis, queue_name)
    plain = queue.enqueue("lane_jobs.answer", 1, result_ttl=600)
    callback = queue.enqueue(
        "lane_jobs.answer", 2, result_ttl=600, on_success=Callback("lane_jobs.remember")
    )
    no_result = queue.enqueue("lane_jobs.answer", 3, result_ttl=0)
    failing = queue.enqueue("lane_jobs.fail", result_ttl=600)
    retried = queue.enqueue("lane_jobs.fail", result_ttl=600, retry=Retry(max=1))
    last = queue.enqueue("lane_jobs.answer", 4, result_ttl=600)
    _work(FastWorker, queue)

    assert plain.get_status() == JobStatus.FINISHED
    assert callback.get_status() == JobStatus.FINISHED
    assert redis.get(f"lane-test:called:{callback.id}") == repr({"answer": 2}).encode()
    assert not redis.exists(no_result.key)  # result_ttl=0: RQ deletes the job
    assert failing.get_status() == JobStatus.FAILED
    retried.refresh()
    assert retried.get_status() == JobStatus.FAILED and retried.retries_left == 0
    assert set(FailedJobRegistry(queue=queue).get_job_ids()) == {failing.id, retried.id}
    assert last.get_status() == JobStatus.FINISHED
    assert StartedJobRegistry(queue=queue).count == 0
    assert queue.count == 0 and redis.llen(f"{queue.key}:intermediate") == 0


def test_quick_jobs_start_while_the_step_before_is_on_its_way(
    redis: Redis, queue_name: str
) -> None:
    """Once its function is known to be quick, a job is started by a STEP the worker does not
    wait for, and the job after it is held; a worker that stops then puts both back."""
    queue = _queue(redis, queue_name)
    worker = FastWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=f"lane-{uuid.uuid4().hex[:8]}"
    )
    for _ in range(5):  # the worker learns that bench.jobs.noop is quick
        queue.enqueue("lane_jobs.noop", result_ttl=600)
    worker.work(burst=True, logging_level="WARNING")
    sent = []
    sender = worker.pipeline.sender
    send = sender.send
    sender.send = lambda *args: (sent.append(args[0]), send(*args))[1]  # type: ignore[method-assign]

    first = queue.enqueue("lane_jobs.noop", result_ttl=600)
    second = queue.enqueue("lane_jobs.noop", result_ttl=600, ttl=300)
    third = queue.enqueue("lane_jobs.noop", result_ttl=600)
    before = redis.hgetall(second.key)
    worker.work(burst=True, logging_level="WARNING", max_jobs=1)

    assert sent, "the second job's start went out unanswered"
    assert first.get_status() == JobStatus.FINISHED
    assert queue.get_job_ids() == [second.id, third.id]
    assert redis.hgetall(second.key) == before and 250 < redis.ttl(second.key) <= 300
    assert StartedJobRegistry(queue=queue).count == 0
    assert redis.llen(f"{queue.key}:intermediate") == 0
    assert not redis.keys(f"rq:execution:{second.id}:*")

    worker.work(burst=True, logging_level="WARNING")
    assert {second.get_status(), third.get_status()} == {JobStatus.FINISHED}


def test_no_job_waits_in_a_worker_behind_a_slow_one(
    redis: Redis, settings: Settings, processes: Processes
) -> None:
    """While a job of a function not known to be quick runs, the next job stays on the queue,
    for any worker to take."""
    queue = _queue(redis, settings.queue)
    slow = queue.enqueue("lane_jobs.slow", 1.0, result_ttl=600)
    waiting = queue.enqueue("lane_jobs.slow", 0.01, result_ttl=600)
    argv = [RQ, "worker", settings.queue, "--burst", "--url", settings.redis_url or ""]
    argv += ["--serializer", "rq.serializers.JSONSerializer"]
    argv += ["--worker-class", "phase1.engine.worker.FastWorker"]
    worker = processes.start(argv, settings, env={"PYTHONPATH": str(Path(__file__).parents[1])})
    wait_until(lambda: slow.get_status() == JobStatus.STARTED, what="the slow job running")
    time.sleep(0.2)
    assert slow.get_status() == JobStatus.STARTED
    assert queue.get_job_ids() == [waiting.id]
    assert redis.llen(f"{queue.key}:intermediate") == 0
    assert worker.wait(timeout=30) == 0
    assert waiting.get_status() == JobStatus.FINISHED


def _learnt_worker(redis: Redis, queue: Queue, function: str = "lane_jobs.noop") -> FastWorker:
    """A worker that has run `function` quickly often enough to hold jobs behind it."""
    worker = FastWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=f"lane-{uuid.uuid4().hex[:8]}"
    )
    for _ in range(5):
        queue.enqueue(function, result_ttl=600)
    worker.work(burst=True, logging_level="WARNING")
    return worker


def test_steps_go_out_ahead_and_held_jobs_go_back_in_order(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a quick job the worker holds two, so each STEP goes out before the answer of
    the one before it is read; a worker that stops puts every job it holds back, in order,
    as it was."""
    monkeypatch.setattr(pipeline, "QUICK_S", 5.0)  # every run counts as quick, however slow today
    queue = _queue(redis, queue_name)
    worker = _learnt_worker(redis, queue)
    on_their_way: list[int] = []
    sender = worker.pipeline.sender
    send = sender.send

    def spy(*args: Any) -> None:
        on_their_way.append(len(sender.pending))
        send(*args)

    sender.send = spy  # type: ignore[method-assign]
    jobs = [queue.enqueue("lane_jobs.noop", result_ttl=600, ttl=300) for _ in range(12)]
    before = {job.id: redis.hgetall(job.key) for job in jobs}
    worker.work(burst=True, logging_level="WARNING", max_jobs=6)

    assert on_their_way.count(1) >= 2, on_their_way  # sent with the one before unanswered
    assert [job.get_status() for job in jobs[:6]] == [JobStatus.FINISHED] * 6
    assert queue.get_job_ids() == [job.id for job in jobs[6:]]
    assert all(redis.hgetall(job.key) == before[job.id] for job in jobs[6:])
    assert StartedJobRegistry(queue=queue).count == 0
    assert redis.llen(f"{queue.key}:intermediate") == 0
    assert redis.scard(f"rq:worker:{worker.name}:executions") == 0


def test_jobs_held_behind_quick_ones_go_back_before_a_slow_one_runs(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of a function not known to be quick, next after quick ones: the jobs held behind
    it go back to the queue before it runs, for any worker to take."""
    monkeypatch.setattr(pipeline, "QUICK_S", 0.05)
    queue = _queue(redis, queue_name)
    worker = _learnt_worker(redis, queue, "lane_jobs.answer")
    quick = [queue.enqueue("lane_jobs.answer", i, result_ttl=600) for i in range(4)]
    slow = queue.enqueue("lane_jobs.slow", 0.6, result_ttl=600)
    after = [queue.enqueue("lane_jobs.answer", i, result_ttl=600) for i in range(3)]
    seen: dict[str, Any] = {}

    def watch() -> None:
        wait_until(lambda: slow.get_status() == JobStatus.STARTED, what="the slow job running")
        time.sleep(0.1)
        seen["queued"] = queue.get_job_ids()
        seen["intermediate"] = redis.llen(f"{queue.key}:intermediate")

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.work(burst=True, logging_level="WARNING")
    watcher.join()
    assert seen["queued"] == [job.id for job in after]
    assert seen["intermediate"] == 0
    assert all(job.get_status() == JobStatus.FINISHED for job in [*quick, slow, *after])


def _runs(redis: Redis, job: Job) -> int:
    return int(redis.get(f"lane-test:runs:{job.id}") or 0)


def _held_behind_a_slow_job(
    redis: Redis, queue: Queue, seconds: float, while_held: Any = None
) -> tuple[FastWorker, Job, list[Job]]:
    """A worker that learnt `lane_jobs.tally` is quick runs one that takes `seconds`, with
    jobs held behind it (taken off the queue, not started), and `while_held()` called then."""
    worker = _learnt_worker(redis, queue, "lane_jobs.tally")
    slow = queue.enqueue("lane_jobs.tally", seconds, result_ttl=600)
    after = [queue.enqueue("lane_jobs.tally", result_ttl=600) for _ in range(3)]
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            wait_until(
                lambda: (
                    slow.get_status() == JobStatus.STARTED
                    and redis.llen(queue.intermediate_queue_key) > 0
                ),
                what="jobs held behind the slow one",
            )
            if while_held is not None:
                while_held()
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.work(burst=True, logging_level="WARNING")
    watcher.join()
    assert not errors, errors
    return worker, slow, after


def test_a_held_job_the_maintenance_pass_put_back_is_not_started_too(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs held behind a quick job that turns slow, long enough for the maintenance pass to
    put them back on their queue: the worker does not start them from its hands (nor hand
    them back, which could take them from another worker); each runs once."""
    monkeypatch.setattr(pipeline, "QUICK_S", 0.05)
    monkeypatch.setattr(held, "GIVE_BACK_AFTER", 0.2)
    monkeypatch.setattr(held, "LET_GO_AFTER", 0.4)
    queue = _queue(redis, queue_name)
    put_back: list[str] = []

    def two_passes_a_minute_apart() -> None:
        put_back_left_behind(queue, now=1_000_000.0)
        put_back.extend(put_back_left_behind(queue, now=1_000_000.0 + STUCK_AFTER))

    _, slow, after = _held_behind_a_slow_job(redis, queue, 1.0, two_passes_a_minute_apart)
    assert put_back and set(put_back) <= {job.id for job in after}
    assert [_runs(redis, job) for job in [slow, *after]] == [1, 1, 1, 1]
    assert all(job.get_status() == JobStatus.FINISHED for job in [slow, *after])
    assert redis.llen(queue.intermediate_queue_key) == 0
    assert StartedJobRegistry(queue=queue).count == 0


def test_a_job_held_too_long_goes_back_to_its_queue_instead_of_starting(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs held behind a quick job that turns slow, past GIVE_BACK_AFTER: they go back to the
    front of their queue (for any worker) rather than start from this worker's hands."""
    monkeypatch.setattr(pipeline, "QUICK_S", 0.05)
    monkeypatch.setattr(held, "GIVE_BACK_AFTER", 0.2)
    queue = _queue(redis, queue_name)
    handed_back: list[tuple[str, int]] = []  # job id, its runs then
    hand_back = held.HeldJobs.hand_back

    def spy(self: held.HeldJobs, queue_key: str, job_id: str, **kwargs: Any) -> None:
        handed_back.append((job_id, int(redis.get(f"lane-test:runs:{job_id}") or 0)))
        hand_back(self, queue_key, job_id, **kwargs)

    monkeypatch.setattr(held.HeldJobs, "hand_back", spy)
    _, slow, after = _held_behind_a_slow_job(redis, queue, 0.6)
    # The job held to run next went back unrun (a job held behind it may go back as well).
    assert (after[0].id, 0) in handed_back
    assert {job_id for job_id, _ in handed_back} <= {after[0].id, after[1].id}
    assert [_runs(redis, job) for job in [slow, *after]] == [1, 1, 1, 1]
    assert all(job.get_status() == JobStatus.FINISHED for job in [slow, *after])
    assert redis.llen(queue.intermediate_queue_key) == 0


def test_held_jobs_go_back_well_before_the_maintenance_pass_would_put_them_back() -> None:
    assert (held.GIVE_BACK_AFTER, held.LET_GO_AFTER, STUCK_AFTER) == (15.0, 45.0, 60.0)


def test_a_job_taken_after_rqs_steps_goes_back_if_the_loop_dawdles(
    redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The success of a job the lane does not finish (a success callback) takes the next job
    in the same transaction; if the worker's loop then spends GIVE_BACK_AFTER before starting
    it (a slow maintenance pass), it goes back to its queue first, unrun, and runs once."""
    monkeypatch.setattr(held, "GIVE_BACK_AFTER", 0.2)
    queue = _queue(redis, queue_name)
    worker = FastWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=f"lane-{uuid.uuid4().hex[:8]}"
    )
    first = queue.enqueue(
        "lane_jobs.tally", result_ttl=600, on_success=Callback("lane_jobs.remember")
    )
    second = queue.enqueue("lane_jobs.tally", result_ttl=600)
    handed_back: list[tuple[str, int]] = []
    hand_back = worker.pipeline.held.hand_back

    def spy(queue_key: str, job_id: str, **kwargs: Any) -> None:
        handed_back.append((job_id, _runs(redis, Job(job_id, connection=redis))))
        hand_back(queue_key, job_id, **kwargs)

    check = worker.check_for_suspension

    def dawdle(burst: bool) -> None:
        if worker.pipeline.held.next is not None and not handed_back:
            time.sleep(0.3)
        check(burst)

    worker.pipeline.held.hand_back = spy  # type: ignore[method-assign]
    worker.check_for_suspension = dawdle  # type: ignore[method-assign]
    worker.work(burst=True, logging_level="WARNING")
    assert handed_back == [(second.id, 0)]
    assert [_runs(redis, first), _runs(redis, second)] == [1, 1]
    assert second.get_status() == JobStatus.FINISHED
