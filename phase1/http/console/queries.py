"""The console's reads of PostgreSQL: job and plan lists with filters, and the last hour's
outcomes minute by minute. Named statements, read-only, each one round trip."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from phase1.db import Conn, Row

STATES = ("pending", "active", "retrying", "completed", "failed")
PLAN_STATES = ("analyzed", "approved", "rejected")
# The "since" filter's choices: label → seconds (None: all time).
SINCE = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 604_800, "all": None}
PAGE_SIZE = 50

SQL_JOBS = """
SELECT e.job_id, e.plan_id, e.status, e.attempt_number, e.max_attempts, e.progress,
       e.created_at, e.completed_at, e.error_type, e.error_message, p.title,
       COUNT(*) OVER () AS total
FROM marketplace_job_executions e JOIN marketplace_plans p ON p.id = e.plan_id
WHERE e.queue = %(queue)s
  AND (%(status)s::text IS NULL OR e.status = %(status)s)
  AND (%(plan_id)s::uuid IS NULL OR e.plan_id = %(plan_id)s)
  AND (%(title)s::text IS NULL OR p.title ILIKE %(title)s)
  AND (%(since)s::timestamp IS NULL OR e.created_at >= %(since)s)
ORDER BY e.created_at DESC, e.job_id
LIMIT %(limit)s OFFSET %(offset)s
"""

SQL_PLANS = """
SELECT p.id, p.title, p.status, p.created_at, e.job_id, e.status AS job_status,
       (SELECT COUNT(*) FROM marketplace_tasks t WHERE t.plan_id = p.id) AS tasks,
       COUNT(*) OVER () AS total
FROM marketplace_plans p LEFT JOIN marketplace_job_executions e ON e.plan_id = p.id
WHERE (%(status)s::text IS NULL OR p.status = %(status)s)
  AND (%(title)s::text IS NULL OR p.title ILIKE %(title)s)
ORDER BY p.created_at DESC, p.id
LIMIT %(limit)s OFFSET %(offset)s
"""

# Per minute of the last hour: jobs completed, jobs failed for good, attempts that failed and
# were retried, and the approve→completed latency (p50, p95) of the jobs completed in it.
SQL_PER_MINUTE = """
WITH ended AS (
  SELECT date_trunc('minute', completed_at) AS minute, status,
         EXTRACT(EPOCH FROM completed_at - created_at) AS latency
  FROM marketplace_job_executions
  WHERE queue = %(queue)s AND completed_at > %(since)s AND status IN ('completed', 'failed')
), retried AS (
  SELECT date_trunc('minute', a.ended_at) AS minute, COUNT(*) AS n
  FROM marketplace_job_attempts a JOIN marketplace_job_executions e USING (job_id)
  WHERE e.queue = %(queue)s AND a.ended_at > %(since)s AND a.status = 'failed'
    AND NOT (e.status = 'failed' AND e.attempt_number = a.attempt)
  GROUP BY 1
), outcomes AS (
  SELECT minute,
         COUNT(*) FILTER (WHERE status = 'completed') AS completed,
         COUNT(*) FILTER (WHERE status = 'failed') AS failed,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY latency)
           FILTER (WHERE status = 'completed') AS p50,
         percentile_cont(0.95) WITHIN GROUP (ORDER BY latency)
           FILTER (WHERE status = 'completed') AS p95
  FROM ended GROUP BY minute
)
SELECT COALESCE(o.minute, r.minute) AS minute, COALESCE(o.completed, 0) AS completed,
       COALESCE(o.failed, 0) AS failed, COALESCE(r.n, 0) AS retried, o.p50, o.p95
FROM outcomes o FULL JOIN retried r ON r.minute = o.minute
ORDER BY 1
"""

SQL_ROWS = """
SELECT e.job_id, e.plan_id, e.status, e.attempt_number, e.max_attempts, p.title
FROM marketplace_job_executions e JOIN marketplace_plans p ON p.id = e.plan_id
WHERE e.job_id = ANY(%(job_ids)s)
"""


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, how many match in all, and its offset."""

    rows: list[Row]
    total: int
    offset: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.rows) < self.total


def _title_pattern(text: str | None) -> str | None:
    if not text:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def jobs(
    conn: Conn,
    queue: str,
    *,
    status: str | None,
    plan_id: UUID | None,
    title: str | None,
    since: datetime | None,
    offset: int,
) -> Page:
    """The queue's jobs, newest first, filtered by state, plan (id or title) and start time."""
    rows = conn.execute(
        SQL_JOBS,
        {
            "queue": queue,
            "status": status,
            "plan_id": plan_id,
            "title": _title_pattern(title),
            "since": since,
            "limit": PAGE_SIZE,
            "offset": offset,
        },
    ).fetchall()
    return Page(rows=rows, total=int(rows[0]["total"]) if rows else 0, offset=offset)


def plans(conn: Conn, *, status: str | None, title: str | None, offset: int) -> Page:
    """Plans, newest first, with their job and how many tasks they have."""
    rows = conn.execute(
        SQL_PLANS,
        {
            "status": status,
            "title": _title_pattern(title),
            "limit": PAGE_SIZE,
            "offset": offset,
        },
    ).fetchall()
    return Page(rows=rows, total=int(rows[0]["total"]) if rows else 0, offset=offset)


@dataclass(frozen=True)
class Minute:
    """What happened in one minute: jobs completed and failed, attempts retried, latency."""

    at: datetime
    completed: int
    failed: int
    retried: int
    p50: float | None
    p95: float | None


def last_hour(conn: Conn, queue: str, now: datetime) -> list[Minute]:
    """The 60 minutes up to `now` (naive UTC, as the tables are), one entry each, oldest
    first; minutes with nothing in them are zeros."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=59)
    rows = conn.execute(SQL_PER_MINUTE, {"queue": queue, "since": start}).fetchall()
    found = {row["minute"]: row for row in rows}
    minutes = []
    for i in range(60):
        at = start + timedelta(minutes=i)
        row: dict[str, Any] = found.get(at) or {}
        minutes.append(
            Minute(
                at=at,
                completed=int(row.get("completed") or 0),
                failed=int(row.get("failed") or 0),
                retried=int(row.get("retried") or 0),
                p50=_float(row.get("p50")),
                p95=_float(row.get("p95")),
            )
        )
    return minutes


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def rows_of(conn: Conn, job_ids: list[str]) -> dict[str, Row]:
    """The execution rows (with their plan's title) of these jobs, by job id."""
    if not job_ids:
        return {}
    rows = conn.execute(SQL_ROWS, {"job_ids": job_ids}).fetchall()
    return {row["job_id"]: row for row in rows}
