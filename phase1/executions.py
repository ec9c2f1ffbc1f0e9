"""The audit trail: one `marketplace_job_executions` row per job, one attempt row per try."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from phase1.db import Conn, Row

SQL_INSERT = """
INSERT INTO marketplace_job_executions
  (id, plan_id, job_id, status, attempt_number, queue, max_attempts, progress)
VALUES (%(id)s, %(plan_id)s, %(job_id)s, 'pending', 1, %(queue)s, %(max_attempts)s, 0)
RETURNING *
"""
SQL_BY_JOB = "SELECT * FROM marketplace_job_executions WHERE job_id = %(job_id)s"
SQL_BY_JOB_LOCK = SQL_BY_JOB + " FOR UPDATE"
SQL_BY_PLAN = "SELECT * FROM marketplace_job_executions WHERE plan_id = %(plan_id)s"

# Starts attempt n+1: the attempt number comes from the history, so numbers have no gaps.
# A row already completed is left alone (a duplicate run must not reopen it).
SQL_START_ATTEMPT = """
WITH nxt AS (
  SELECT COALESCE(MAX(attempt), 0) + 1 AS n
  FROM marketplace_job_attempts WHERE job_id = %(job_id)s
), exe AS (
  UPDATE marketplace_job_executions e
  SET status = 'active', attempt_number = nxt.n, started_at = NOW(), progress = 0,
      next_retry_at = NULL, updated_at = NOW()
  FROM nxt
  WHERE e.job_id = %(job_id)s AND e.status <> 'completed'
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
SELECT exe.plan_id, exe.attempt FROM exe
"""
SQL_PROGRESS = """
UPDATE marketplace_job_executions SET progress = %(progress)s, updated_at = NOW()
WHERE job_id = %(job_id)s AND status = 'active'
"""
SQL_COMPLETE = """
UPDATE marketplace_job_executions
SET status = 'completed', progress = 100, completed_at = NOW(), result = %(result)s,
    error_message = NULL, error_type = NULL, next_retry_at = NULL, updated_at = NOW()
WHERE job_id = %(job_id)s
RETURNING *
"""
SQL_END_ATTEMPT = """
UPDATE marketplace_job_attempts
SET status = %(status)s, ended_at = NOW(), error_type = %(error_type)s,
    error_message = %(error_message)s
WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND status = 'active'
"""
SQL_FAIL = """
UPDATE marketplace_job_executions
SET status = %(status)s, error_message = %(error_message)s, error_type = %(error_type)s,
    next_retry_at = %(next_retry_at)s,
    completed_at = CASE WHEN %(final)s THEN NOW() ELSE NULL END,
    updated_at = NOW()
WHERE job_id = %(job_id)s AND status <> 'completed'
RETURNING *
"""
# An attempt stopped by a worker's shutdown: the job is `pending` again and the attempt
# `interrupted`; neither counts against the retry budget.
SQL_INTERRUPT = """
WITH exe AS (
  UPDATE marketplace_job_executions
  SET status = 'pending', progress = 0, error_type = 'WorkerShutdown',
      error_message = %(message)s, updated_at = NOW()
  WHERE job_id = %(job_id)s AND status = 'active'
  RETURNING job_id, attempt_number
)
UPDATE marketplace_job_attempts a
SET status = 'interrupted', ended_at = NOW(), error_type = 'WorkerShutdown',
    error_message = %(message)s
FROM exe
WHERE a.job_id = exe.job_id AND a.attempt = exe.attempt_number AND a.status = 'active'
RETURNING a.attempt
"""
SQL_ATTEMPTS = """
SELECT * FROM marketplace_job_attempts WHERE job_id = %(job_id)s ORDER BY attempt
"""


def insert(conn: Conn, *, plan_id: UUID, job_id: str, queue: str, max_attempts: int) -> Row:
    """The `pending` row written in the approval's transaction."""
    row = conn.execute(
        SQL_INSERT,
        {
            "id": uuid.uuid4(),
            "plan_id": plan_id,
            "job_id": job_id,
            "queue": queue,
            "max_attempts": max_attempts,
        },
    ).fetchone()
    assert row is not None
    return row


def get(conn: Conn, job_id: str, *, lock: bool = False) -> Row | None:
    return conn.execute(SQL_BY_JOB_LOCK if lock else SQL_BY_JOB, {"job_id": job_id}).fetchone()


def for_plan(conn: Conn, plan_id: UUID) -> Row | None:
    return conn.execute(SQL_BY_PLAN, {"plan_id": plan_id}).fetchone()


def start_attempt(conn: Conn, job_id: str, worker: str | None) -> int | None:
    """Mark the job active and open its next attempt; None when it is already completed
    (or unknown)."""
    row = conn.execute(SQL_START_ATTEMPT, {"job_id": job_id, "worker": worker}).fetchone()
    return None if row is None else int(row["attempt"])


def set_progress(conn: Conn, job_id: str, progress: int) -> None:
    conn.execute(SQL_PROGRESS, {"job_id": job_id, "progress": progress})


def complete(conn: Conn, job_id: str, attempt: int, result: dict[str, Any]) -> Row | None:
    end_attempt(conn, job_id, attempt, "completed")
    return conn.execute(SQL_COMPLETE, {"job_id": job_id, "result": Jsonb(result)}).fetchone()


def end_attempt(
    conn: Conn,
    job_id: str,
    attempt: int,
    status: str,
    error_type: str | None = None,
    error_message: str | None = None,
) -> None:
    conn.execute(
        SQL_END_ATTEMPT,
        {
            "job_id": job_id,
            "attempt": attempt,
            "status": status,
            "error_type": error_type,
            "error_message": error_message,
        },
    )


def fail_attempt(
    conn: Conn,
    job_id: str,
    attempt: int,
    *,
    final: bool,
    error_type: str,
    error_message: str,
    next_retry_at: datetime | None,
) -> Row | None:
    """Close the attempt as failed; the job becomes `retrying` or, when final, `failed`."""
    end_attempt(conn, job_id, attempt, "failed", error_type, error_message)
    return conn.execute(
        SQL_FAIL,
        {
            "job_id": job_id,
            "status": "failed" if final else "retrying",
            "final": final,
            "error_type": error_type,
            "error_message": error_message,
            "next_retry_at": None if final else next_retry_at,
        },
    ).fetchone()


def attempts(conn: Conn, job_id: str) -> list[Row]:
    return conn.execute(SQL_ATTEMPTS, {"job_id": job_id}).fetchall()


def interrupt_attempt(conn: Conn, job_id: str, message: str) -> int | None:
    """Record the running attempt as `interrupted` and the job as `pending` again; returns the
    attempt number, or None when the job was not active (completed meanwhile, say)."""
    row = conn.execute(SQL_INTERRUPT, {"job_id": job_id, "message": message}).fetchone()
    return None if row is None else int(row["attempt"])
