"""A Phase 1 job's work in PostgreSQL, in four round trips.

Run by the job (phase1.job.run_phase1_job) and, as the PostgreSQL limit that the benchmarks
hold the worker against, by bench/pgloop.py: the same SQL. The straightforward version (one
statement per step, as phase1.plans.create_phase1_tasks does it) took eleven round trips a
job, and on this project's two-core machine a round trip cost about 0.3-0.5 ms.

Each of the two transactions goes out as two messages: BEGIN with its statements in one
(psycopg's ClientCursor: the simple query protocol, which takes several statements), then
COMMIT once they have answered. Never COMMIT in the same message: a message stuck on its way
to a hung server would then commit when the server wakes, after the job gave up on it (and
perhaps after its failure was recorded); a connection given up on rolls back instead.

1. `open_attempt` marks the job active, opens its attempt and reads the plan; committed
   without waiting for the WAL flush (a start marker need not be durable: see
   phase1.executions.SQL_START_ATTEMPT_ASYNC).
2. `create_tasks`, committed durably, locks the execution row; then, unless a concurrent run
   completed the job meanwhile, creates the tasks, lists them, closes the attempt and
   completes the execution with the result. The lock is taken by a statement of its own, so
   the next one (READ COMMITTED: a snapshot per statement) sees what a run that held the
   lock before committed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import ClientCursor

from phase1 import executions, plans
from phase1.db import Conn, Row

_START_SELECT = "SELECT exe.plan_id, exe.attempt FROM exe\n"
assert executions.SQL_START_ATTEMPT_ASYNC.endswith(_START_SELECT)
# The attempt opened, and the plan (the job's, as its payload names it) read with it.
SQL_OPEN_ATTEMPT = executions.SQL_START_ATTEMPT_ASYNC.removesuffix(_START_SELECT) + (
    "SELECT exe.attempt, p.id AS plan_id, p.analysis\n"
    "FROM exe LEFT JOIN marketplace_plans p ON p.id = %(plan_id)s\n"
)

# Tasks created (those already there are kept: idempotent), then listed as one list: `old`
# reads the statement's snapshot, which holds the tasks there before it and none of `ins`.
# When the job was completed meanwhile (`go` false) nothing is created or completed, and the
# attempt is closed all the same (it did nothing).
_INSERT = plans.SQL_INSERT_TASKS_GUARDED.format(guard="WHERE (SELECT ok FROM go)\n")
SQL_CREATE_AND_COMPLETE = f"""
SELECT 1 FROM marketplace_job_executions WHERE job_id = %(job_id)s FOR UPDATE;
WITH cur AS (
  SELECT status, result FROM marketplace_job_executions WHERE job_id = %(job_id)s
), go AS (
  SELECT NOT EXISTS (SELECT 1 FROM cur WHERE status = 'completed') AS ok
), ins AS ({_INSERT}RETURNING id, position, created_at
), old AS (
  SELECT id, position, created_at FROM marketplace_tasks
  WHERE plan_id = %(plan_id)s AND phase = 1
), res AS (
  SELECT (SELECT count(*) FROM ins)::int AS created,
         (SELECT COALESCE(array_agg(id::text ORDER BY position, created_at), '{{}}')
          FROM (SELECT * FROM ins UNION ALL SELECT * FROM old) AS t) AS ids
), att AS (
  UPDATE marketplace_job_attempts
  SET status = 'completed', ended_at = NOW(), error_type = NULL, error_message = NULL
  WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND status = 'active'
), exe AS (
  UPDATE marketplace_job_executions
  SET {executions.COMPLETED_SET},
      result = (SELECT jsonb_build_object(
        'planId', %(plan_text)s::text, 'tasksCreated', created, 'taskIds', to_jsonb(ids))
        FROM res)
  WHERE job_id = %(job_id)s AND (SELECT ok FROM go)
)
SELECT (SELECT ok FROM go) AS ran, (SELECT result FROM cur) AS earlier, created, ids FROM res
"""


@dataclass(frozen=True)
class Started:
    """An attempt opened: its number, and the plan's row (None: the plan is not there)."""

    attempt: int
    plan: Row | None


@dataclass(frozen=True)
class Outcome:
    """What `create_tasks` did: the job's result, and whether this run did the work (False:
    a concurrent run of the same job had completed it; this attempt was closed)."""

    result: dict[str, Any]
    ran: bool


def _transaction(autocommit_conn: Conn, sql: str, params: dict[str, Any]) -> Row | None:
    """BEGIN and `sql` in one message, then COMMIT; the first row of the last statement."""
    cursor = ClientCursor(autocommit_conn)
    try:
        cursor.execute("BEGIN;\n" + sql, params)
        while cursor.nextset():
            pass
        row = cursor.fetchone()
        autocommit_conn.execute("COMMIT")
        return row
    except BaseException:
        # A failed statement skips the rest of its message and leaves the transaction open
        # and aborted: end it before the connection goes back to the pool.
        with contextlib.suppress(psycopg.Error):
            autocommit_conn.execute("ROLLBACK")
        raise
    finally:
        cursor.close()


def open_attempt(
    autocommit_conn: Conn, job_id: str, plan_id: UUID, worker: str | None, retries_left: int
) -> Started | None:
    """Mark the job active, open its next attempt and read its plan, not durably; None when
    the job is already completed (or unknown)."""
    params = {"job_id": job_id, "plan_id": plan_id, "worker": worker, "retries_left": retries_left}
    row = _transaction(autocommit_conn, SQL_OPEN_ATTEMPT, params)
    if row is None:
        return None
    return Started(int(row["attempt"]), row if row["plan_id"] is not None else None)


def create_tasks(autocommit_conn: Conn, job_id: str, started: Started, plan_id: UUID) -> Outcome:
    """Create the plan's Phase 1 tasks and complete the job's attempt, in one transaction. A
    missing plan or an unusable analysis raises PermanentJobError (before anything is sent)."""
    params = plans.task_params(plan_id, started.plan)
    params.update(job_id=job_id, attempt=started.attempt, plan_text=str(plan_id))
    row = _transaction(autocommit_conn, SQL_CREATE_AND_COMPLETE, params)
    assert row is not None
    if not row["ran"]:
        return Outcome(dict(row["earlier"] or {}), ran=False)
    result = {"planId": str(plan_id), "tasksCreated": row["created"], "taskIds": row["ids"]}
    return Outcome(result, ran=True)
