"""The audit trail: one `marketplace_job_executions` row per job, one attempt row per try."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
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

SQL_PROGRESS = """
UPDATE marketplace_job_executions SET progress = %(progress)s, updated_at = NOW()
WHERE job_id = %(job_id)s AND status = 'active'
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
SQL_LATEST_ATTEMPT = """
SELECT * FROM marketplace_job_attempts WHERE job_id = %(job_id)s ORDER BY attempt DESC LIMIT 1
"""
# An attempt that failed before it could open its row (bad payload, PostgreSQL down at the
# start, a worker killed between dequeue and start) still gets one: numbers stay gapless.
SQL_INSERT_FAILED_ATTEMPT = """
INSERT INTO marketplace_job_attempts
  (job_id, attempt, status, worker, started_at, ended_at, error_type, error_message)
SELECT %(job_id)s::varchar, COALESCE(MAX(attempt), 0) + 1, 'failed', %(worker)s, NOW(), NOW(),
       %(error_type)s, %(error_message)s
FROM marketplace_job_attempts WHERE job_id = %(job_id)s
RETURNING attempt
"""
# A worker given up for dead came back: the attempt it ran is marked `superseded`, with what
# it says appended to what the sweep (or the next attempt) had recorded. Its late outcome
# changes nothing else: the job belongs to the attempt that took over.
SQL_SUPERSEDE = """
UPDATE marketplace_job_attempts
SET status = 'superseded', ended_at = COALESCE(ended_at, NOW()),
    error_message = CONCAT_WS(' | then: ', error_message, %(note)s::text)
WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND status IN ('active', 'failed')
RETURNING attempt
"""
SQL_ATTEMPT = "SELECT * FROM marketplace_job_attempts WHERE job_id = %(job_id)s AND attempt = %(n)s"
SQL_SET_ATTEMPT_NUMBER = """
UPDATE marketplace_job_executions SET attempt_number = %(attempt)s WHERE job_id = %(job_id)s
"""
# Back to `pending` after a requeue from the DLQ, only if no worker has started the requeued
# job yet (it may have, between the Redis move and this update): never clobber a newer state.
SQL_REQUEUED = """
UPDATE marketplace_job_executions e
SET status = 'pending', progress = 0, max_attempts = %(attempts)s + %(fresh_attempts)s,
    error_message = NULL, error_type = NULL, completed_at = NULL, next_retry_at = NULL,
    cancelled_at = NULL, cancel_reason = NULL, updated_at = NOW()
WHERE e.job_id = %(job_id)s AND e.status = 'failed'
  AND (SELECT COALESCE(MAX(a.attempt), 0) FROM marketplace_job_attempts a
       WHERE a.job_id = e.job_id) = %(attempts)s
RETURNING *
"""

