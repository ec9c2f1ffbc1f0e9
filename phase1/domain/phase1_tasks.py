"""A plan's Phase 1 tasks, created from its analysis: the one place that writes them, for the
sync approval (`create_phase1_tasks`) and for the Phase 1 job (`open_attempt`, then
`create_tasks`, which also completes the job's attempt and execution).

Task creation is idempotent: a task key is unique per plan (ON CONFLICT DO NOTHING), so a
second run, or a run after a crash half-way, creates only what is missing.

The job's work is two transactions of one statement each (after the row lock), so a job costs
PostgreSQL few round trips (bench/RESULTS.md has the measurements):
1. `open_attempt` marks the job active, opens its next attempt and reads the plan; its
   transaction commits without waiting for the WAL flush (a start marker need not be
   durable: if the server crashes first, the next run reuses the number, with no gap).
2. `create_tasks`, committed durably, locks the execution row; then, unless a concurrent run
   completed the job meanwhile, creates the tasks, lists them, closes the attempt and
   completes the execution with the result. The lock is taken by a statement of its own, so
   the next one (READ COMMITTED: a snapshot per statement) sees what the run before it
   committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from phase1.domain import plans
from phase1.errors import InvalidInputError, PermanentJobError
from phase1.schemas import Task

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn, Row

# The insert of a plan's Phase 1 tasks, as one CTE member that both statements below hold:
# it creates the tasks only while `go` says so.
_INSERT_TASKS = """
  INSERT INTO marketplace_tasks (id, plan_id, phase, task_key, title, description, position)
  SELECT gen_random_uuid(), %(plan_id)s, 1, t.key, t.title, t.description, t.position
  FROM unnest(%(keys)s::text[], %(titles)s::text[], %(descriptions)s::text[],
              %(positions)s::int[]) AS t(key, title, description, position)
  WHERE (SELECT ok FROM go)
  ON CONFLICT ON CONSTRAINT uq_task_key_per_plan DO NOTHING
  RETURNING id, position, created_at
"""

# Sync approval: the tasks created, their ids returned.
SQL_CREATE_TASKS = f"""
WITH go AS (SELECT TRUE AS ok), ins AS ({_INSERT_TASKS})
SELECT id FROM ins
"""

# Attempt n+1 opened (numbers come from the history, so they have no gaps) and the plan read
# with it; a completed job is left alone (a duplicate run must not reopen it). Committed
# without waiting for the WAL flush, and bounded idle as SQL_LOCK says why (set_config ...
# true: this transaction only).
SQL_OPEN_ATTEMPT = """
WITH prev AS (
  -- The state before this attempt (the statement's snapshot): `failed` means the job was
  -- sent back from the DLQ by something other than `phase1 dlq requeue` (RQ's own tools).
  SELECT status FROM marketplace_job_executions WHERE job_id = %(job_id)s
), nxt AS (
  SELECT COALESCE(MAX(attempt), 0) + 1 AS n,
         set_config('synchronous_commit', 'off', true) AS sync,
         set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true) AS idle
  FROM marketplace_job_attempts WHERE job_id = %(job_id)s
), exe AS (
  UPDATE marketplace_job_executions e
  SET status = 'active', attempt_number = nxt.n, started_at = NOW(), progress = 0,
      next_retry_at = NULL, updated_at = NOW(),
      -- attempts used + retries RQ still holds: also right after a requeue's fresh budget
      max_attempts = COALESCE(nxt.n + %(retries_left)s::int, e.max_attempts)
  FROM nxt
  WHERE e.job_id = %(job_id)s AND e.status <> 'completed' AND e.cancelled_at IS NULL
  RETURNING e.job_id, e.plan_id, nxt.n AS attempt
), lost AS (
  -- An attempt still open when the next one starts was never recorded as ended (its worker
  -- died, or PostgreSQL was down when it failed): close it so no attempt stays `active`.
  UPDATE marketplace_job_attempts a
  SET status = 'failed', ended_at = NOW(), error_type = 'AttemptLost',
      error_message = 'the attempt ended without being recorded (worker or database lost)'
  FROM exe WHERE a.job_id = exe.job_id AND a.status = 'active'
), att AS (
  INSERT INTO marketplace_job_attempts (job_id, attempt, status, worker, started_at)
  SELECT job_id, attempt, 'active', %(worker)s, NOW() FROM exe
  RETURNING attempt
)
SELECT exe.attempt, p.id AS plan_id, p.analysis, (SELECT status FROM prev) AS was
FROM exe LEFT JOIN marketplace_plans p ON p.id = %(plan_id)s
"""

# The lock, and (in the same round trip) a bound on how long the transaction may sit idle
# holding it: a worker cut off from the network mid-job leaves its session open, and the
# server would keep the row locked, blocking the worker that takes the job over, until TCP
# noticed (hours). Transaction-local: other transactions keep the pool's setting.
SQL_LOCK = """
SELECT set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true)
FROM marketplace_job_executions WHERE job_id = %(job_id)s FOR UPDATE
"""

# The tasks created (those already there are kept), then listed as one list: `old` reads the
# statement's snapshot, which holds the tasks there before it and none of `ins`. When the job
# was completed meanwhile (`go` false) nothing is created or completed, and the attempt is
# closed all the same (it did nothing).
SQL_CREATE_AND_COMPLETE = f"""
WITH cur AS (
  SELECT status, result FROM marketplace_job_executions WHERE job_id = %(job_id)s
), go AS (
  -- Not completed, and this attempt still the current one: a worker given up for dead (the
  -- orphan sweep closed its attempt, another worker opened the next) must not complete it.
  SELECT NOT EXISTS (SELECT 1 FROM cur WHERE status = 'completed')
     AND EXISTS (SELECT 1 FROM marketplace_job_attempts
                 WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND status = 'active') AS ok
), ins AS ({_INSERT_TASKS}), old AS (
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
  SET status = 'completed', progress = 100, completed_at = NOW(), error_message = NULL,
      error_type = NULL, next_retry_at = NULL, updated_at = NOW(),
      result = (SELECT jsonb_build_object(
        'planId', %(plan_text)s::text, 'tasksCreated', created, 'taskIds', to_jsonb(ids))
        FROM res)
  WHERE job_id = %(job_id)s AND (SELECT ok FROM go)
)
SELECT (SELECT ok FROM go) AS ran, (SELECT result FROM cur) AS earlier,
       (SELECT status FROM cur) AS status, created, ids FROM res
