"""`python -m bench.capacity`: the figures the README's sizing section is built from.

On a Redis server of its own (so its counters hold this run's work only) and a PostgreSQL
database of its own: approve N plans through the approval service, drain them with
`phase1 worker --burst --processes 2`, and read what it cost — Redis commands and CPU per
job (INFO), worker CPU per job (the children's rusage), PostgreSQL transactions per job
(pg_stat_database) — then the PostgreSQL limit (bench/pgloop.py: the job's own SQL in a
loop, no queue) and `redis-benchmark` on the same server. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis

from bench.env import PHASE1, ROOT, BenchEnv, own_database, private_redis
from bench.realjobs import approve_plans, pg_limit

PG_SERVER = os.environ.get("PHASE1_BENCH_PG_SERVER", "postgresql://127.0.0.1:5432/postgres")


def redis_counters(redis: Redis) -> dict[str, float]:
    cpu: Any = redis.info("cpu")
    stats: Any = redis.info("stats")
    return {
        "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "commands": float(stats["total_commands_processed"]),
    }


def pg_transactions(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_benchmark(port: int, requests: int) -> dict[str, float]:
    """Requests/s of a few commands phase1 uses, one at a time and pipelined 16 deep."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    rates: dict[str, float] = {}
    for depth in (1, 16):
        out = subprocess.run(
            [
                binary,
                "-p",
                str(port),
                "-q",
                "-n",
                str(requests),
                "-c",
                "50",
                "-P",
                str(depth),
                "-t",
                "set,lpush,zadd,hset,ping_mbulk",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.replace("\r", "\n").splitlines():
            if "requests per second" in line:
                name, rest = line.split(":", 1)
                rates[f"{name.strip()} (-P {depth})"] = float(rest.split()[0])
    return rates


def measure(jobs: int, pg_jobs: int, bench_requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="phase1-capacity-") as tmp:
        workdir = Path(tmp)
        with private_redis(workdir) as redis_url, own_database(PG_SERVER) as database_url:
            env = BenchEnv(redis_url, database_url, workdir, quick=False, reps=1)
            queue = env.queue_name("capacity")
            redis = Redis.from_url(redis_url)
            ctx = env.context(queue, pool_size=4)
            plans_before = time.monotonic()
            before = redis_counters(redis)
            pg_before = pg_transactions(database_url)
            approve_plans(ctx, jobs, threads=4)
            approved = time.monotonic()
            mid = redis_counters(redis)
            cpu_before = children_cpu()
            started = time.monotonic()
            subprocess.run(
                [PHASE1, "worker", "--burst", "--processes", "2"],
                env=env.process_env(queue),
                cwd=ROOT,
                stdout=(workdir / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
                check=True,
                timeout=600,
            )
            drained = time.monotonic() - started
            if os.environ.get("PHASE1_CAPACITY_LOG"):
                shutil.copy(workdir / "worker.log", os.environ["PHASE1_CAPACITY_LOG"])
            worker_cpu = children_cpu() - cpu_before
            after = redis_counters(redis)
            pg_after = pg_transactions(database_url)
            ctx.close()
            port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
            limit = pg_limit(env, pg_jobs)
            bench = redis_benchmark(port, bench_requests)
            redis.close()
    per_job_redis_cpu = (after["cpu"] - before["cpu"]) / jobs
    return {
        "jobs": jobs,
        "approve_s": approved - plans_before,
        "drain_s": drained,
        "drain_jobs_s": jobs / drained,
        "redis_commands_per_job": (after["commands"] - before["commands"]) / jobs,
        "redis_commands_per_job_approval": (mid["commands"] - before["commands"]) / jobs,
        "redis_cpu_ms_per_job": 1000 * per_job_redis_cpu,
        "redis_jobs_s_one_core": 1 / per_job_redis_cpu if per_job_redis_cpu else None,
        "worker_cpu_ms_per_job": 1000 * worker_cpu / jobs,
        "worker_jobs_s_per_core": jobs / worker_cpu if worker_cpu else None,
        "pg_transactions_per_job": (pg_after - pg_before) / jobs,
        "pg_limit_jobs_s": limit,
        "redis_benchmark": bench,
    }


def table(figures: dict[str, Any]) -> str:
    rows = [
        ("jobs approved and drained", f"{figures['jobs']:,}"),
        ("drain with 2 worker processes", f"{figures['drain_jobs_s']:,.0f} jobs/s"),
        ("Redis commands per job (approval + worker)", f"{figures['redis_commands_per_job']:.1f}"),
        ("  of which the approval's", f"{figures['redis_commands_per_job_approval']:.1f}"),
        ("Redis server CPU per job", f"{figures['redis_cpu_ms_per_job']:.3f} ms"),
        ("jobs/s one Redis core carries", f"{figures['redis_jobs_s_one_core']:,.0f}"),
        ("worker CPU per job", f"{figures['worker_cpu_ms_per_job']:.2f} ms"),
        ("jobs/s per worker core", f"{figures['worker_jobs_s_per_core']:,.0f}"),
        ("PostgreSQL transactions per job", f"{figures['pg_transactions_per_job']:.1f}"),
        ("PostgreSQL limit (the job's SQL, 2 processes)", f"{figures['pg_limit_jobs_s']:,.0f}"),
    ]
    rows += [
        (f"redis-benchmark {k}", f"{v:,.0f} req/s") for k, v in figures["redis_benchmark"].items()
    ]
    lines = ["| measure | value |", "|---|--:|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000, help="Phase 1 jobs to drain")
    parser.add_argument("--pg-jobs", type=int, default=1000, help="jobs in the PostgreSQL loop")
    parser.add_argument("--bench-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    figures = measure(args.jobs, args.pg_jobs, args.bench_requests)
    print(table(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
