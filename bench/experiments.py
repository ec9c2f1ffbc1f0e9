"""Quick experiments behind the estimates in bench/PLAN.md: `python -m bench.experiments`.

- the cost of one Redis round trip here, and of the same commands pipelined;
- RQ's SimpleWorker with and without its per-job INFO log lines;
- the job's PostgreSQL work as it is (two pooled transactions) against one transaction,
  a held connection, and psycopg's pipeline mode;
- bench/fastloop.py: RQ's data model with one round trip per job, or per batch of 10.
Results go to stdout and bench/profiles/experiments.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench import fastloop
from bench.env import (
    BenchEnv,
    Workers,
    bench_env,
    drain_rate,
    end_times,
    finished_count,
    rq_worker,
)
from bench.overhead import enqueue_noops
from bench.realjobs import pg_limit
from bench.report import fmt
from bench.stats import median

OUT = Path(__file__).resolve().parent / "profiles" / "experiments.md"
REPS = 3


def round_trips(env: BenchEnv) -> list[str]:
    redis = Redis.from_url(env.redis_url)
    singles, piped = [], []
    for _ in range(REPS):
        began = time.perf_counter()
        for _ in range(2000):
            redis.ping()
        singles.append((time.perf_counter() - began) / 2000 * 1e6)
        began = time.perf_counter()
        for _ in range(100):
            with redis.pipeline(transaction=False) as pipe:
                for _ in range(20):
                    pipe.ping()
                pipe.execute()
        piped.append((time.perf_counter() - began) / 2000 * 1e6)
    redis.close()
    return [
        f"| one Redis round trip (PING) | {fmt(median(singles))} µs |",
        f"| one command inside a 20-command pipeline | {fmt(median(piped))} µs |",
    ]


def simple_worker(env: BenchEnv, quiet: bool, seconds: float = 2.5) -> float:
    queue = env.queue_name("exp-log")
    redis = Redis.from_url(env.redis_url)
    ids = enqueue_noops(redis, queue, 1500)
    commands = rq_worker(queue, env.redis_url, 1, "rq.worker.SimpleWorker")
    if quiet:
        commands = [[*argv, "--logging_level", "WARNING"] for argv in commands]
    Workers(commands, env.process_env(queue), env.workdir / "logs").run_for(
        seconds, finished_count(redis, queue)
    )
    rate = drain_rate(end_times(redis, ids, all_done=False))
    redis.close()
    return rate


def logging_cost(env: BenchEnv) -> list[str]:
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(REPS):
        for quiet in (False, True):
            rates[quiet].append(simple_worker(env, quiet))
    loud, quiet = median(rates[False]), median(rates[True])
    return [
        f"| RQ SimpleWorker, no-op jobs, INFO logging | {fmt(loud)} jobs/s |",
        f"| RQ SimpleWorker, no-op jobs, WARNING logging | {fmt(quiet)} jobs/s |",
    ]


def postgres(env: BenchEnv) -> list[str]:
    lines = []
    for processes in (1, 2):
        for variant in ("job", "one-tx", "held-conn", "pipeline"):
            rate = median([pg_limit(env, 150, variant, processes) for _ in range(REPS)])
            lines.append(
                f"| job SQL, {variant}, {processes} process{'es' * (processes > 1)} "
                f"| {fmt(rate)} jobs/s |"
            )
    return lines


def fast_loop(env: BenchEnv) -> list[str]:
    lines = []
    redis = Redis.from_url(env.redis_url)
    for batch in (1, 10):
        runs: list[dict[str, Any]] = []
        for _ in range(REPS):
            queue = env.queue_name("exp-fast")
            enqueue_noops(redis, queue, 20_000)
            runs.append(fastloop.run(env.redis_url, queue, batch=batch, seconds=2.5))
        rate = median([r["rate"] for r in runs])
        trips = median([r["round_trips"] / r["jobs"] for r in runs])
        lines.append(
            f"| one Lua round trip per {batch} job{'s' * (batch > 1)}, no-op jobs "
            f"| {fmt(rate)} jobs/s ({trips:.2f} round trips/job) |"
        )
    redis.close()
    return lines


def main() -> None:
    with bench_env(redis_url=None, database_url=None, quick=False, reps=REPS) as env:
        lines = ["| experiment | median of 3 |", "|---|--:|"]
        for part in (round_trips, logging_cost, postgres, fast_loop):
            lines += part(env)
            print("\n".join(lines[-4:]), flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("# Experiments (python -m bench.experiments)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
