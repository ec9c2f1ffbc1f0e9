"""Stopping workers: SIGTERM/SIGINT give the running job PHASE1_SHUTDOWN_TIMEOUT seconds, then
put it back on the queue without using a retry; the worker exits 0 within the bound."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from rq.job import Job, JobStatus
from support import PHASE1, Processes, wait_until

from faults.faultkit import (
    approve_slow,
    attempt_history,
    check_invariants,
    children,
    exit_within,
    kill,
    run_slow_job,
    sleeping_backend,
    start_worker,
    status,
    wait_final,
)
from phase1.context import Phase1, build
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]


@pytest.fixture
def slow_ctx(make_settings: Callable[..., Settings]) -> Phase1:
    return build(make_settings(job_timeout=10, shutdown_timeout=1.5))


def test_sigterm_lets_the_running_job_finish(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(job_timeout=10, shutdown_timeout=10))
    plan_id, job_id, worker = run_slow_job(ctx, processes, 2)
    worker.send_signal(signal.SIGTERM)
    code, took = exit_within(worker, timeout=15)
    assert code == 0, processes.log(0)
    assert status(ctx, job_id) == "completed"
    assert attempt_history(ctx, job_id) == ["completed"]
    check_invariants(ctx, [plan_id])
    record("SIGTERM mid-job", "SIGTERM, job needs ~2 s of 10", "completed, exit 0", took)
    ctx.close()


@pytest.mark.parametrize("fork", [False, True], ids=["in-process", "fork"])
def test_sigterm_requeues_a_job_that_outlives_the_timeout(
    slow_ctx: Phase1, processes: Processes, record: Record, fork: bool
) -> None:
    ctx = slow_ctx
    args = ["--fork"] if fork else []
    plan_id, job_id, worker = run_slow_job(ctx, processes, 4, *args)
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, took = exit_within(worker, timeout=15)
    assert code == 0, processes.log(0)
    assert took < ctx.settings.shutdown_timeout + 5
    # Back at the front of the queue, retries untouched; PostgreSQL says so.
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.get_status() == JobStatus.QUEUED
    assert job.retries_left == ctx.settings.max_retries
    assert ctx.queue().job_ids[0] == job_id
    assert status(ctx, job_id) == "pending"
    assert attempt_history(ctx, job_id) == ["interrupted"]
    assert sleeping_backend(ctx.database_url) is None  # the query was cancelled, not left
    start_worker(processes, ctx.settings, *args)
    wait_final(ctx, [job_id], timeout=30)
    assert attempt_history(ctx, job_id) == ["interrupted", "completed"]
    check_invariants(ctx, [plan_id])
    mode = "--fork" if fork else "in-process"
    record(
        f"SIGTERM, job outlives timeout ({mode})",
        "SIGTERM, job needs 4 s, timeout 1.5 s",
        "interrupted + requeued (retries 3/3), exit 0; next worker completes",
        time.monotonic() - signalled,
    )
    ctx.close()


@pytest.mark.parametrize("fork", [False, True], ids=["in-process", "fork"])
def test_a_second_signal_interrupts_at_once(
    make_settings: Callable[..., Settings], processes: Processes, fork: bool
) -> None:
    ctx = build(make_settings(job_timeout=10, shutdown_timeout=60))
    _, job_id, worker = run_slow_job(ctx, processes, 6, *(["--fork"] if fork else []))
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    worker.send_signal(signal.SIGINT)  # within a second: the same stop delivered twice
    time.sleep(1.2)
    assert worker.poll() is None and status(ctx, job_id) == "active"
    worker.send_signal(signal.SIGINT)
    code, took = exit_within(worker, timeout=10)
    assert code == 0 and took < 4, processes.log(0)
    assert status(ctx, job_id) == "pending"
    assert attempt_history(ctx, job_id) == ["interrupted"]
    ctx.close()


def test_supervisor_stops_its_workers_within_the_bound(
    slow_ctx: Phase1, processes: Processes, record: Record
) -> None:
    ctx = slow_ctx
    supervisor = start_worker(processes, ctx.settings, "--processes", "2")
    wait_until(lambda: len(children(supervisor.pid)) == 2, timeout=20, what="2 workers")
    # A worker that crashes is replaced.
    first = children(supervisor.pid)[0][0]
    kill(first)
    wait_until(
        lambda: len(children(supervisor.pid)) == 2 and first not in dict(children(supervisor.pid)),
        timeout=20,
        what="a replacement worker",
    )
    # No pause here: the killed worker's forked scheduler, which lives on for a moment, holds
    # no copy of the dead worker's dequeue socket (phase1.runtime.forks closes them in the child),
    # so Redis cannot serve a job to the dead worker.
    # Long enough that neither can finish within the timeout, whichever worker started first.
    plan_a, job_a = approve_slow(ctx, 5)
    plan_b, job_b = approve_slow(ctx, 5)
    try:
        wait_until(
            lambda: status(ctx, job_a) == status(ctx, job_b) == "active",
            timeout=60,
            what="both jobs running",
        )
    except BaseException:  # what the supervisor and its workers said, for the failure report
        print(processes.log(0))
        raise
    supervisor.send_signal(signal.SIGTERM)
    code, took = exit_within(supervisor, timeout=30)
    assert code == 0, processes.log(0)
    assert took < ctx.settings.shutdown_timeout + 8
    assert {status(ctx, job_a), status(ctx, job_b)} == {"pending"}
    start_worker(processes, ctx.settings, "--processes", "2")
    wait_final(ctx, [job_a, job_b], timeout=40)
    check_invariants(ctx, [plan_a, plan_b])
    record(
        "SIGTERM to `phase1 worker --processes 2`",
        "kill -9 of one child, then SIGTERM with 2 jobs of 5 s",
        "child replaced; both jobs requeued, exit 0",
        took,
    )
    ctx.close()


def test_a_job_that_ignores_the_interrupt_is_stopped_anyway(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    """The last resort of the bound: the work horse is killed (the worker exits 0), or the
    in-process worker requeues the job and exits 1. Either way the job goes back."""
    tests_dir = str(Path(__file__).resolve().parent.parent)
    started = {}
    for mode in ("in-process", "fork"):
        settings = make_settings(
            shutdown_timeout=1, job_timeout=60, queue=f"q-{uuid.uuid4().hex[:8]}"
        )
        ctx = build(settings)
        job = ctx.queue().enqueue("faults.stubborn.stubborn_job", 30, job_timeout=60)
        args = ["--fork"] if mode == "fork" else []
        worker = processes.start([PHASE1, "worker", *args], settings, env={"PYTHONPATH": tests_dir})
        started[mode] = (ctx, job.id, worker)
    for ctx, job_id, _ in started.values():
        wait_until(
            lambda: ctx.queue().started_job_registry.get_job_ids() == [job_id],  # noqa: B023
            timeout=30,
            what="the stubborn job running",
        )
    for _, _, worker in started.values():
        worker.send_signal(signal.SIGTERM)
    expected = {"in-process": 1, "fork": 0}
    for mode, (ctx, job_id, worker) in started.items():
        code, took = exit_within(worker, timeout=30)
        assert code == expected[mode], (mode, took)
        assert took < 1 + 10 + 5, (mode, took)
        job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
        assert job.get_status() == JobStatus.QUEUED, mode
        assert ctx.queue().job_ids == [job_id]
        ctx.close()
