"""Overhead: no-op jobs drained per second by one and by two worker processes."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.env import BenchEnv, Workers, drain_rate, end_times, finished_count, worker_commands
from bench.report import Row, goal
from bench.stats import Sizer, alternate, median

KINDS = ("phase1", "rq_worker", "rq_simple")
NOOP = "bench.jobs.noop"


def enqueue_noops(redis: Redis, queue: str, count: int, chunk: int = 1000) -> list[str]:
    """`count` no-op jobs on `queue`, enqueued in pipelined batches; their ids."""
    q = Queue(queue, connection=redis, serializer=JSONSerializer)
    ids: list[str] = []
    for start in range(0, count, chunk):
        batch = [
            Queue.prepare_data(NOOP, timeout=10, result_ttl=3600)
            for _ in range(min(chunk, count - start))
        ]
        with redis.pipeline() as pipe:
            ids += [job.id for job in q.enqueue_many(batch, pipeline=pipe)]
            pipe.execute()
    return ids


def drain(env: BenchEnv, kind: str, processes: int, count: int, seconds: float) -> dict[str, float]:
    """Fill a fresh queue with `count` no-op jobs, let `processes` burst workers of `kind`
    drain it for at most `seconds`; jobs/s from the first job done to the last (and in the
    first second of that), and the largest worker RSS."""
    queue = env.queue_name(f"noop-{kind}-{processes}")
    redis = Redis.from_url(env.redis_url)
    try:
        ids = enqueue_noops(redis, queue, count)
        workers = Workers(
            worker_commands(kind, queue, env.redis_url, processes),
            env.process_env(queue),
            env.workdir / "logs",
        )
        workers.run_for(seconds, finished_count(redis, queue))
        times = end_times(redis, ids, all_done=False)
        # The first second's own rate too (the JSON keeps it): how much the warm-up weighs.
        first_second = sum(1 for t in times if t - times[0] < 1.0) if times else 0
        return {
            "rate": drain_rate(times),
            "first_second_jobs": first_second,
            "jobs": len(times),
            "rss_mb": workers.max_rss,
        }
    finally:
        redis.close()


def run(env: BenchEnv) -> tuple[list[Row], dict[str, Any]]:
    # Each run drains a pre-filled queue for 5 s (queue sizes above what each kind can do in
    # that time; the forking Worker manages ~80 jobs/s on a quiet machine). Not 2 s: a worker's
    # first second carries one-off work (its maintenance thread's first reconcile loads
    # psycopg and opens the pool), which a 2 s window weighed as a fifth of the figure.
    seconds = 0.5 if env.quick else 5.0
    base = 100 if env.quick else 2000
    first = 100 if env.quick else 40_000  # phase1 drains ~5,000/s on a quiet machine
    rows: list[Row] = []
    raw: dict[str, Any] = {"seconds": seconds}
    for processes in (1, 2):
        sizer = Sizer(seconds, {"phase1": first, "rq_simple": base, "rq_worker": base // 5})

        def measure(
            kind: str, _rep: int, processes: int = processes, sizer: Sizer = sizer
        ) -> dict[str, float]:
            result = drain(env, kind, processes, sizer.size(kind), seconds)
            sizer.saw(kind, result["rate"])
            return result

        results = alternate(KINDS, env.reps, measure)
        raw[f"{processes}p"] = results
        rate = {k: median([r["rate"] for r in v]) for k, v in results.items()}
        rss = {k: median([r["rss_mb"] for r in v]) for k, v in results.items()}
        row = Row(
            "overhead",
            f"no-op jobs/s, {processes} process{'es' if processes > 1 else ''}",
            "jobs/s",
            rate["phase1"],
            rate["rq_worker"],
            rate["rq_simple"],
        )
        if processes == 1:
            goal(row, at_least=max(4400.0, 10 * (rate["rq_worker"] or 0)))
            row.reference = "target: BullMQ 4,400/s and 10× RQ Worker"
        rows.append(row)
        if processes == 1:
            rows.append(
                Row(
                    "overhead",
                    "worker RSS after the drain",
                    "MB",
                    rss["phase1"],
                    rss["rq_worker"],
                    rss["rq_simple"],
                    higher_is_better=False,
                )
            )
    return rows, raw
