"""Real jobs: Phase 1 jobs (plans of 5 tasks, written to PostgreSQL) per second with two worker
processes, beside a plain forking `rq worker` running the same function and beside the
PostgreSQL limit for the same transactions (no queue)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.env import (
    ROOT,
    BenchEnv,
    BenchError,
    Workers,
    drain_rate,
    end_times,
    finished_count,
    make_plans,
    phase1_worker,
    rq_worker,
)
from bench.report import Row
from bench.stats import Sizer, alternate, median
from phase1.context import Phase1
from phase1.domain import audit, plans
from phase1.jobs import approval

KINDS = ("phase1", "rq_worker", "pg_limit")
PROCESSES = 2


def approve_plans(ctx: Phase1, count: int, threads: int = 1) -> list[str]:
    """`count` fresh plans approved through the approval service (from `threads` threads
    sharing `ctx`, whose pool should have as many connections); their job ids."""
    plan_ids = make_plans(ctx, count)
    if threads == 1:
        return [approval.approve(ctx, plan_id).job_id for plan_id in plan_ids]
    with ThreadPoolExecutor(threads) as pool:
        return [a.job_id for a in pool.map(lambda p: approval.approve(ctx, p), plan_ids)]


def pending_executions(ctx: Phase1, count: int) -> list[tuple[str, str]]:
    """Approved plans with `pending` execution rows, as the approval leaves them, but not
    enqueued: work for the queue-less loop. [(job id, plan id)]"""
    plan_ids = make_plans(ctx, count)
    jobs = []
    with ctx.transaction() as conn:
        for plan_id in plan_ids:
            plans.set_plan_status(conn, plan_id, "approved")
            job_id = str(uuid.uuid4())
            audit.insert(
                conn, plan_id=plan_id, job_id=job_id, queue=ctx.settings.queue, max_attempts=4
            )
            jobs.append((job_id, str(plan_id)))
    return jobs


def pg_limit(env: BenchEnv, count: int, processes: int = PROCESSES) -> float:
    """Jobs/s when `processes` processes run the job's SQL back to back (bench/pgloop.py)."""
    ctx = env.context(env.queue_name("pgloop"), pool_size=1)
    try:
        jobs = pending_executions(ctx, count)
    finally:
        ctx.close()
    start_at = time.time() + 2.0  # after every process has imported and connected
    procs, outs = [], []
    for index in range(processes):
        share = env.workdir / f"pgloop-{uuid.uuid4().hex[:6]}-{index}.json"
        share.write_text(json.dumps(jobs[index::processes]))
        out = share.with_suffix(".out")
        outs.append(out)
        argv = [sys.executable, "-m", "bench.pgloop", "--database-url", env.database_url]
        argv += ["--jobs", str(share), "--start-at", str(start_at)]
        procs.append(subprocess.Popen([*argv, "--out", str(out)], cwd=ROOT))
    for proc in procs:
        if proc.wait(timeout=120 + count) != 0:
            raise BenchError(f"bench.pgloop exited with {proc.returncode}")
    spans = [json.loads(out.read_text()) for out in outs]
    return count / (max(s["ended"] for s in spans) - min(s["started"] for s in spans))


def drain(env: BenchEnv, kind: str, count: int, seconds: float) -> float:
    if kind == "pg_limit":
        return pg_limit(env, count)
    queue = env.queue_name(f"real-{kind}")
    ctx = env.context(queue, pool_size=4)
    try:
        job_ids = approve_plans(ctx, count, threads=4)
        if kind == "phase1":
            commands = phase1_worker(PROCESSES)
        else:
            commands = rq_worker(queue, env.redis_url, PROCESSES)
        Workers(commands, env.process_env(queue), env.workdir / "logs").run_for(
            seconds, finished_count(ctx.redis, queue)
        )
        return drain_rate(end_times(ctx.redis, job_ids, all_done=False))
    finally:
        ctx.close()


def run(env: BenchEnv) -> tuple[list[Row], dict[str, Any]]:
    # Workers drain approved plans for a few seconds (the plain rq worker forks and imports
    # phase1 for every job: ~2 jobs/s here, so it gets fewer); the loop runs a fixed count.
    seconds = 0.5 if env.quick else 3.0
    first = (
        {"phase1": 20, "rq_worker": 4, "pg_limit": 20}
        if env.quick
        else {"phase1": 200, "rq_worker": 12, "pg_limit": 200}
    )
    sizer = Sizer(seconds, first, floor=4)

    def measure(kind: str, _rep: int) -> float:
        rate = drain(env, kind, sizer.size(kind), seconds)
        if kind != "pg_limit":  # the loop runs its count whatever its rate
            sizer.saw(kind, rate)
        return rate

    results = alternate(KINDS, env.reps, measure)
    rate = {kind: median(values) for kind, values in results.items()}
    row = Row(
        "real jobs",
        "Phase 1 jobs/s (5 tasks each), 2 processes",
        "jobs/s",
        rate["phase1"],
        rate["rq_worker"],
        reference=f"PG limit {rate['pg_limit']:.0f}/s" if rate["pg_limit"] else "",
    )
    # Targets: ≥ 5× plain rq worker and ≥ half the PostgreSQL limit.
    needed = max(5 * (rate["rq_worker"] or 0), 0.5 * (rate["pg_limit"] or 0))
    row.target = f"≥ {needed:.0f} jobs/s (5× RQ, ½ PG limit)"
    row.met = rate["phase1"] is not None and rate["phase1"] >= needed
    if rate["phase1"] and not row.met:
        row.distance = f"×{needed / rate['phase1']:.1f} short"
    share = Row(
        "real jobs",
        "share of the PostgreSQL limit",
        "%",
        100 * rate["phase1"] / rate["pg_limit"] if rate["phase1"] and rate["pg_limit"] else None,
        100 * rate["rq_worker"] / rate["pg_limit"]
        if rate["rq_worker"] and rate["pg_limit"]
        else None,
    )
    return [row, share], {"seconds": seconds, "runs": results}
