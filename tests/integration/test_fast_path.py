"""The worker's success path in one round trip, with what the job staged (issue 7).

Round trips are counted as the benchmark counts them (every write of a request to a Redis
socket), in this process, on a real Redis, with the real job and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job, JobStatus
from support import Processes, RoundTrips, child_pids, count_thread_starts, inject_fault, wait_until

from phase1.context import Phase1, install_worker_context
from phase1.domain import audit, plans
from phase1.engine import rqcompat, success_writes
from phase1.jobs import approval, events
from phase1.runtime.process import build_worker
from phase1.schemas import SAMPLE_ANALYSIS


def make_plans(ctx: Phase1, count: int) -> list[uuid.UUID]:
    with ctx.transaction() as conn:
        return [plans.create_plan(conn, "Fast plan", SAMPLE_ANALYSIS).id for _ in range(count)]


def drain(ctx: Phase1) -> None:
    """One burst of phase1's worker class in this process (no scheduler), on the job queue."""
    install_worker_context(ctx)
    worker = build_worker(ctx, name=f"fast-{uuid.uuid4().hex[:8]}")
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def test_a_phase1_job_costs_few_round_trips(ctx: Phase1, round_trips: RoundTrips) -> None:
    """Approval 2 (PING, then enqueue + event in one call); worker per job 1: one transaction
    records its success (with its `active`, progress and completed events and its last beat)
    and takes and starts the next job (engine.pipeline). RQ's own worker needs about 20. The
    burst's own start and stop are measured with an empty queue and taken off."""
    approval.approve(ctx, make_plans(ctx, 1)[0])  # warm: scripts loaded, connections open
    drain(ctx)
    start = round_trips.count
    drain(ctx)
    fixed = round_trips.count - start

    jobs = 20
    plan_ids = make_plans(ctx, jobs)
    start = round_trips.count
    job_ids = [approval.approve(ctx, plan_id).job_id for plan_id in plan_ids]
    producer = (round_trips.count - start) / jobs
    start = round_trips.count
    drain(ctx)
    worker = (round_trips.count - start - fixed) / jobs

    with ctx.transaction() as conn:
        assert all(audit.get(conn, j)["status"] == "completed" for j in job_ids)  # type: ignore[index]
    assert producer == 2, producer
    # 1 a job, plus a little housekeeping (the first job of the burst is taken on its own, a
    # beat a second, and an `active` event of its own for a job that a busy machine held up
    # past 50 ms). RQ's steps, folded, take 2.
    assert worker <= 1.6, worker


def test_events_of_a_quick_job_come_in_order_with_its_success(ctx: Phase1) -> None:
    (plan_id,) = make_plans(ctx, 1)
    since = events.last_id(ctx.redis, ctx.settings.queue)
    job_id = approval.approve(ctx, plan_id).job_id
    drain(ctx)
    stream = [e for _, e in events.read(ctx.redis, ctx.settings.queue, since=since)]
    assert [e.type for e in stream if e.jobId == job_id] == [
        "job:enqueued",
        "job:active",
        "job:progress",
        "job:completed",
    ]
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.get_status() == JobStatus.FINISHED and job.last_heartbeat is not None
    # The job's last heartbeat went out with its success.
    assert ctx.redis.zscore(f"phase1:{ctx.settings.queue}:heartbeats", job_id) is not None


def test_a_slow_jobs_active_event_is_not_held_back(ctx: Phase1) -> None:
    """A job still running ACTIVE_LAG after it started sends `job:active` on its own, while
    it runs."""
    (plan_id,) = make_plans(ctx, 1)
    inject_fault(ctx.settings.database_url, plan_id, fail_times=0, sleep_s=1.0)
    since = events.last_id(ctx.redis, ctx.settings.queue)
    job_id = approval.approve(ctx, plan_id).job_id
    drain(ctx)
    entries = [
        (stream_id, e)
        for stream_id, e in events.read(ctx.redis, ctx.settings.queue, since=since)
        if e.jobId == job_id
    ]
    assert [e.type for _, e in entries] == [
        "job:enqueued",
        "job:active",
        "job:progress",
        "job:completed",
    ]
    written_ms = {e.type: int(stream_id.split("-")[0]) for stream_id, e in entries}
    assert written_ms["job:completed"] - written_ms["job:active"] >= 800


