"""Page times of the web console with a full store: 10,000 jobs (a hundred of them in the last
hour's chart every minute), 1,000 DLQ entries with tracebacks, their attempts and events.

Starts the real `phase1 serve` on a Redis database and a PostgreSQL database of its own, then
times every page through it with one keep-alive client (after untimed warm-up requests) and
prints p50 / p95 per page. Not a test, and not in `python -m bench`'s quick sections: filling
the store takes a while.

    python -m bench.console [--requests 200] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from bench.env import bench_env
from bench.http_latency import processes
from bench.stats import percentile
from phase1 import keys
from phase1.context import Phase1, build
from phase1.db import migrate
from phase1.jobs import deadletter
from phase1.schemas import SAMPLE_ANALYSIS
from tests.servers import free_port

JOBS = 10_000
DLQ = 1_000
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/srv/phase1/jobs/phase1_job.py", line {100 + i}, in run\n    step_{i}()\n'
    for i in range(12)
)

SQL_FILL = """
WITH p AS (
  INSERT INTO marketplace_plans (id, title, status, analysis, created_at, updated_at)
  SELECT gen_random_uuid(), 'Bench plan ' || g, 'approved', %(analysis)s,
         %(now)s - g * %(spacing)s * INTERVAL '1 second', %(now)s
  FROM generate_series(1, %(jobs)s) g
  RETURNING id, created_at
), numbered AS (
  SELECT id, created_at, row_number() OVER (ORDER BY created_at) AS rn FROM p
), e AS (
  INSERT INTO marketplace_job_executions
    (id, plan_id, job_id, status, attempt_number, queue, max_attempts, progress, created_at,
     started_at, completed_at, error_type, error_message)
  SELECT gen_random_uuid(), id, id::text,
         CASE WHEN rn %% 10 = 0 THEN 'failed' ELSE 'completed' END,
         CASE WHEN rn %% 10 = 0 THEN 4 WHEN rn %% 5 = 1 THEN 2 ELSE 1 END,
         %(queue)s, 4, 100, created_at, created_at + INTERVAL '5 ms',
         created_at + (20 + rn %% 200) * INTERVAL '1 ms',
         CASE WHEN rn %% 10 = 0 THEN 'RuntimeError' END,
         CASE WHEN rn %% 10 = 0 THEN 'the analysis service answered 500' END
  FROM numbered
  RETURNING job_id, status, attempt_number, created_at, completed_at
)
INSERT INTO marketplace_job_attempts
  (job_id, attempt, status, worker, started_at, ended_at, error_type, error_message)
SELECT job_id, n,
       CASE WHEN status = 'completed' AND n = attempt_number THEN 'completed' ELSE 'failed' END,
       'bench-worker-1', created_at, completed_at,
       CASE WHEN status = 'completed' AND n = attempt_number THEN NULL ELSE 'RuntimeError' END,
       CASE WHEN status = 'completed' AND n = attempt_number THEN NULL
            ELSE 'the analysis service answered 500' END
