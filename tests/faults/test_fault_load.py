"""Load and duplicates: many approvals at once, one plan approved by many, a job run twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from http_support import Api, start_server
from rq.job import Job, JobStatus
from support import PHASE1, Processes, run_threads

from faults.faultkit import check_invariants, make_plans, start_worker, wait_final
from phase1.context import build
from phase1.jobs import approval, events
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]


def approve_like_a_client(api: Api, plan_id: uuid.UUID) -> tuple[Counter[str], str | None]:
    """One approval over HTTP, retried after a 503 as the web app would."""
    seen: Counter[str] = Counter()
    for _ in range(20):
        answer = api.approve(plan_id)
        seen[str(answer.status)] += 1
        if answer.status == 503:
            time.sleep(0.2)
            continue
        if answer.status != 202:
            return seen, None
        return seen, str(answer.json["jobId"])
    return seen, None


def approve_from_threads(
    api: Api, plan_ids: list[uuid.UUID], threads: int
) -> tuple[list[str], Counter[str]]:
    """PATCH-approve every plan through the real HTTP app from `threads` threads at once; a
    503 is retried after a moment. Returns the job ids and a count of the status codes."""
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
            answer, job_id = approve_like_a_client(api, plan_id)
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
    api = start_server(processes, ctx.settings)
    started = time.monotonic()
    job_ids, answers = approve_from_threads(api, plan_ids, threads=50)
    approved = time.monotonic() - started
    assert set(answers) <= {"202", "503"}, answers
    assert len(job_ids) == len(set(job_ids)) == 1000
    wait_final(ctx, job_ids, timeout=180)
    took = time.monotonic() - started
    outcome = check_invariants(ctx, plan_ids)
    assert outcome.completed == 1000
    record(
        "1,000 approvals, 50 threads, 2 workers",
        f"load over HTTP ({answers.get('503', 0)} 503s retried)",
        f"1000 completed once; approvals took {approved:.1f} s",
        took,
    )
    ctx.close()


def test_200_concurrent_approvals_of_one_plan(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(), pool_size=10)
    plan_id = make_plans(ctx, 1)[0]
    api = start_server(processes, ctx.settings)
    job_ids, answers = approve_from_threads(api, [plan_id] * 200, threads=200)
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