def test_staged_writes_keep_their_order(ctx: Phase1) -> None:
    """Timer-sent entries take what was staged before them along; a taken entry's timer
    sends nothing; what is left goes out when the job ends."""
    key = f"phase1:test:{uuid.uuid4().hex}"
    heard: list[str] = []

    def push(value: str) -> tuple[Any, Any]:
        return (lambda pipe: pipe.rpush(key, value)), (lambda: heard.append(value))

    stage = success_writes.Stage(ctx.redis)
    success_writes.current = stage
    try:
        assert success_writes.after_success(*push("a"))
        assert success_writes.after_success(*push("b"), within=0.05)
        assert success_writes.after_success(*push("c"))
        # b's timer sends a and b (staged before it), not c.
        wait_until(lambda: ctx.redis.lrange(key, 0, -1) == [b"a", b"b"], what="b's timer")
        assert success_writes.after_success(*push("d"), within=0.05)
        taken = stage.take()  # as the success transaction takes them
        time.sleep(0.3)
        assert ctx.redis.lrange(key, 0, -1) == [b"a", b"b"]  # d's timer found it gone
        success_writes.send(ctx.redis, taken)
        assert success_writes.after_success(*push("e"))
    finally:
        success_writes.current = None
        stage.close()
    assert ctx.redis.lrange(key, 0, -1) == [b"a", b"b", b"c", b"d", b"e"]
    assert heard == ["a", "b", "c", "d", "e"]
    assert not success_writes.after_success(*push("f"))  # no worker job: the caller writes
    ctx.redis.delete(key)


def _rq_state(ctx: Phase1) -> tuple[int, int, int, int]:
    """(finished, queued, in the intermediate list, started) on the job queue."""
    from rq.intermediate_queue import IntermediateQueue
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    queue = ctx.queue()
    return (
        FinishedJobRegistry(queue=queue).count,
        queue.count,
        ctx.redis.llen(IntermediateQueue(queue.key, ctx.redis).key),
        len(StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)),
    )


def test_a_stopping_worker_puts_the_job_it_took_next_back(
    ctx: Phase1, processes: Processes
) -> None:
    """The success transaction also takes the next job; a worker told to stop (or
    suspended) between two jobs puts that one back at the front of its queue."""
    queue = ctx.queue()

    def enqueue(count: int) -> None:
        with ctx.redis.pipeline() as pipe:
            for _ in range(count):
                queue.enqueue("bench.jobs.noop", result_ttl=600, pipeline=pipe)
            pipe.execute()

    jobs = 10_000
    enqueue(jobs)
    worker = processes.worker(ctx.settings)
    wait_until(lambda: _rq_state(ctx)[0] >= 200, timeout=60, what="200 jobs done")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    finished, queued, intermediate, started = _rq_state(ctx)
    assert queued > 0, "the test must stop the worker mid-queue"
    assert (finished + queued, intermediate, started) == (jobs, 0, 0)

    # Suspended mid-queue: the taken job goes back too, and nothing is left started. More
    # jobs first than a worker does in the second or so it may take to see a suspension
    # (a worker on a quiet machine here drains about 8,000 a second).
    from rq.suspension import resume, suspend

    enqueue(30_000)
    jobs += 30_000
    worker = processes.worker(ctx.settings)
    wait_until(lambda: _rq_state(ctx)[0] >= finished + 200, timeout=60, what="more done")
    suspend(ctx.redis)
    try:
        # The worker says so once it has seen the suspension (it looks once a second).
        wait_until(lambda: _worker_states(ctx) == ["suspended"], timeout=60, what="suspended")
        finished, queued, intermediate, started = _rq_state(ctx)
        assert queued > 0 and (finished + queued, intermediate, started) == (jobs, 0, 0)
    finally:
        resume(ctx.redis)
    wait_until(lambda: _rq_state(ctx)[0] == jobs, timeout=240, what="all done")
    # Idle now, in the blocking dequeue: a stop must not wait there for a job.
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_a_worker_stopped_while_it_waits_for_a_job_exits_at_once(
    ctx: Phase1, processes: Processes
) -> None:
    """An idle worker blocked in its dequeue exits on the first SIGTERM, within the test's
    bound (its teardown once waited up to a minute on RQ's pubsub thread)."""
    queue = ctx.queue()
    for round_ in range(3):
        worker = processes.worker(ctx.settings)
        with ctx.redis.pipeline() as pipe:
            for _ in range(300):
                queue.enqueue("bench.jobs.noop", result_ttl=600, pipeline=pipe)
            pipe.execute()
        done = 300 * (round_ + 1)

        def all_done(done: int = done) -> bool:
            return _rq_state(ctx)[:2] == (done, 0)

        wait_until(all_done, timeout=120, what=f"{done} jobs done")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def _worker_states(ctx: Phase1) -> list[str]:
    from rq.worker import Worker

    states = [w.get_state() for w in Worker.all(queue=ctx.queue())]
    return [str(getattr(state, "value", state)) for state in states]


def _socket_inodes(pid: int) -> set[str]:
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[8:-1])
    return held


def _inodes_of_connection(pid: int, port: int, server_port: int) -> set[str]:
    """The sockets, in `pid`'s network namespace, of a connection from local `port` to
    `server_port`. The port alone is not enough: the kernel gives one local port to several
    connections to different servers, and a closed connection of the same port lingers in
    TIME_WAIT (inode 0)."""
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == port
                and int(remote.rsplit(":", 1)[1], 16) == server_port
                and inode != "0"
            ):
                found.add(inode)
    return found


