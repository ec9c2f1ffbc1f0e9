"""A Phase 1 job's work in PostgreSQL, in two transactions of seven round trips in all.

Run by the job (phase1.job.run_phase1_job) and, as the PostgreSQL limit that the benchmarks
hold the worker against, by bench/pgloop.py: the same SQL. The straightforward version (one
statement per step, as phase1.plans.create_phase1_tasks does it) took eleven round trips; in
the same in-process loop this takes 2.1 ms a job where that took 3.1 ms.

1. `open_attempt` marks the job active, opens its attempt and reads the plan (one statement);
   its transaction commits without waiting for the WAL flush (a start marker need not be
   durable: see phase1.executions.SQL_START_ATTEMPT_ASYNC).
2. `create_tasks`, committed durably, locks the execution row; then, unless a concurrent run
   completed the job meanwhile, creates the tasks, lists them, closes the attempt and
   completes the execution with the result (one statement). The lock is taken by a
   statement of its own, so the next one (READ COMMITTED: a snapshot per statement) sees
   what a run that held the lock before committed.

Measured and left out: sending BEGIN and the statements as one message (psycopg's
ClientCursor) saves three round trips but loses prepared statements, and planning these
statements anew each time cost more (4.3 ms a job); psycopg's pipeline mode cost more than
the round trips it saved. COMMIT must never go in the same message as the statements (nor
the statements in autocommit): a message held up by a hung server would then commit when
the server wakes, after the job gave up on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from phase1 import executions, plans

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn, Row

_START_SELECT = "SELECT exe.plan_id, exe.attempt FROM exe\n"
assert executions.SQL_START_ATTEMPT_ASYNC.endswith(_START_SELECT)
# The attempt opened, and the plan (the job's, as its payload names it) read with it.
# Its transaction holds the execution row too: bounded idle, as SQL_LOCK below says why.
_ASYNC = "AS sync\n"
assert _ASYNC in executions.SQL_START_ATTEMPT_ASYNC
SQL_OPEN_ATTEMPT = executions.SQL_START_ATTEMPT_ASYNC.removesuffix(_START_SELECT).replace(
    _ASYNC,
    "AS sync, set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true) AS idle\n",
) + (
    "SELECT exe.attempt, p.id AS plan_id, p.analysis\n"
    "FROM exe LEFT JOIN marketplace_plans p ON p.id = %(plan_id)s\n"
)

# Tasks created (those already there are kept: idempotent), then listed as one list: `old`
# reads the statement's snapshot, which holds the tasks there before it and none of `ins`.
# When the job was completed meanwhile (`go` false) nothing is created or completed, and the
# attempt is closed all the same (it did nothing).
_INSERT = plans.SQL_INSERT_TASKS_GUARDED.format(guard="WHERE (SELECT ok FROM go)\n")
# The lock, and (in the same round trip) a bound on how long the transaction may sit idle
# holding it: a worker cut off from the network mid-job leaves its session open, and the
# server would keep the row locked, blocking the worker that takes the job over, until TCP
# noticed (hours). Transaction-local: other transactions keep the pool's setting.
SQL_LOCK = """
SELECT set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true)
FROM marketplace_job_executions WHERE job_id = %(job_id)s FOR UPDATE
"""
SQL_CREATE_AND_COMPLETE = f"""
WITH cur AS (
  SELECT status, result FROM marketplace_job_executions WHERE job_id = %(job_id)s
), go AS (
  -- Not completed, and this attempt still the current one: a worker given up for dead (the
  -- orphan sweep closed its attempt, another worker opened the next) must not complete it.
  SELECT NOT EXISTS (SELECT 1 FROM cur WHERE status = 'completed')
     AND EXISTS (SELECT 1 FROM marketplace_job_attempts
                 WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND status = 'active') AS ok
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
SELECT (SELECT ok FROM go) AS ran, (SELECT result FROM cur) AS earlier,
       (SELECT status FROM cur) AS status, created, ids FROM res
"""


@dataclass(frozen=True)
class Started:
    """An attempt opened: its number, and the plan's row (None: the plan is not there)."""

    attempt: int
    plan: Row | None


@dataclass(frozen=True)
class Outcome:
    """What `create_tasks` did: the job's result, and whether this run did the work (False:
    a concurrent run of the same job had completed it; this attempt was closed), or was
    refused because its attempt is no longer the current one (`superseded`)."""

    result: dict[str, Any]
    ran: bool
    superseded: bool = False


def open_attempt(
    conn: Conn,
    job_id: str,
    plan_id: UUID,
    worker: str | None,
    retries_left: int,
    *,
    idle_timeout_ms: int = 5000,
) -> Started | None:
    """In the caller's transaction (which then commits without the WAL flush): mark the job
    active, open its next attempt and read its plan; None when the job is already completed
    (or unknown)."""
    params = {
        "job_id": job_id,
        "plan_id": plan_id,
        "worker": worker,
        "retries_left": retries_left,
        "idle_ms": str(max(1, idle_timeout_ms)),
    }
    row = conn.execute(SQL_OPEN_ATTEMPT, params).fetchone()
    if row is None:
        return None
    return Started(int(row["attempt"]), row if row["plan_id"] is not None else None)


def create_tasks(
    conn: Conn, job_id: str, started: Started, plan_id: UUID, *, idle_timeout_ms: int = 5000
) -> Outcome:
    """In the caller's transaction: create the plan's Phase 1 tasks and complete the job's
    attempt. A missing plan or an unusable analysis raises PermanentJobError (before anything
    is sent). The transaction may sit idle `idle_timeout_ms` at most (the server ends the
    session then), so a cut-off worker cannot hold the job's row locked."""
    params = plans.task_params(plan_id, started.plan)
    params.update(job_id=job_id, attempt=started.attempt, plan_text=str(plan_id))
    conn.execute(SQL_LOCK, {"job_id": job_id, "idle_ms": str(max(1, idle_timeout_ms))})
    row = conn.execute(SQL_CREATE_AND_COMPLETE, params).fetchone()
    assert row is not None
    if not row["ran"]:
        superseded = row["status"] != "completed"
        return Outcome(dict(row["earlier"] or {}), ran=False, superseded=superseded)
    result = {"planId": str(plan_id), "tasksCreated": row["created"], "taskIds": row["ids"]}
    return Outcome(result, ran=True)
