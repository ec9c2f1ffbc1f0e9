"""The PostgreSQL limit: a Phase 1 job's own transactions, run in a loop without a queue.

Run as a process (`python -m bench.pgloop ...`) by the real-jobs benchmark, one per worker it
stands in for. For each (job id, plan id) it runs what the job function runs in
PostgreSQL: the attempt-start statement, then the tasks-and-completion transaction (the
same SQL and code, phase1.domain.phase1_tasks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from uuid import UUID

from psycopg_pool import ConnectionPool

from phase1 import db
from phase1.domain import phase1_tasks


def run_job(pool: ConnectionPool[db.Conn], job: tuple[str, UUID]) -> None:
    """What the Phase 1 job does in PostgreSQL (phase1_tasks), on pooled connections."""
    job_id, plan_id = job
    with db.transaction(pool) as conn:
        started = phase1_tasks.open_attempt(conn, job_id, plan_id, "pgloop", 3)
    assert started is not None
    with db.transaction(pool) as conn:
        phase1_tasks.create_tasks(conn, job_id, started, plan_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--jobs", type=Path, required=True, help="JSON list of [job id, plan id]")
    parser.add_argument("--start-at", type=float, required=True, help="unix time to start at")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    jobs = [(j, UUID(p)) for j, p in json.loads(args.jobs.read_text())]
    # The worker's pool, as phase1.context.build opens it (statement timeouts of a 10 s job).
    pool = db.open_pool(args.database_url, statement_timeout_ms=7000, lock_timeout_ms=5000)
    pool.wait()
    time.sleep(max(0.0, args.start_at - time.time()))
    started = time.time()
    for job in jobs:
        run_job(pool, job)
    ended = time.time()
    pool.close()
    args.out.write_text(json.dumps({"started": started, "ended": ended, "jobs": len(jobs)}))


if __name__ == "__main__":
    main()
