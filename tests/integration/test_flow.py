"""Approval to created tasks on real Redis, PostgreSQL and RQ worker processes."""

from __future__ import annotations

import threading
import uuid
import zlib
from typing import Any

import psycopg
import pytest
from redis import Redis
from redis.connection import Connection as RedisConnection
from rq.job import Job
from support import Processes, inject_fault, wait_until

from phase1.context import Phase1, build
from phase1.domain import audit, phase1_tasks, plans
from phase1.errors import ConflictError, NotFoundError, PermanentJobError
from phase1.jobs import approval
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings


def make_plan(ctx: Phase1, analysis: dict[str, object] | None = None) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "Test plan", analysis or SAMPLE_ANALYSIS).id


def completed(ctx: Phase1, job_id: str) -> bool:
    return jobs.view(ctx, job_id).status == "completed"


def task_keys(ctx: Phase1, plan_id: uuid.UUID) -> list[str]:
    with ctx.transaction() as conn:
        return [t.key for t in plans.list_tasks(conn, plan_id)]


SAMPLE_KEYS = [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]  # type: ignore[index]


def test_phase1_worker_completes_an_approved_plan(ctx: Phase1, processes: Processes) -> None:
    plan_id = make_plan(ctx)
    result = approval.approve(ctx, plan_id)
    assert result.created and result.status == "pending"
    assert jobs.view(ctx, result.job_id).status == "pending"
    processes.worker(ctx.settings)
    wait_until(lambda: completed(ctx, result.job_id), what="job completed")
    view = jobs.view(ctx, result.job_id)
    assert view.attempt == 1 and view.progress == 100
    assert view.result is not None and view.result["tasksCreated"] == 5
    assert len(view.result["taskIds"]) == 5
    assert view.startedAt is not None and view.completedAt is not None
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS
    with ctx.transaction() as conn:
        plan = plans.get_plan(conn, plan_id)
        history = audit.attempts(conn, result.job_id)
    assert plan.status == "approved"
    assert [(a["attempt"], a["status"]) for a in history] == [(1, "completed")]
    # RQ holds the same result.
    job = Job.fetch(result.job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.return_value() == view.result


def test_plain_rq_worker_runs_phase1_jobs(ctx: Phase1, processes: Processes) -> None:
    plan_id = make_plan(ctx)
    result = approval.approve(ctx, plan_id)
    processes.rq_worker(ctx.settings)
    wait_until(lambda: completed(ctx, result.job_id), what="job completed under rq worker")
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS


def test_enqueued_job_carries_the_storys_defaults(
    make_settings: object, processes: Processes
) -> None:
    settings = make_settings(  # type: ignore[operator]
        max_retries=3, retry_intervals=[1, 5, 30], job_timeout=10
    )
    ctx = build(settings)
    try:
        result = approval.approve(ctx, make_plan(ctx))
        job = Job.fetch(result.job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
        assert job.retries_left == 3
        assert job.retry_intervals == [1, 5, 30]
        assert job.timeout == 10
        assert job._failure_callback_name == "phase1.job.on_failure"
        assert job.origin == settings.queue
        assert jobs.view(ctx, result.job_id).maxAttempts == 4
    finally:
        ctx.close()


def test_a_job_that_raises_then_succeeds_completes_on_attempt_2(
    ctx: Phase1, processes: Processes
) -> None:
    plan_id = make_plan(ctx)
    inject_fault(ctx.database_url, plan_id, fail_times=1)
    result = approval.approve(ctx, plan_id)
    processes.worker(ctx.settings)
    wait_until(lambda: completed(ctx, result.job_id), what="job completed after a retry")
    view = jobs.view(ctx, result.job_id)
    assert view.attempt == 2
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS
    with ctx.transaction() as conn:
        history = audit.attempts(conn, result.job_id)
    assert [(a["attempt"], a["status"]) for a in history] == [(1, "failed"), (2, "completed")]
    assert "injected fault" in history[0]["error_message"]


def test_approval_is_idempotent(ctx: Phase1) -> None:
    plan_id = make_plan(ctx)
    first = approval.approve(ctx, plan_id)
    second = approval.approve(ctx, plan_id)
    assert second.job_id == first.job_id and not second.created
    assert ctx.queue().count == 1


def test_the_approval_reads_redis_ping_inside_its_open_transaction(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval's Redis check travels while PostgreSQL runs its statement: the PING's
    answer is read with the transaction open and nothing committed yet (so a Redis that does
    not answer still leaves PostgreSQL untouched), not waited for before it begins."""
    plan_id = make_plan(ctx)
    seen: list[tuple[str, int, bool]] = []
    read_response = RedisConnection.read_response

    def spy(self: RedisConnection, *args: Any, **kwargs: Any) -> Any:
        answer = read_response(self, *args, **kwargs)
        if answer == b"PONG":
            with psycopg.connect(ctx.database_url, autocommit=True) as other:
                open_ = other.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle in transaction'"
                ).fetchone()
                committed = audit.for_plan(other, plan_id) is not None  # type: ignore[arg-type]
            seen.append(("PONG", open_[0] if open_ else 0, committed))
        return answer

    ctx.redis.ping()  # a connection in the pool (a new one's connect sends a PING of its own)
    monkeypatch.setattr(RedisConnection, "read_response", spy)
    result = approval.approve(ctx, plan_id)
    monkeypatch.undo()
    assert seen == [("PONG", 1, False)]
    assert result.created and jobs.job_in_redis(ctx, result.job_id)


def test_an_approval_whose_redis_connection_is_closed_under_it_asks_again(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooled connection the approval's PING goes out on is closed by Redis as it is sent
    (a restart, a proxy's reset): the approval asks again on a new connection, and goes on."""
    plan_id = make_plan(ctx)
    ctx.redis.ping()
    killer = Redis.from_url(ctx.redis_url)
    killed: list[int] = []
    send_command = RedisConnection.send_command

    def closed_first(self: RedisConnection, *args: Any, **kwargs: Any) -> Any:
        if args[:1] == ("PING",) and not killed and self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            killed.append(killer.client_kill_filter(addr=f"{host}:{port}"))  # type: ignore[arg-type]
        return send_command(self, *args, **kwargs)

    monkeypatch.setattr(RedisConnection, "send_command", closed_first)
    try:
        result = approval.approve(ctx, plan_id)
    finally:
        monkeypatch.undo()
        killer.close()
    assert killed == [1]
    assert result.created and jobs.job_in_redis(ctx, result.job_id)
    assert jobs.view(ctx, result.job_id).status == "pending"


def test_concurrent_approvals_make_one_job(ctx: Phase1, processes: Processes) -> None:
    plan_id = make_plan(ctx)
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def approve() -> None:
        own = build(ctx.settings)
        try:
            barrier.wait()
            ids.append(approval.approve(own, plan_id).job_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=approve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 1
    assert ctx.queue().count == 1
    processes.worker(ctx.settings)
    wait_until(lambda: completed(ctx, ids[0]), what="the one job completed")
    assert task_keys(ctx, plan_id) == SAMPLE_KEYS


def test_approval_waiting_on_a_concurrent_one_returns_its_job(ctx: Phase1) -> None:
    """An approval that waits for the plan's lock while another commits its job: the one
    statement's snapshot predates that commit, so it must not make a second job but answer
    the committed one (and enqueue it, as that approval's enqueue is not there yet)."""
    plan_id = make_plan(ctx)
    outcome: list[approval.Approval | BaseException] = []
    with ctx.transaction() as conn:  # the concurrent approval, held open
        plans.get_plan(conn, plan_id, lock=True)
        plans.set_plan_status(conn, plan_id, "approved")
        row = audit.insert(
            conn, plan_id=plan_id, job_id="held-job", queue=ctx.settings.queue, max_attempts=4
        )

        def approve() -> None:
            own = build(ctx.settings)
            try:
                outcome.append(approval.approve(own, plan_id))
            except BaseException as exc:
                outcome.append(exc)
            finally:
                own.close()

        waiter = threading.Thread(target=approve)
        waiter.start()
        wait_until(
            lambda: _waits_for_a_lock(ctx, conn.info.backend_pid), what="the approval waiting"
        )
    waiter.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], approval.Approval), outcome
    assert (outcome[0].job_id, outcome[0].created) == (row["job_id"], False)
    with ctx.transaction() as conn:
        assert audit.for_plan(conn, plan_id)["job_id"] == "held-job"  # type: ignore[index]
    assert jobs.job_in_redis(ctx, "held-job") and ctx.queue().count == 1


def _waits_for_a_lock(ctx: Phase1, holder_pid: int) -> bool:
    with ctx.transaction() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE NOT granted "
            "AND %s = ANY(pg_blocking_pids(pid))",
            (holder_pid,),
        ).fetchone()
    return bool(row and row["n"])


def test_rejected_plan_cannot_be_approved(ctx: Phase1) -> None:
    plan_id = make_plan(ctx)
    assert approval.reject(ctx, plan_id).status == "rejected"
    with pytest.raises(ConflictError, match="rejected"):
        approval.approve(ctx, plan_id)
    with ctx.transaction() as conn:
        assert audit.for_plan(conn, plan_id) is None


def test_unknown_plan_and_unknown_job(ctx: Phase1) -> None:
    with pytest.raises(NotFoundError):
        approval.approve(ctx, uuid.uuid4())
    with pytest.raises(NotFoundError):
        jobs.view(ctx, "no-such-job")


def test_create_phase1_tasks_is_idempotent(ctx: Phase1) -> None:
    plan_id = make_plan(ctx)
    with ctx.transaction() as conn:
        created, tasks = phase1_tasks.create_phase1_tasks(conn, plan_id)
    assert len(created) == 5 and len(tasks) == 5
    with ctx.transaction() as conn:
        created_again, tasks_again = phase1_tasks.create_phase1_tasks(conn, plan_id)
    assert created_again == []
    assert [t.id for t in tasks_again] == [t.id for t in tasks]


def test_crash_half_way_leaves_no_partial_tasks(ctx: Phase1) -> None:
    plan_id = make_plan(ctx)
    inject_fault(ctx.database_url, plan_id, fail_times=1)
    with pytest.raises(Exception, match="injected fault"), ctx.transaction() as conn:
        phase1_tasks.create_phase1_tasks(conn, plan_id)
    assert task_keys(ctx, plan_id) == []
    with ctx.transaction() as conn:
        created, _ = phase1_tasks.create_phase1_tasks(conn, plan_id)
    assert len(created) == 5


def test_missing_plan_is_a_permanent_error(ctx: Phase1) -> None:
    with pytest.raises(PermanentJobError, match="not found"), ctx.transaction() as conn:
        phase1_tasks.create_phase1_tasks(conn, uuid.uuid4())


def test_sync_mode_creates_tasks_inline(make_settings: object) -> None:
    settings: Settings = make_settings(approval_mode="sync")  # type: ignore[operator]
    ctx = build(settings)
    try:
        plan_id = make_plan(ctx)
        outcome = approval.approve_sync(ctx, plan_id)
        assert outcome.plan.status == "approved"
        assert [t.key for t in outcome.tasks] == SAMPLE_KEYS
        assert ctx.queue().count == 0
    finally:
        ctx.close()


def test_one_call_enqueue_writes_what_rq_writes(ctx: Phase1) -> None:
    """The approval's enqueue (one Lua call with its event) leaves the job hash, queue and
    queue registration RQ's own unique enqueue leaves; a repeat enqueues and announces nothing."""
    from phase1.jobs import events

    plan_a, plan_b = make_plan(ctx), make_plan(ctx)
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    event = events.make(events.ENQUEUED, ours, str(plan_a), None, {"queue": ctx.settings.queue})
    before = len(list(events.read(ctx.redis, ctx.settings.queue)))
    assert jobs.enqueue_announced(ctx, ours, plan_a, event) is True
    jobs.enqueue(ctx, theirs, plan_b)  # RQ's unique enqueue

    def fields(job_id: str, plan: uuid.UUID) -> dict[str, str]:
        raw = ctx.redis.hgetall(f"rq:job:{job_id}")
        data = {
            k.decode(): (zlib.decompress(v) if k == b"data" else v).decode() for k, v in raw.items()
        }
        for volatile in ("created_at", "enqueued_at"):
            assert data.pop(volatile)
        return {k: v.replace(str(plan), "PLAN") for k, v in data.items()}

    assert fields(ours, plan_a) == fields(theirs, plan_b)
    assert ctx.redis.ttl(f"rq:job:{ours}") == ctx.redis.ttl(f"rq:job:{theirs}")
    queued = [i.decode() for i in ctx.redis.lrange(f"rq:queue:{ctx.settings.queue}", 0, -1)]
    assert queued == [ours, theirs]
    assert ctx.redis.sismember("rq:queues", f"rq:queue:{ctx.settings.queue}")
    stream = list(events.read(ctx.redis, ctx.settings.queue))
    assert [e.jobId for _, e in stream[before:]] == [ours]

    again = events.make(events.ENQUEUED, ours, str(plan_a), None, {"queue": ctx.settings.queue})
    assert jobs.enqueue_announced(ctx, ours, plan_a, again) is False
    assert ctx.redis.llen(f"rq:queue:{ctx.settings.queue}") == 2
    assert len(list(events.read(ctx.redis, ctx.settings.queue))) == len(stream)
