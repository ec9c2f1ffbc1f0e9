"""Cost: Redis commands and round trips per job lifecycle, counted on a redis-server of the
benchmark's own (the shared one serves others at the same time), and worker RSS over a long
run of no-op jobs."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from redis import Redis
from redis.connection import Connection, ConnectionPool
from rq import Queue
from rq.serializers import JSONSerializer

from bench.env import (
    BenchEnv,
    BenchError,
    Workers,
    make_plans,
    private_redis,
    rss_mb,
    worker_commands,
)
from bench.overhead import NOOP, enqueue_noops
from bench.report import Row, goal
from phase1.jobs import approval

# RSS growth is counted from a sample this many seconds (and 1,000 jobs) into the run, past
# the first runs of the worker's maintenance tasks (rss_run).
WARM_S = 2.0


class CountingConnection(Connection):
    """A connection that counts its round trips (one per request or pipeline written)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def counting_client(url: str) -> Redis:
    return Redis(connection_pool=ConnectionPool.from_url(url, connection_class=CountingConnection))


def commandstats(redis: Redis) -> Counter[str]:
    stats = redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    delta = after - before
    delta["info"] -= 1  # the snapshot that measured `after`
    return +delta


def _counted_burst(env: BenchEnv, url: str, kind: str, queue: str, count: int) -> tuple[int, int]:
    """(round trips, Redis commands) of one burst worker of `kind` draining `queue`."""
    admin = Redis.from_url(url)
    try:
        before = commandstats(admin)
        out = env.workdir / f"counted-{uuid.uuid4().hex[:6]}.json"
        commands = [
            [sys.executable, "-m", "bench.counted", str(out), Path(argv[0]).name, *argv[1:]]
            for argv in worker_commands(kind, queue, url, 1)
        ]
        Workers(commands, env.process_env(queue, redis_url=url), env.workdir / "logs").wait(
            timeout=60 + count
        )
        worker_cmds = _delta(commandstats(admin), before)
        return json.loads(out.read_text())["round_trips"], sum(worker_cmds.values())
    finally:
        admin.close()


def lifecycle(env: BenchEnv, url: str, kind: str, real: bool, count: int) -> dict[str, Any]:
    """Per-job commands and round trips of the producer (enqueue or approval) and of one
    burst worker of `kind` draining `count` jobs. The worker's own start and stop (measured
    as a burst on an empty queue, just before) are taken off: they are no job's cost."""
    queue = env.queue_name(f"cost-{kind}")
    admin = Redis.from_url(url)
    producer = counting_client(url)
    ctx = env.context(queue, redis_url=url, pool_size=1)
    ctx.redis.close()
    ctx.redis = producer
    try:
        fixed_trips, fixed_cmds = _counted_burst(env, url, kind, queue, 0)
        plan_ids = make_plans(ctx, count) if real else []
        q = Queue(queue, connection=producer, serializer=JSONSerializer)
        before = commandstats(admin)
        CountingConnection.sent = 0
        for index in range(count):
            if real:
                approval.approve(ctx, plan_ids[index])
            else:
                q.enqueue(NOOP, job_timeout=10, result_ttl=3600)
        producer_trips = CountingConnection.sent
        middle = commandstats(admin)
        trips, cmds = _counted_burst(env, url, kind, queue, count)
        worker_cmds = _delta(commandstats(admin), middle)
        return {
            "producer_commands": sum(_delta(middle, before).values()) / count,
            "producer_round_trips": producer_trips / count,
            "worker_commands": (cmds - fixed_cmds) / count,
            "worker_round_trips": (trips - fixed_trips) / count,
            "worker_start_stop": {"round_trips": fixed_trips, "commands": fixed_cmds},
            "worker_top_commands": {
                name: round(calls / count, 2) for name, calls in worker_cmds.most_common(12)
            },
        }
    finally:
        ctx.close()
        admin.close()