FROM e, generate_series(1, e.attempt_number) n
"""


def _attempts(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "attempt": n,
            "status": "failed",
            "worker": "bench-worker-1",
            "started_at": row["created_at"],
            "ended_at": row["completed_at"],
            "error_type": "RuntimeError",
            "error_message": "the analysis service answered 500",
        }
        for n in range(1, 5)
    ]


def _event(row: dict[str, Any], kind: str, at_ms: int) -> dict[str, Any]:
    return {
        "id": f"{kind}-{row['job_id']}",
        "type": kind,
        "jobId": row["job_id"],
        "planId": str(row["plan_id"]),
        "attempt": 1,
        "at": datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(),
        "data": {},
    }


def fill(ctx: Phase1, spacing: float) -> list[dict[str, Any]]:
    """The store's rows (one job every `spacing` seconds back from now), DLQ entries and
    events; returns the job rows."""
    now = datetime.now(UTC).replace(tzinfo=None)
    queue = ctx.settings.queue
    with ctx.transaction() as conn:
        conn.execute(
            SQL_FILL,
            {
                "analysis": Jsonb(SAMPLE_ANALYSIS),
                "now": now,
                "jobs": JOBS,
                "queue": queue,
                "spacing": spacing,
            },
        )
        rows = conn.execute(
            "SELECT job_id, plan_id, status, attempt_number, created_at, completed_at "
            "FROM marketplace_job_executions WHERE queue = %(q)s ORDER BY created_at",
            {"q": queue},
        ).fetchall()
    with ctx.read() as conn:  # statistics, as autovacuum keeps them on a live database
        conn.execute("ANALYZE")
    failed = [r for r in rows if r["status"] == "failed"][:DLQ]
    for row in failed:
        entry = deadletter.make_entry(
            job_id=row["job_id"],
            plan_id=str(row["plan_id"]),
            queue=queue,
            reason="exception" if int(row["job_id"][:2], 16) % 3 else "timeout",
            error_type="RuntimeError",
            message="the analysis service answered 500",
            traceback_text=TRACEBACK,
            payload={"planId": str(row["plan_id"]), "v": 1},
            history=_attempts(row),
        )
        deadletter.add(ctx.redis, queue, entry)
    stream = keys.event_stream(queue)
    events: list[tuple[int, dict[str, Any]]] = []
    for row in rows:
        start = int(row["created_at"].replace(tzinfo=UTC).timestamp() * 1000)
        end = int(row["completed_at"].replace(tzinfo=UTC).timestamp() * 1000)
        final = "job:completed" if row["status"] == "completed" else "job:failed"
        for at, kind in ((start, "job:enqueued"), (start + 5, "job:active"), (end, final)):
            events.append((at, _event(row, kind, at)))
    events.sort(key=lambda item: item[0])
    with ctx.redis.pipeline(transaction=False) as pipe:
        last, seq = -1, 0
        for at, event in events:
            seq = seq + 1 if at <= last else 0
            last = max(at, last)
            pipe.xadd(stream, {"e": json.dumps(event)}, id=f"{last}-{seq}")
        pipe.execute()
    return [dict(r) for r in rows]


def time_pages(port: int, pages: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    results = {}
    for name, path in pages.items():
        headers = {"X-Console-Fragment": "1"} if name.endswith("(live part)") else {}
        samples = []
        for i in range(requests + 20):
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{path} answered {answer.status}")
            if i >= 20:  # the first ones warm the caches up
                samples.append((time.perf_counter() - started) * 1000)
        results[name] = {
            "p50_ms": round(percentile(samples, 50) or 0, 2),
            "p95_ms": round(percentile(samples, 95) or 0, 2),
        }
    conn.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument(
        "--spacing",
        type=float,
        default=10.0,
        help="seconds between jobs, back from now (10: 360 in the last hour; 0.36: all 10,000)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    with bench_env(redis_url=None, database_url=None, quick=False, reps=1) as env:
        settings = env.settings(env.queue_name("console"))
        migrate(env.database_url)
        ctx = build(settings)
        try:
            started = time.monotonic()
            rows = fill(ctx, args.spacing)
            filled_s = time.monotonic() - started
        finally:
            ctx.close()
        failed = next(r for r in rows if r["status"] == "failed")
        retried = next(r for r in rows if r["attempt_number"] == 2)
        pages = {
            "overview": "/console/",
            "overview (live part)": "/console/",
            "jobs": "/console/jobs",
            "jobs, failed in the last 24h": "/console/jobs?state=failed&since=24h",
            "jobs, page 100": "/console/jobs?page=100",
            "job (retried, with events)": f"/console/jobs/{retried['job_id']}",
            "job (in the DLQ)": f"/console/jobs/{failed['job_id']}",
            "dlq": "/console/dlq",
            "dlq, one reason, page 5": "/console/dlq?reason=exception&page=5",
            "dlq entry": f"/console/dlq/{failed['job_id']}",
            "plans": "/console/plans",
            "plan": f"/console/plans/{failed['plan_id']}",
            "workers": "/console/workers",
        }
        port = free_port()
        with processes(settings, port, 8, env.workdir, workers=0):
            results = time_pages(port, pages, args.requests)
    report = {
        "jobs": JOBS,
        "dlq": DLQ,
        "spacing_s": args.spacing,
        "fill_seconds": round(filled_s, 1),
        "pages": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{JOBS} jobs, one every {args.spacing:g} s back from now; {DLQ} DLQ entries (filled "
        f"in {filled_s:.1f} s); {args.requests} requests per page, one keep-alive client"
    )
    print(f"{'page':34} {'p50 ms':>8} {'p95 ms':>8}")
    for name, numbers in results.items():
        print(f"{name:34} {numbers['p50_ms']:8.2f} {numbers['p95_ms']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