# A job sent back from the DLQ by RQ's own tools, seen as its attempt opens: a fresh budget
# from this attempt on, as `phase1 dlq requeue` gives.
SQL_RESTART_BUDGET = """
UPDATE marketplace_job_executions SET max_attempts = attempt_number + %(retries)s
WHERE job_id = %(job_id)s AND status = 'active'
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


def set_progress(conn: Conn, job_id: str, progress: int) -> None:
    conn.execute(SQL_PROGRESS, {"job_id": job_id, "progress": progress})


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


def is_current(conn: Conn, job_id: str, attempt: int) -> bool:
    """Whether `attempt` of the job is still open (no one closed it or started the next)."""
    row = conn.execute(SQL_ATTEMPT, {"job_id": job_id, "n": attempt}).fetchone()
    return row is not None and row["status"] == "active"


def supersede(conn: Conn, job_id: str, attempt: int, note: str) -> bool:
    """Mark `attempt` superseded (its worker came back after another took over), with `note`
    added to its error message; False when it was not open or failed (completed, say)."""
    row = conn.execute(
        SQL_SUPERSEDE, {"job_id": job_id, "attempt": attempt, "note": note[:2000]}
    ).fetchone()
    return row is not None


@dataclass(frozen=True)
class FailedAttempt:
    """What recording one failed attempt did."""

    attempt: int | None  # None: another process had already recorded this attempt's failure
    status: str  # the job's status now: `retrying`, `failed` (or `completed`: left alone)
    history: list[Row]
    superseded: bool = False  # the attempt was no longer the current one: nothing changed


def record_failed_attempt(
    conn: Conn,
    job_id: str,
    *,
    worker: str | None,
    final: bool,
    error_type: str,
    error_message: str,
    next_retry_at: datetime | None,
    only_if_active: bool = False,
    attempt: int | None = None,
) -> FailedAttempt | None:
    """Close the running attempt as failed (or add a failed one if it never opened its row)
    and make the job `retrying` or, when final, `failed`. None when the job is unknown; status
    `completed` (and nothing changed) when it had already completed.

    `only_if_active` is for paths that can race for one dead attempt (the orphan sweep and
    RQ's abandoned-job cleanup): when no attempt is open, the other one got there first.
    `attempt` is the attempt the caller ran, when it knows: if that one is no longer open (the
    orphan sweep gave it up, another worker took over), it is marked `superseded` and
    nothing else changes.
    """
    row = get(conn, job_id, lock=True)
    if row is None:
        return None
    if row["status"] == "completed":
        return FailedAttempt(attempt=None, status="completed", history=[])
    if attempt is not None and not is_current(conn, job_id, attempt):
        supersede(conn, job_id, attempt, f"{worker or 'its worker'} came back: {error_message}")
        return FailedAttempt(attempt=None, status=row["status"], history=[], superseded=True)
    latest = conn.execute(SQL_LATEST_ATTEMPT, {"job_id": job_id}).fetchone()
    if latest is not None and latest["status"] == "active":
        attempt = int(latest["attempt"])
        end_attempt(conn, job_id, attempt, "failed", error_type, error_message)
    elif only_if_active:
        attempt = None
    else:
        added = conn.execute(
            SQL_INSERT_FAILED_ATTEMPT,
            {
                "job_id": job_id,
                "worker": worker,
                "error_type": error_type,
                "error_message": error_message,
            },
        ).fetchone()
        assert added is not None
        attempt = int(added["attempt"])
        conn.execute(SQL_SET_ATTEMPT_NUMBER, {"job_id": job_id, "attempt": attempt})
    if attempt is None and not final:
        return FailedAttempt(attempt=None, status=row["status"], history=[])
    status = "failed" if final else "retrying"
    conn.execute(
        SQL_FAIL,
        {
            "job_id": job_id,
            "status": status,
            "final": final,
            "error_type": error_type,
            "error_message": error_message,
            "next_retry_at": None if final else next_retry_at,
        },
    )
    return FailedAttempt(
        attempt=attempt, status=status, history=attempts(conn, job_id) if final else []
    )


def attempt_count(conn: Conn, job_id: str) -> int:
    """How many attempts the history holds (the number of the latest)."""
    latest = conn.execute(SQL_LATEST_ATTEMPT, {"job_id": job_id}).fetchone()
    return 0 if latest is None else int(latest["attempt"])


def requeued(conn: Conn, job_id: str, *, attempts: int, fresh_attempts: int) -> Row | None:
    """Set a failed job back to `pending` with a fresh budget after `attempts` so far; the
    history stays and numbering continues. None when a worker already moved it on."""
    return conn.execute(
        SQL_REQUEUED,
        {"job_id": job_id, "attempts": attempts, "fresh_attempts": fresh_attempts},
    ).fetchone()


def interrupt_attempt(conn: Conn, job_id: str, message: str) -> int | None:
    """Record the running attempt as `interrupted` and the job as `pending` again; returns the
    attempt number, or None when the job was not active (completed meanwhile, say)."""
    row = conn.execute(SQL_INTERRUPT, {"job_id": job_id, "message": message}).fetchone()
    return None if row is None else int(row["attempt"])


SQL_CANCELLED = """
UPDATE marketplace_job_executions
SET cancelled_at = NOW(), cancel_reason = %(reason)s, progress = 0, updated_at = NOW()
WHERE job_id = %(job_id)s
RETURNING *
"""


def mark_cancelled(conn: Conn, job_id: str, reason: str | None) -> Row | None:
    """Mark the (already failed) job as cancelled by an operator: a worker that takes it
    later opens no attempt for it (phase1_tasks.open_attempt), and the DLQ requeue clears it."""
    return conn.execute(SQL_CANCELLED, {"job_id": job_id, "reason": reason}).fetchone()


SQL_BLOCKED_BY = """
UPDATE marketplace_job_attempts SET blocked_by = %(blocked)s
WHERE job_id = %(job_id)s AND attempt = %(attempt)s
"""


def set_blocked_by(conn: Conn, job_id: str, attempt: int, blockers: list[dict[str, Any]]) -> None:
    """Keep on the attempt what was blocking it in PostgreSQL when it timed out."""
    from psycopg.types.json import Jsonb

    conn.execute(SQL_BLOCKED_BY, {"job_id": job_id, "attempt": attempt, "blocked": Jsonb(blockers)})


def restart_budget(conn: Conn, job_id: str, retries: int) -> None:
    """Give the running attempt of `job_id` `retries` retries after it (a requeue)."""
    conn.execute(SQL_RESTART_BUDGET, {"job_id": job_id, "retries": retries})