def rss_run(env: BenchEnv, url: str, jobs: int, seconds: float) -> dict[str, Any]:
    """One phase1 worker process drains `jobs` no-op jobs (or works for `seconds`, whichever
    ends first); its RSS sampled against the number of jobs done.

    Growth is counted from the first sample at job 1,000 or later *and* WARM_S seconds or more
    after the start: the worker's maintenance tasks (orphan sweep, reconciler) first run at a
    random moment within its first second, and their first use of PostgreSQL loads psycopg
    and opens the pool (~2.5 MB, once). The sample at job 1,000 alone is kept too."""
    queue = env.queue_name("rss")
    redis = Redis.from_url(url)
    try:
        enqueue_noops(redis, queue, jobs)
        workers = Workers(
            worker_commands("phase1", queue, url, 1),
            env.process_env(queue, redis_url=url),
            env.workdir / "logs",
        )
        pid = workers.procs[0].pid
        samples: list[tuple[int, float]] = []
        began = time.monotonic()
        deadline = began + seconds
        warm: tuple[int, float] | None = None
        while workers.procs[0].poll() is None and time.monotonic() < deadline:
            rss = rss_mb(pid)
            if rss is not None:
                samples.append((jobs - int(redis.llen(f"rq:queue:{queue}")), rss))
                if warm is None and samples[-1][0] >= 1000 and time.monotonic() - began >= WARM_S:
                    warm = samples[-1]
            time.sleep(0.5)
        done = jobs - int(redis.llen(f"rq:queue:{queue}"))
        workers.stop()
    finally:
        redis.close()
    if not samples:
        raise BenchError("no RSS sample of the worker")
    mark = min(1000, max(1, done // 2))
    at_mark = next((rss for d, rss in samples if d >= mark), samples[-1][1])
    warm = warm or samples[-1]
    return {
        "jobs_done": done,
        "rss_at_mark": at_mark,
        "mark": mark,
        "warm_mark": warm[0],
        "rss_at_warm_mark": warm[1],
        "rss_end": samples[-1][1],
        "rss_max": max(rss for _, rss in samples),
        "samples": samples[:: max(1, len(samples) // 100)],
    }


def run(env: BenchEnv, rss_jobs: int, rss_seconds: float) -> tuple[list[Row], dict[str, Any]]:
    count = 10 if env.quick else 200
    real_count = {"phase1": 5 if env.quick else 100, "rq_worker": 2 if env.quick else 15}
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    with private_redis(env.workdir) as url:
        kinds = ("phase1", "rq_worker", "rq_simple")
        noop = {k: lifecycle(env, url, k, False, count) for k in kinds}
        real = {k: lifecycle(env, url, k, True, n) for k, n in real_count.items()}
        raw["noop"], raw["phase1_job"] = noop, real
        for label, results in (("no-op job", noop), ("Phase 1 job", real)):
            for what in ("commands", "round_trips"):
                values = {
                    k: r[f"producer_{what}"] + r[f"worker_{what}"] for k, r in results.items()
                }
                row = Row(
                    "cost",
                    f"Redis {what.replace('_', ' ')} per {label} (enqueue + worker)",
                    "per job",
                    values["phase1"],
                    values["rq_worker"],
                    values.get("rq_simple"),
                    higher_is_better=False,
                )
                if what == "round_trips":
                    goal(row, at_most=6)
                rows.append(row)
        rss = rss_run(env, url, rss_jobs, rss_seconds)
    raw["rss"] = rss
    growth = rss["rss_end"] - rss["rss_at_warm_mark"]
    since_mark = rss["rss_end"] - rss["rss_at_mark"]
    row = Row(
        "cost",
        f"phase1 worker RSS after {rss['jobs_done']:,} no-op jobs",
        "MB",
        rss["rss_end"],
        higher_is_better=False,
        reference=(
            f"{growth:+.1f} MB since job {rss['warm_mark']:,} ({WARM_S:.0f} s in); "
            f"{since_mark:+.1f} MB since job {rss['mark']:,}"
        ),
    )
    goal(row, at_most=80)
    if growth > 2:
        row.met = False
        row.distance = f"grew {growth:.1f} MB"
    rows.append(row)
    return rows, raw
