"""A Phase 1 job's work in PostgreSQL, in as few round trips as it can be done in.

Run by the job (phase1.job.run_phase1_job) and, as the PostgreSQL limit that the benchmarks
hold the worker against, by bench/pgloop.py: the same SQL. Five round trips a job where the
straightforward version (one statement per step, phase1.plans.create_phase1_tasks) took
eleven; on this project's two-core machine a round trip cost a worker about 0.3 ms.

1. `open_attempt`: one statement on an autocommit connection marks the job active and opens
   its attempt, committed without waiting for the WAL flush (a start marker need not be
   durable; see phase1.executions.SQL_START_ATTEMPT_ASYNC).
2. `create_tasks`: one transaction of two statements, committed durably. The first locks the
   execution row and reads the plan; the second creates the tasks, lists them, closes the
   attempt and completes the execution with the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from phase1 import executions, plans
from phase1.db import Conn

# The execution row locked (a concurrent run of the same job waits here) and the plan read.
SQL_LOCK_AND_READ_PLAN = """
SELECT e.status, e.result, p.id AS plan_id, p.analysis
FROM (SELECT 1) AS one
LEFT JOIN (
  SELECT status, result FROM marketplace_job_executions WHERE job_id = %(job_id)s FOR UPDATE
) AS e ON true
LEFT JOIN marketplace_plans p ON p.id = %(plan_id)s
"""
# Tasks created (those already there are kept: idempotent), then listed as one list: `old`
# reads the statement's snapshot, which holds the tasks there before it and none of `ins`.
# The attempt is closed and the execution completed with the result in the same statement.
SQL_CREATE_AND_COMPLETE = f"""
WITH ins AS (
{plans.SQL_INSERT_TASKS_ONLY}RETURNING id, position, created_at
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
  WHERE job_id = %(job_id)s
)
SELECT created, ids FROM res
"""


@dataclass(frozen=True)
class Outcome:
    """What `create_tasks` did: the job's result, and whether this run did the work (False:
    a concurrent run of the same job had completed it; this attempt was closed)."""

    result: dict[str, Any]
    ran: bool


def open_attempt(
    autocommit_conn: Conn, job_id: str, worker: str | None, retries_left: int
) -> int | None:
    """Mark the job active and open its next attempt, in one round trip, not durably; its
    number, or None when the job is already completed (or unknown)."""
    return executions.start_attempt(autocommit_conn, job_id, worker, retries_left, durable=False)


def create_tasks(conn: Conn, job_id: str, plan_id: UUID, attempt: int) -> Outcome:
    """In the caller's transaction: create the plan's Phase 1 tasks and complete the job's
    `attempt`. A missing plan or an unusable analysis raises PermanentJobError."""
    row = conn.execute(SQL_LOCK_AND_READ_PLAN, {"job_id": job_id, "plan_id": plan_id}).fetchone()
    assert row is not None  # the query always answers one row
    if row["status"] == "completed":
        # A concurrent run completed it while this attempt started: close this attempt (it
        # did nothing) so no attempt row stays `active`.
        executions.end_attempt(conn, job_id, attempt, "completed")
        return Outcome(dict(row["result"] or {}), ran=False)
    params = plans.task_params(plan_id, row if row["plan_id"] is not None else None)
    params.update(job_id=job_id, attempt=attempt, plan_text=str(plan_id))
    done = conn.execute(SQL_CREATE_AND_COMPLETE, params).fetchone()
    assert done is not None
    result = {"planId": str(plan_id), "tasksCreated": done["created"], "taskIds": done["ids"]}
    return Outcome(result, ran=True)
