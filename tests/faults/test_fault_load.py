"""Load and duplicates: many approvals at once, one plan approved by many, a job run twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from rq.job import Job, JobStatus
from support import PHASE1, Processes, run_threads

from faults.faultkit import check_invariants, make_plans, start_worker, wait_final
from phase1 import approval, events
from phase1.context import Phase1, build
from phase1.errors import UnavailableError
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]


def approve_like_a_client(ctx: Phase1, plan_id: uuid.UUID) -> tuple[Counter[str], str | None]:
    """One approval, retried after a 503 (UnavailableError) as an HTTP client would."""
    seen: Counter[str] = Counter()
    for _ in range(20):
        try:
            job_id = approval.approve(ctx, plan_id).job_id
        except UnavailableError:
            seen["503"] += 1
            time.sleep(0.2)
            continue
        except Exception as exc:
            seen[type(exc).__name__] += 1
            return seen, None
        seen["202"] += 1
        return seen, job_id
    return seen, None


def approve_from_threads(
    ctx: Phase1, plan_ids: list[uuid.UUID], threads: int
) -> tuple[list[str], Counter[str]]:
    """Approve every plan from `threads` threads at once, as an HTTP client would: a 503
    (UnavailableError) is retried after a moment; anything else is an error. Returns the job
    ids and a count of the answers seen ("202", "503", or the error's type)."""
    # TODO(lead): drive this through the HTTP app (`phase1.http`, issue 4) once merged:
    # PATCH /api/marketplace/analysis/<planId> {"action":"approve"} from the same threads,
    # counting status codes; only 202 and the designed 503s are allowed.
    answers: Counter[str] = Counter()
    job_ids: list[str] = []
    lock = threading.Lock()
    todo = list(plan_ids)

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                plan_id = todo.pop()
            answer, job_id = approve_like_a_client(ctx, plan_id)
            with lock:
                answers.update(answer)
                if job_id is not None:
                    job_ids.append(job_id)

    _, errors = run_threads(threads, client)
    assert not errors
    return job_ids, answers


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_1000_approvals_from_50_threads_with_2_workers(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    # One context for all threads, as one HTTP app process shares its pool between request
    # threads (50 pools of their own would take half the shared server's connections).
    ctx = build(make_settings(), pool_size=10)
    plan_ids = make_plans(ctx, 1000)
    # Reconciling every second would rescan the whole backlog every second.
    start_worker(processes, ctx.settings, "--processes", "2", reconcile_interval=30)
    started = time.monotonic()
    job_ids, answers = approve_from_threads(ctx, plan_ids, threads=50)
    approved = time.monotonic() - started
    assert set(answers) <= {"202", "503"}, answers
    assert len(job_ids) == len(set(job_ids)) == 1000
    wait_final(ctx, job_ids, timeout=180)
    took = time.monotonic() - started
    outcome = check_invariants(ctx, plan_ids)
    assert outcome.completed == 1000
    record(
        "1,000 approvals, 50 threads, 2 workers",
        f"load (approval service; {answers.get('503', 0)} 503s retried)",
        f"1000 completed once; approvals took {approved:.1f} s",
        took,
    )
    ctx.close()


def test_200_concurrent_approvals_of_one_plan(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(), pool_size=10)
    plan_id = make_plans(ctx, 1)[0]
    job_ids, answers = approve_from_threads(ctx, [plan_id] * 200, threads=200)
    assert set(answers) <= {"202", "503"}, answers
    assert len(job_ids) == 200 and len(set(job_ids)) == 1
    assert ctx.queue().count == 1
    start_worker(processes, ctx.settings)
    took = wait_final(ctx, job_ids[:1], timeout=30)
    check_invariants(ctx, [plan_id])
    record("200 approvals of one plan", "200 threads at once", "1 job, tasks once", took)
    ctx.close()


def test_a_completed_job_run_again_changes_nothing(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings())
    plan_id = make_plans(ctx, 1)[0]
    job_id = approval.approve(ctx, plan_id).job_id
    burst = processes.start([PHASE1, "worker", "--burst"], ctx.settings)
    assert burst.wait(60) == 0
    wait_final(ctx, [job_id], timeout=10)
    # RQ can run a job twice (a Redis restart mid-job did in a test): simulate it by pushing
    # the finished job's id onto the queue again.
    ctx.redis.rpush(ctx.queue().key, job_id)
    again = processes.start([PHASE1, "worker", "--burst"], ctx.settings)
    assert again.wait(60) == 0
    job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    assert job.get_status() == JobStatus.FINISHED
    outcome = check_invariants(ctx, [plan_id])  # includes: one job:completed event
    assert outcome.attempts[job_id] == ["completed"]
    assert job.return_value() == ctx.queue().fetch_job(job_id).return_value()  # type: ignore[union-attr]
    actives = [e for _, e in events.read(ctx.redis, ctx.settings.queue) if e.type == events.ACTIVE]
    assert len(actives) == 1
    record(
        "duplicate run of a completed job",
        "job id pushed onto the queue again",
        "no new task, attempt or completion",
        None,
    )
    ctx.close()