"""


def task_params(plan_id: UUID, plan: Row | None) -> dict[str, Any]:
    """The parameters of the task insert for the plan's Phase 1 tasks, from the `analysis` of
    its row (None: the plan was not found). A missing plan or an unusable analysis raises
    PermanentJobError: retrying cannot help."""
    if plan is None:
        raise PermanentJobError(f"plan {plan_id} not found")
    try:
        tasks = plans.validate_analysis(plan["analysis"]).phase1
    except InvalidInputError as exc:
        raise PermanentJobError(f"plan {plan_id}: {exc}") from None
    return {
        "plan_id": plan_id,
        "keys": [t.key for t in tasks],
        "titles": [t.title for t in tasks],
        "descriptions": [t.description for t in tasks],
        "positions": list(range(len(tasks))),
    }


def create_phase1_tasks(conn: Conn, plan_id: UUID) -> tuple[list[UUID], list[Task]]:
    """Create the plan's Phase 1 tasks from its analysis, in the caller's transaction.

    Idempotent: tasks already there (an earlier run, a crash half-way) are left alone.
    Returns the ids created by this call and all of the plan's Phase 1 tasks.
    A missing plan or an unusable analysis raises PermanentJobError: retrying cannot help.
    """
    row = conn.execute(plans.SQL_GET_PLAN, {"id": plan_id}).fetchone()
    created = conn.execute(SQL_CREATE_TASKS, task_params(plan_id, row)).fetchall()
    return [r["id"] for r in created], plans.list_tasks(conn, plan_id)


@dataclass(frozen=True)
class Started:
    """An attempt opened: its number, and the plan's row (None: the plan is not there)."""

    attempt: int
    plan: Row | None
    was: str | None = None  # the job's status before this attempt opened


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
    plan = row if row["plan_id"] is not None else None
    return Started(int(row["attempt"]), plan, row["was"])


def create_tasks(
    conn: Conn, job_id: str, started: Started, plan_id: UUID, *, idle_timeout_ms: int = 5000
) -> Outcome:
    """In the caller's transaction: create the plan's Phase 1 tasks and complete the job's
    attempt. A missing plan or an unusable analysis raises PermanentJobError (before anything
    is sent). The transaction may sit idle `idle_timeout_ms` at most (the server ends the
    session then), so a cut-off worker cannot hold the job's row locked."""
    params = task_params(plan_id, started.plan)
    params.update(job_id=job_id, attempt=started.attempt, plan_text=str(plan_id))
    conn.execute(SQL_LOCK, {"job_id": job_id, "idle_ms": str(max(1, idle_timeout_ms))})
    row = conn.execute(SQL_CREATE_AND_COMPLETE, params).fetchone()
    assert row is not None
    if not row["ran"]:
        superseded = row["status"] != "completed"
        return Outcome(dict(row["earlier"] or {}), ran=False, superseded=superseded)
    result = {"planId": str(plan_id), "tasksCreated": row["created"], "taskIds": row["ids"]}
    return Outcome(result, ran=True)
