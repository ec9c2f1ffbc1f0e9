"""Cancel and pause (issue 21) against real Redis, PostgreSQL and `phase1 worker` processes."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import psycopg
import pytest
from rq import Worker
from rq.job import Job
from support import PHASE1, Processes, inject_fault, settings_env, wait_until

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import audit, plans
from phase1.errors import ConflictError, NotFoundError
from phase1.jobs import approval, cancel, deadletter, events, pause
from phase1.jobs import queue as jobs
from phase1.runtime import monitor
from phase1.schemas import SAMPLE_ANALYSIS


def make_plan(ctx: Phase1) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "Test plan", SAMPLE_ANALYSIS).id


def status(ctx: Phase1, job_id: str) -> str:
    return jobs.view(ctx, job_id).status


def task_count(ctx: Phase1, plan_id: uuid.UUID) -> int:
    with ctx.read() as conn:
        return len(plans.list_tasks(conn, plan_id))


def final_failed_events(ctx: Phase1, job_id: str) -> list[dict[str, object]]:
    return [
        e.data
        for _, e in events.read(ctx.redis, ctx.settings.queue, job_id=job_id)
        if e.type == keys.FAILED and e.data.get("final")
    ]


def rq_status(ctx: Phase1, job_id: str) -> str | None:
    raw = ctx.redis.hget(keys.rq_job(job_id), "status")
    return raw.decode() if isinstance(raw, bytes) else raw


def test_cancel_a_pending_job_takes_it_off_the_queue_into_the_dlq(ctx: Phase1) -> None:
    plan_id = make_plan(ctx)
    job_id = approval.approve(ctx, plan_id).job_id
    assert ctx.queue().count == 1

    view = cancel.cancel(ctx, job_id, "wrong plan")

    assert view.status == "failed"
    assert view.error is not None and view.error.reason == "cancelled"
    assert "wrong plan" in view.error.message
    assert ctx.queue().count == 0 and rq_status(ctx, job_id) == "canceled"
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    assert entry is not None and entry["reason"] == "cancelled"
    assert [d["reason"] for d in final_failed_events(ctx, job_id)] == ["cancelled"]
    # Twice: the same answer, nothing added.
    again = cancel.cancel(ctx, job_id, "wrong plan")
    assert again == view
    assert len(final_failed_events(ctx, job_id)) == 1
    assert deadletter.size(ctx.redis, ctx.settings.queue) == 1


def test_a_cancelled_job_comes_back_with_dlq_requeue(ctx: Phase1, processes: Processes) -> None:
    plan_id = make_plan(ctx)
    job_id = approval.approve(ctx, plan_id).job_id
    cancel.cancel(ctx, job_id)
    deadletter.requeue(ctx, job_id)
    view = jobs.view(ctx, job_id)
    assert view.status == "pending" and view.error is None
    processes.worker(ctx.settings)
    wait_until(lambda: status(ctx, job_id) == "completed", what="requeued job completed")
    assert task_count(ctx, plan_id) == len(SAMPLE_ANALYSIS["phase1"])  # type: ignore[arg-type]


def test_cancel_unknown_and_completed_jobs(ctx: Phase1, processes: Processes) -> None:
    with pytest.raises(NotFoundError):
        cancel.cancel(ctx, "no-such-job")
    plan_id = make_plan(ctx)
    job_id = approval.approve(ctx, plan_id).job_id
    processes.worker(ctx.settings)
    wait_until(lambda: status(ctx, job_id) == "completed", what="job completed")
    with pytest.raises(ConflictError, match="is completed"):
        cancel.cancel(ctx, job_id)
    assert status(ctx, job_id) == "completed"


def test_cancel_a_running_job_interrupts_it_with_nothing_written(
    make_settings: object, processes: Processes
) -> None:
    from phase1.context import build

    ctx = build(make_settings(job_timeout=30))  # type: ignore[operator]
    try:
        plan_id = make_plan(ctx)
        # The job sleeps inside its task INSERT: it is mid-transaction when cancelled.
        inject_fault(ctx.database_url, plan_id, fail_times=0, sleep_s=20)
        job_id = approval.approve(ctx, plan_id).job_id
        processes.worker(ctx.settings)
        wait_until(lambda: status(ctx, job_id) == "active", what="job active")
        time.sleep(0.3)  # let the attempt reach its INSERT (a cancel before it works too)
        started = time.monotonic()
        view = cancel.cancel(ctx, job_id, "stop it")
        took = time.monotonic() - started
        assert view.status == "failed" and view.error is not None
        assert view.error.reason == "cancelled"
        assert took < 10, f"cancel took {took:.1f} s"
        # The worker ends its run without a retry and without writing anything.
        wait_until(lambda: rq_status(ctx, job_id) in ("failed", "stopped"), what="RQ job ended")
        assert task_count(ctx, plan_id) == 0
        with ctx.read() as conn:
            history = audit.attempts(conn, job_id)
        assert [(a["attempt"], a["status"], a["error_type"]) for a in history] == [
            (1, "failed", "Cancelled")
        ]
        assert status(ctx, job_id) == "failed"
        assert len(final_failed_events(ctx, job_id)) == 1
        # The worker goes on with the next job.
        other = approval.approve(ctx, make_plan(ctx)).job_id
        wait_until(lambda: status(ctx, other) == "completed", what="next job completed")
        assert "Traceback" not in processes.log(0) or "JobCancelled" in processes.log(0)
    finally:
        ctx.close()


def test_cancels_racing_workers_end_in_exactly_one_outcome(
    ctx: Phase1, processes: Processes
) -> None:
    plan_ids = [make_plan(ctx) for _ in range(30)]
    job_ids = [approval.approve(ctx, p).job_id for p in plan_ids]
    processes.worker(ctx.settings)
    outcomes: dict[str, str] = {}
    for job_id in job_ids:
        try:
            outcomes[job_id] = cancel.cancel(ctx, job_id).status
        except ConflictError:
            outcomes[job_id] = "refused"
    wait_until(
        lambda: all(status(ctx, j) in ("completed", "failed") for j in job_ids),
        what="every job ended",
    )
    time.sleep(0.5)  # a worker still holding a cancelled job must not complete it after all
    for plan_id, job_id in zip(plan_ids, job_ids, strict=True):
        final = status(ctx, job_id)
        tasks = task_count(ctx, plan_id)
        in_dlq = deadletter.get(ctx.redis, ctx.settings.queue, job_id) is not None
        if outcomes[job_id] == "refused":
            assert final == "completed" and tasks == 5 and not in_dlq
        else:
            assert final == "failed" and tasks == 0 and in_dlq, job_id


def test_pause_stops_taking_within_a_second_and_resume_goes_on(
    ctx: Phase1, processes: Processes
) -> None:
    held = make_plan(ctx)
    inject_fault(ctx.database_url, held, fail_times=0, sleep_s=2)
    held_job = approval.approve(ctx, held).job_id
    processes.worker(ctx.settings)
    wait_until(lambda: status(ctx, held_job) == "active", what="first job active")

    pause.pause(ctx)
    paused_at = time.monotonic()
    assert pause.is_paused(ctx) and ctx.settings.queue in pause.paused(ctx)
    wait_until(lambda: "paused queues now" in processes.log(0), what="the worker saw the pause")
    assert time.monotonic() - paused_at < 3.5
    waiting = approval.approve(ctx, make_plan(ctx))
    assert waiting.status == "pending"
    # The job it held finishes; the one enqueued during the pause waits.
    wait_until(lambda: status(ctx, held_job) == "completed", what="held job finished")
    # Idle and paused, the worker asks again every second and beats as it does; two beats
    # later it has had two chances to take the job.
    worker = wait_until(lambda: Worker.all(queue=ctx.queue()), what="worker registered")[0]

    def last_beat() -> object:
        found = Worker.find_by_key(worker.key, connection=ctx.redis)
        return found.last_heartbeat if found is not None else None

    for _ in range(2):
        wait_until(lambda beat=last_beat(): last_beat() != beat, what="worker looped again")
    assert status(ctx, waiting.job_id) == "pending" and ctx.queue().count == 1
    snap = monitor.snapshot(ctx)
    assert snap.paused and any("is paused" in w for w in snap.warnings)

    pause.resume(ctx)
    resumed_at = time.monotonic()
    wait_until(lambda: status(ctx, waiting.job_id) == "completed", what="job after resume")
    assert time.monotonic() - resumed_at < 5
    assert not pause.is_paused(ctx)


def test_cli_pause_resume_cancel_and_info(ctx: Phase1) -> None:
    env = settings_env(ctx.settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PHASE1, *args], env=env, capture_output=True, text=True, timeout=60)

    paused = run("pause")
    assert paused.returncode == 0 and "paused" in paused.stderr
    info = json.loads(run("info", "--json").stdout)
    assert info["paused"] is True and ctx.settings.queue in info["pausedQueues"]
    assert "PAUSED" in run("info").stdout
    assert run("resume").returncode == 0
    assert json.loads(run("info", "--json").stdout)["paused"] is False

    job_id = approval.approve(ctx, make_plan(ctx)).job_id
    out = run("cancel", job_id, "--reason", "by hand", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["error"]["reason"] == "cancelled"
    missing = run("cancel", str(uuid.uuid4()))
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    malformed = run("cancel", "nope")
    assert malformed.returncode == 2 and "job id 'nope' is not a UUID" in malformed.stderr
    bad = run("pause", "two words")
    assert bad.returncode == 2 and "not valid" in bad.stderr


def test_plain_rq_job_hash_of_a_cancelled_job_is_readable(ctx: Phase1) -> None:
    job_id = approval.approve(ctx, make_plan(ctx)).job_id
    cancel.cancel(ctx, job_id)
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.get_status() == "canceled"
    with psycopg.connect(ctx.database_url) as conn:
        row = conn.execute(
            "SELECT cancelled_at IS NOT NULL FROM marketplace_job_executions WHERE job_id = %s",
            (job_id,),
        ).fetchone()
    assert row == (True,)
