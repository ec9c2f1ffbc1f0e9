"""Redis faults, on redis-servers of the tests' own: restarts (with and without data), a hang,
and a flush after approvals. PostgreSQL is the system of record: nothing is lost."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
from support import PHASE1, Processes, settings_env, wait_until

from faults.faultkit import (
    OwnRedis,
    approve_all,
    check_invariants,
    make_plans,
    run_slow_job,
    start_worker,
    status,
    wait_final,
)
from phase1.context import Phase1, build
from phase1.domain import audit
from phase1.errors import UnavailableError
from phase1.jobs import approval
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]
OwnRedisFactory = Callable[..., OwnRedis]


def job_of(ctx: Phase1, plan_id: uuid.UUID) -> str:
    with ctx.transaction() as conn:
        row = audit.for_plan(conn, plan_id)
    assert row is not None
    return str(row["job_id"])


@pytest.mark.parametrize("aof", [False, True], ids=["no-persistence", "aof"])
def test_redis_restarted_mid_job(
    own_redis: OwnRedisFactory,
    make_settings: Callable[..., Settings],
    processes: Processes,
    record: Record,
    aof: bool,
) -> None:
    server = own_redis(aof=aof)
    ctx = build(make_settings(redis_url=server.url, job_timeout=8))
    plan_a, job_a, worker = run_slow_job(ctx, processes, 2)
    server.kill()  # a crash: no chance to save anything more
    # An approval meanwhile is refused before it writes anything (HTTP 503); the caller
    # retries it once Redis is back.
    plan_c = make_plans(ctx, 1)[0]
    with pytest.raises(UnavailableError, match="nothing was written"):
        approval.approve(ctx, plan_c)
    with ctx.transaction() as conn:
        assert audit.for_plan(conn, plan_c) is None
    # The running job commits in PostgreSQL; its worker meets the dead Redis afterwards.
    wait_until(lambda: status(ctx, job_a) == "completed", timeout=20, what="job a committed")
    time.sleep(1.0)
    server.start()
    back = time.monotonic()
    plan_b = make_plans(ctx, 1)[0]
    job_b = approval.approve(ctx, plan_b).job_id
    job_c = approval.approve(ctx, plan_c).job_id  # the refused approval, retried
    wait_final(ctx, [job_a, job_b, job_c], timeout=45)
    took = time.monotonic() - back
    assert worker.poll() is None, "the worker must survive the restart"
    outcome = check_invariants(ctx, [plan_a, plan_b, plan_c], events_kept=aof)
    assert outcome.attempts[job_a] == ["completed"]
    kind = "with AOF" if aof else "without persistence"
    record(
        f"Redis restarted mid-job ({kind})",
        "redis-server SIGKILL during a job, an approval refused while down, restart",
        "worker reconnected; all 3 completed once (the approval refused while down, retried)",
        took,
    )
    ctx.close()


def test_redis_hanging_mid_job(
    own_redis: OwnRedisFactory,
    make_settings: Callable[..., Settings],
    processes: Processes,
    record: Record,
) -> None:
    server = own_redis()
    ctx = build(make_settings(redis_url=server.url, job_timeout=8))
    plan_a, job_a, worker = run_slow_job(ctx, processes, 1)
    server.pause()  # SIGSTOP: connections stay open, nothing answers
    time.sleep(4)
    server.resume()
    resumed = time.monotonic()
    wait_final(ctx, [job_a], timeout=30)
    plan_b = make_plans(ctx, 1)[0]
    job_b = approval.approve(ctx, plan_b).job_id
    wait_final(ctx, [job_b], timeout=30)
    assert worker.poll() is None
    check_invariants(ctx, [plan_a, plan_b])
    record(
        "Redis hanging mid-job",
        "SIGSTOP redis-server for 4 s during a job",
        "job completed once; worker carried on",
        time.monotonic() - resumed,
    )
    ctx.close()


def reconcile_cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PHASE1, "reconcile", "--json", "--grace", "0", *args],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_redis_flushed_after_approvals(
    own_redis: OwnRedisFactory,
    make_settings: Callable[..., Settings],
    processes: Processes,
    record: Record,
) -> None:
    server = own_redis()
    by_hand = build(make_settings(redis_url=server.url, queue=f"q-{uuid.uuid4().hex[:8]}"))
    by_worker = build(make_settings(redis_url=server.url, queue=f"q-{uuid.uuid4().hex[:8]}"))
    plans_hand, plans_worker = make_plans(by_hand, 30), make_plans(by_worker, 20)
    jobs_hand = approve_all(by_hand, plans_hand)
    jobs_worker = approve_all(by_worker, plans_worker)
    server.client().flushall()  # our own server: every queued job is gone
    flushed = time.monotonic()

    # `phase1 reconcile`, three at once: each lost job is enqueued exactly once.
    runs = [reconcile_cli(by_hand.settings) for _ in range(3)]
    summaries = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        summaries.append(json.loads(out))
    assert sum(s["requeued"] for s in summaries) == 30
    assert sorted(by_hand.queue().job_ids) == sorted(jobs_hand)

    # A worker's own periodic reconciler finds the other queue's jobs.
    start_worker(processes, by_worker.settings)
    took_worker = wait_final(by_worker, jobs_worker, timeout=60)
    start_worker(processes, by_hand.settings)
    wait_final(by_hand, jobs_hand, timeout=60)
    took_all = time.monotonic() - flushed
    check_invariants(by_hand, plans_hand, events_kept=False)
    check_invariants(by_worker, plans_worker, events_kept=False)
    record(
        "Redis flushed after 30 approvals (CLI)",
        "FLUSHALL, then 3 concurrent `phase1 reconcile`",
        "30 re-enqueued once each; all completed",
        took_all,
    )
    record(
        "Redis flushed after 20 approvals (worker)",
        "FLUSHALL, then only a worker starts",
        "its reconciler re-enqueued all 20; all completed",
        took_worker,
    )
    by_hand.close()
    by_worker.close()