def test_the_forked_scheduler_keeps_no_copy_of_the_dequeue_socket(
    ctx: Phase1, processes: Processes
) -> None:
    """While the worker's scheduler held a copy of the socket the worker blocks on, Redis
    did not see a killed worker go: it served the dead worker's blocking dequeue a job that
    then reached nobody."""
    db = ctx.redis.connection_pool.connection_kwargs.get("db", 0)
    worker = processes.worker(ctx.settings)
    wait_until(lambda: child_pids(worker.pid), timeout=30, what="the worker's scheduler")
    (scheduler,) = child_pids(worker.pid)

    def blocked_ports() -> list[tuple[int, int]]:
        return [
            (int(str(c["addr"]).rsplit(":", 1)[1]), int(str(c["laddr"]).rsplit(":", 1)[1]))
            for c in ctx.redis.client_list()
            if int(c["db"]) == db and c["cmd"] in ("blpop", "blmove")
        ]

    def dequeue_sockets() -> set[str]:
        found: set[str] = set()
        for port, server_port in blocked_ports():
            found |= _inodes_of_connection(worker.pid, port, server_port)
        return found & _socket_inodes(worker.pid)

    wait_until(dequeue_sockets, timeout=30, what="the worker blocked in its dequeue")
    assert not dequeue_sockets() & _socket_inodes(scheduler)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_a_stop_signal_between_pop_and_start_puts_the_job_back(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker's stop signal raises StopRequested wherever the main thread is. Landing
    after its blocking dequeue (BLPOP, a worker of two queues) popped a job but before the
    worker held it, RQ's worker loses that job; phase1's puts it back."""
    from rq.queue import Queue

    from phase1.engine.dequeue import FastQueue

    fetch = Queue._fetch_dequeued_job.__func__  # type: ignore[attr-defined]

    def signal_then_fetch(cls: type[Queue], *args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the next line
        return fetch(cls, *args, **kwargs)

    monkeypatch.setattr(FastQueue, "_fetch_dequeued_job", classmethod(signal_then_fetch))
    queue = ctx.queue()
    job_id = str(uuid.uuid4())
    pusher = threading.Timer(
        1.0, lambda: queue.enqueue("bench.jobs.noop", job_id=job_id, result_ttl=600)
    )
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install_worker_context(ctx)
    worker = build_worker(ctx, name=f"stop-{uuid.uuid4().hex[:8]}")
    pusher.start()
    try:
        worker.work(burst=False, with_scheduler=False, logging_level="WARNING")
    finally:
        pusher.join()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert rqcompat.stop_requested(worker)
    assert [i.decode() for i in ctx.redis.lrange(queue.key, 0, -1)] == [job_id]
    assert _rq_state(ctx)[1:] == (1, 0, 0)  # queued, nothing in the intermediate list or started
    job = Job.fetch(job_id, connection=ctx.redis, serializer=queue.serializer)
    assert job.get_status() == JobStatus.QUEUED


def test_jobs_start_no_threads_of_their_own(ctx: Phase1, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's heartbeats and its timed `active` event run on the process's one timer thread:
    a thread started per job cost milliseconds a job on a busy machine."""
    starts = count_thread_starts(monkeypatch)
    threads_of_a_burst = {}
    for jobs in (1, 11):
        for plan_id in make_plans(ctx, jobs):
            approval.approve(ctx, plan_id)
        starts.clear()
        drain(ctx)
        threads_of_a_burst[jobs] = sorted(starts)
    # The worker's own threads (and the timer, once a process), whatever the job count.
    assert len(threads_of_a_burst[11]) <= len(threads_of_a_burst[1]) <= 2, threads_of_a_burst


def test_the_beat_after_a_pop_rides_with_the_jobs_start(
    ctx: Phase1, round_trips: RoundTrips
) -> None:
    """RQ's dequeue beats right after popping a job; the started pipeline beats a moment later,
    so that beat is left to it (once per pop: a popped job that never starts delays one)."""
    from phase1.engine import dequeue

    install_worker_context(ctx)
    worker = build_worker(ctx, name=f"fast-{uuid.uuid4().hex[:8]}")
    ctx.redis.ping()  # connected
    try:
        dequeue.popped = (ctx.queue().key, "some-job", False)
        worker._housekept_at = 0.0  # a beat is due
        start = round_trips.count
        worker.heartbeat()
        assert round_trips.count == start  # deferred to the job's start
        worker.heartbeat()
        assert round_trips.count == start + 1  # the same pop defers no more than once
        assert worker.connection.hget(worker.key, "last_heartbeat") is not None
    finally:
        dequeue.popped = None
