"""The PostgreSQL limit: a Phase 1 job's own transactions, run in a loop without a queue.

Run as a process (`python -m bench.pgloop ...`) by the real-jobs benchmark, one per worker it
stands in for. For each (job id, plan id) it runs what `phase1.job.run_phase1_job` runs in
PostgreSQL: the attempt-start statement, then the tasks-and-completion transaction (the
same SQL and code, phase1/work.py). `--variant` runs other ways of doing it, to measure
them (`statements`: one statement per step, as the job did before phase1.work).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from phase1 import db, executions, plans, work

VARIANTS = ("job", "statements", "one-tx", "held-conn", "pipeline")


def _result(plan_id: UUID, created: list[UUID], tasks: list[Any]) -> dict[str, Any]:
    return {
        "planId": str(plan_id),
        "tasksCreated": len(created),
        "taskIds": [str(t.id) for t in tasks],
    }


def _start_and_finish(conn: db.Conn, job_id: str, plan_id: UUID) -> None:
    attempt = executions.start_attempt(conn, job_id, "pgloop")
    assert attempt is not None
    created, tasks = plans.create_phase1_tasks(conn, plan_id)
    executions.complete(conn, job_id, attempt, _result(plan_id, created, tasks))


def run_job(
    pool: ConnectionPool[db.Conn], held: db.Conn, job: tuple[str, UUID], variant: str
) -> None:
    job_id, plan_id = job
    if variant == "job":  # what run_phase1_job does (phase1.work), on pooled connections
        with db.transaction(pool) as conn:
            started = work.open_attempt(conn, job_id, plan_id, "pgloop", 3)
        assert started is not None
        with db.transaction(pool) as conn:
            work.create_tasks(conn, job_id, started, plan_id)
    elif variant == "statements":  # one statement per step, as before phase1.work
        with db.transaction(pool) as conn:
            attempt = executions.start_attempt(conn, job_id, "pgloop")
        assert attempt is not None
        with db.transaction(pool) as conn:
            executions.get(conn, job_id, lock=True)
            created, tasks = plans.create_phase1_tasks(conn, plan_id)
            executions.complete(conn, job_id, attempt, _result(plan_id, created, tasks))
    elif variant == "one-tx":  # one pooled transaction, no re-read under lock
        with db.transaction(pool) as conn:
            _start_and_finish(conn, job_id, plan_id)
    elif variant == "held-conn":  # one transaction on a connection kept (no pool check)
        with held.transaction():
            _start_and_finish(held, job_id, plan_id)
    else:  # the same, in psycopg's pipeline mode: statements go out without waiting
        with held.pipeline(), held.transaction():
            _start_and_finish(held, job_id, plan_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--jobs", type=Path, required=True, help="JSON list of [job id, plan id]")
    parser.add_argument("--start-at", type=float, required=True, help="unix time to start at")
    parser.add_argument("--variant", choices=VARIANTS, default="job")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    jobs = [(j, UUID(p)) for j, p in json.loads(args.jobs.read_text())]
    # The worker's pool, as phase1.context.build opens it (statement timeouts of a 10 s job).
    pool = db.open_pool(args.database_url, statement_timeout_ms=7000, lock_timeout_ms=5000)
    pool.wait()
    with db.connect(args.database_url, autocommit=True) as held:
        time.sleep(max(0.0, args.start_at - time.time()))
        started = time.time()
        for job in jobs:
            run_job(pool, held, job, args.variant)
        ended = time.time()
    pool.close()
    args.out.write_text(json.dumps({"started": started, "ended": ended, "jobs": len(jobs)}))


if __name__ == "__main__":
    main()
