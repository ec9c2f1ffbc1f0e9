"""A worker whose loop has ended exits at once: its teardown never waits on RQ's pubsub
thread (which reads with a 60 s timeout, and which redis-py 8's `stop()` joins without a
bound). Seen as a burst worker hanging a minute after "done, quitting", and as a worker
stopped with SIGTERM outliving the test's wait."""

from __future__ import annotations

import signal
import time

from support import Processes, inject_fault, wait_until

from phase1.context import Phase1, build
from phase1.domain import plans
from phase1.jobs import approval
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS

# Far below the 60 s the pubsub thread could hold the exit, well above a loaded machine's
# start-up and teardown.
EXIT_WITHIN = 25


def test_burst_workers_exit_as_soon_as_their_queue_is_empty(
    make_settings: object, processes: Processes
) -> None:
    ctx: Phase1 = build(make_settings(max_retries=0))  # type: ignore[operator]
    try:
        for round_ in range(6):  # the hang came about one time in three
            with ctx.transaction() as conn:
                plan_id = plans.create_plan(conn, f"exit {round_}", SAMPLE_ANALYSIS).id
            inject_fault(ctx.database_url, plan_id, fail_times=round_ % 2)  # fail or complete
            job_id = approval.approve(ctx, plan_id).job_id
            started = time.monotonic()
            assert processes.worker(ctx.settings, "--burst").wait(timeout=EXIT_WITHIN) == 0
            assert time.monotonic() - started < EXIT_WITHIN
            assert jobs.view(ctx, job_id).status in ("completed", "failed")
    finally:
        ctx.close()


def test_a_worker_told_to_stop_exits_at_once(ctx: Phase1, processes: Processes) -> None:
    for _ in range(3):
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, "stop", SAMPLE_ANALYSIS).id
        job_id = approval.approve(ctx, plan_id).job_id
        worker = processes.worker(ctx.settings)
        wait_until(lambda: jobs.view(ctx, job_id).status == "completed", timeout=60, what="done")  # noqa: B023
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=EXIT_WITHIN) == 0
