"""Start: worker process start to its first job done, with the job already queued."""

from __future__ import annotations

import compileall
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

import phase1
from bench.env import BenchEnv, Workers, end_times, worker_commands
from bench.overhead import enqueue_noops
from bench.realjobs import approve_plans
from bench.report import Row, goal
from bench.stats import alternate, median

KINDS = ("phase1", "rq_worker", "rq_simple")


def first_job(env: BenchEnv, kind: str, real: bool) -> float:
    """Milliseconds from starting a burst worker of `kind` to its (only) job being done."""
    queue = env.queue_name(f"start-{kind}")
    if real:
        ctx = env.context(queue, pool_size=1)
        try:
            job_ids = approve_plans(ctx, 1)
        finally:
            ctx.close()
    redis = Redis.from_url(env.redis_url)
    try:
        if not real:
            job_ids = enqueue_noops(redis, queue, 1)
        started = datetime.now(UTC).timestamp()
        Workers(
            worker_commands(kind, queue, env.redis_url, 1),
            env.process_env(queue),
            env.workdir / "logs",
        ).wait(timeout=60)
        return (end_times(redis, job_ids)[0] - started) * 1000
    finally:
        redis.close()


def compile_phase1() -> None:
    """Byte-compile phase1's modules, as `pip install` does for an installed package: an
    editable checkout run with PYTHONDONTWRITEBYTECODE (as here) would compile them from
    source at every start (~70 ms), which no deployed worker pays. RQ's are compiled."""
    compileall.compile_dir(str(Path(phase1.__file__).parent), quiet=1)


def run(env: BenchEnv) -> tuple[list[Row], dict[str, Any]]:
    compile_phase1()
    rows, raw = [], {}
    for real in (False, True):
        results = alternate(KINDS, env.reps, lambda kind, _r, real=real: first_job(env, kind, real))
        raw["phase1 job" if real else "no-op job"] = results
        ms = {kind: median(values) for kind, values in results.items()}
        row = Row(
            "start",
            f"process start → first job done ({'Phase 1 job' if real else 'no-op job'})",
            "ms",
            ms["phase1"],
            ms["rq_worker"],
            ms["rq_simple"],
            higher_is_better=False,
        )
        rows.append(goal(row, at_most=250))
    return rows, raw
