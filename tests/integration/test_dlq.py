"""Requeue from the DLQ on real Redis, PostgreSQL and workers, also when it is interrupted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from rq.job import Job, JobStatus
from support import PHASE1, Processes, inject_fault, wait_until

from phase1.context import Phase1, build
from phase1.domain import audit, plans
from phase1.errors import ConflictError, NotFoundError
from phase1.jobs import approval, deadletter, events
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

SAMPLE_KEYS = [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]  # type: ignore[index]


class Interrupted(BaseException):
    """Stands for the process dying at this point (not an Exception: nothing catches it)."""


@pytest.fixture
def ctx(make_settings: object) -> Iterator[Phase1]:
    # One attempt, then the DLQ: failing is quick.
    phase1 = build(make_settings(max_retries=0))  # type: ignore[operator]
    try:
        yield phase1
    finally:
        phase1.close()


def dead_lettered_job(
    ctx: Phase1, processes: Processes, env: dict[str, str] | None = None
) -> tuple[uuid.UUID, str]:
    """A job whose one attempt failed (an injected fault, gone afterwards) and a burst worker
    that put it in the DLQ."""
    with ctx.transaction() as conn:
        plan_id = plans.create_plan(conn, "DLQ plan", SAMPLE_ANALYSIS).id
    inject_fault(ctx.database_url, plan_id, fail_times=1)
    job_id = approval.approve(ctx, plan_id).job_id
    processes.start([PHASE1, "worker", "--burst"], ctx.settings, env=env).wait(timeout=60)
    assert jobs.view(ctx, job_id).status == "failed"
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is not None
    return plan_id, job_id


def rq_status(ctx: Phase1, job_id: str) -> JobStatus:
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    return job.get_status()


def run_to_completion(ctx: Phase1, processes: Processes, job_id: str) -> None:
    processes.worker(ctx.settings)
    wait_until(lambda: jobs.view(ctx, job_id).status == "completed", what="requeued job done")


def assert_history(ctx: Phase1, job_id: str, expected: list[tuple[int, str]]) -> None:
    with ctx.transaction() as conn:
        got = [(a["attempt"], a["status"]) for a in audit.attempts(conn, job_id)]
    assert got == expected


def test_requeue_from_the_dlq_completes_with_a_fresh_budget(
    ctx: Phase1, processes: Processes
) -> None:
    plan_id, job_id = dead_lettered_job(ctx, processes)
    with pytest.raises(ConflictError, match=f"phase1 dlq requeue {job_id}"):
        approval.approve(ctx, plan_id)
    assert ctx.redis.ttl(f"phase1:{ctx.settings.queue}:dlq:{job_id}") == -1  # no expiry
    dry = deadletter.requeue(ctx, job_id, dry_run=True)
    assert dry.job_id == job_id and not dry.audit_updated
    assert rq_status(ctx, job_id) == JobStatus.FAILED and jobs.view(ctx, job_id).status == "failed"
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is not None

    outcome = deadletter.requeue(ctx, job_id)
    assert outcome.audit_updated and outcome.attempts_so_far == 1
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is None
    assert deadletter.size(ctx.redis, ctx.settings.queue) == 0
    view = jobs.view(ctx, job_id)
    assert view.status == "pending" and view.error is None and view.completedAt is None
    assert view.maxAttempts == 2  # one used, one fresh (PHASE1_MAX_RETRIES=0)
    assert rq_status(ctx, job_id) == JobStatus.QUEUED
    assert job_id not in ctx.queue().failed_job_registry
    assert ctx.queue().job_ids == [job_id]
    requeued = [e for _, e in events.read(ctx.redis, ctx.settings.queue, job_id=job_id)]
    assert requeued[-1].type == events.REQUEUED

    run_to_completion(ctx, processes, job_id)
    assert_history(ctx, job_id, [(1, "failed"), (2, "completed")])
    with ctx.transaction() as conn:
        assert [t.key for t in plans.list_tasks(conn, plan_id)] == SAMPLE_KEYS
    with pytest.raises(NotFoundError, match="not in the dead-letter queue"):
        deadletter.requeue(ctx, job_id)


def test_requeue_interrupted_after_the_redis_move_loses_nothing(
    ctx: Phase1, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id = dead_lettered_job(ctx, processes)

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Interrupted

    monkeypatch.setattr(audit, "requeued", crash)
    with pytest.raises(Interrupted):
        deadletter.requeue(ctx, job_id)
    monkeypatch.undo()

    # Out of the DLQ only because it is back on the queue; PostgreSQL has not heard yet.
    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) is None
    assert rq_status(ctx, job_id) == JobStatus.QUEUED and ctx.queue().job_ids == [job_id]
    assert jobs.view(ctx, job_id).status == "failed"
    # Asked again, it is not pushed twice.
    with pytest.raises(NotFoundError):
        deadletter.requeue(ctx, job_id)
    assert ctx.queue().job_ids == [job_id]

    run_to_completion(ctx, processes, job_id)  # the worker brings PostgreSQL up to date
    assert_history(ctx, job_id, [(1, "failed"), (2, "completed")])
    assert jobs.view(ctx, job_id).maxAttempts == 2


def test_requeue_interrupted_inside_the_redis_move_changes_nothing(
    ctx: Phase1, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id = dead_lettered_job(ctx, processes)
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Interrupted  # half the transaction is queued by now; none of it is sent

    monkeypatch.setattr(jobs, "enqueue", crash)
    with pytest.raises(Interrupted):
        deadletter.requeue(ctx, job_id)
    monkeypatch.undo()

    assert deadletter.get(ctx.redis, ctx.settings.queue, job_id) == entry
    assert rq_status(ctx, job_id) == JobStatus.FAILED and ctx.queue().job_ids == []
    assert job_id in ctx.queue().failed_job_registry
    assert jobs.view(ctx, job_id).status == "failed"

    deadletter.requeue(ctx, job_id)
    run_to_completion(ctx, processes, job_id)
    assert_history(ctx, job_id, [(1, "failed"), (2, "completed")])


def test_requeue_when_redis_lost_the_job_enqueues_it_afresh(
    ctx: Phase1, processes: Processes
) -> None:
    _, job_id = dead_lettered_job(ctx, processes)
    ctx.redis.delete(Job.key_for(job_id))  # e.g. a failure_ttl shorter than the DLQ's life
    deadletter.requeue(ctx, job_id)
    assert rq_status(ctx, job_id) == JobStatus.QUEUED
    run_to_completion(ctx, processes, job_id)
    assert_history(ctx, job_id, [(1, "failed"), (2, "completed")])


def test_dlq_retention_is_a_setting(make_settings: object, processes: Processes) -> None:
    settings: Settings = make_settings(max_retries=0, dlq_retention=3600)  # type: ignore[operator]
    phase1 = build(settings)
    try:
        _, job_id = dead_lettered_job(phase1, processes, {"PHASE1_DLQ_RETENTION": "3600"})
        ttl = phase1.redis.ttl(f"phase1:{settings.queue}:dlq:{job_id}")
        assert 3500 < int(ttl) <= 3600  # type: ignore[arg-type]
    finally:
        phase1.close()
