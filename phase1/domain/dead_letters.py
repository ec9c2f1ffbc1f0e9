"""The dead-letter queue's record in PostgreSQL (`marketplace_dead_letters`).

Redis holds the DLQ entries the tools read first; this table holds the same entries so that a
Redis that lost them (no persistence, a flush) loses no dead-lettered job: `phase1 dlq` reads
them from here and the reconciler writes them back to Redis.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn

# Dead-lettering again (after a requeue) replaces the entry and clears `requeued_at`.
SQL_RECORD = """
INSERT INTO marketplace_dead_letters
  (job_id, plan_id, queue, reason, error_type, error_message, traceback, payload, entry,
   failed_at, requeued_at)
VALUES (%(job_id)s, %(plan_id)s, %(queue)s, %(reason)s, %(error_type)s, %(message)s,
        %(traceback)s, %(payload)s, %(entry)s, %(failed_at)s, NULL)
ON CONFLICT (job_id) DO UPDATE SET
  plan_id = EXCLUDED.plan_id, queue = EXCLUDED.queue, reason = EXCLUDED.reason,
  error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
  traceback = EXCLUDED.traceback, payload = EXCLUDED.payload, entry = EXCLUDED.entry,
  failed_at = EXCLUDED.failed_at, requeued_at = NULL
"""
# Entries still in the DLQ: not requeued, and younger than the retention when there is one.
SQL_OPEN = """
SELECT entry FROM marketplace_dead_letters
WHERE queue = %(queue)s AND requeued_at IS NULL
  AND (%(retention)s = 0 OR failed_at > NOW() - make_interval(secs => %(retention)s))
  AND (%(job_id)s::text IS NULL OR job_id = %(job_id)s)
ORDER BY failed_at DESC
LIMIT %(limit)s
"""
SQL_REQUEUED = """
UPDATE marketplace_dead_letters SET requeued_at = NOW()
WHERE job_id = %(job_id)s AND requeued_at IS NULL
"""


def record(conn: Conn, entry: dict[str, Any]) -> None:
    """Write (or replace) the record of a dead-lettered job; `entry` is the Redis entry."""
    conn.execute(
        SQL_RECORD,
        {
            "job_id": entry["jobId"],
            "plan_id": entry.get("planId"),
            "queue": entry["queue"],
            "reason": entry["reason"],
            "error_type": entry.get("errorType"),
            "message": entry.get("message"),
            "traceback": entry.get("traceback"),
            "payload": _json(entry.get("payload")),
            "entry": _json(entry),
            "failed_at": datetime.fromisoformat(str(entry["failedAt"]).replace("Z", "+00:00")),
        },
    )


def open_entries(
    conn: Conn, queue: str, *, retention: int = 0, job_id: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The entries of the jobs still dead-lettered on `queue`, newest first."""
    rows = conn.execute(
        SQL_OPEN,
        {"queue": queue, "retention": retention, "job_id": job_id, "limit": limit},
    ).fetchall()
    return [dict(row["entry"]) for row in rows]


def mark_requeued(conn: Conn, job_id: str) -> None:
    conn.execute(SQL_REQUEUED, {"job_id": job_id})


def _json(value: Any) -> Any:
    from psycopg.types.json import Jsonb  # psycopg loads with PostgreSQL, not this module

    return Jsonb(json.loads(json.dumps(value, default=str)))
