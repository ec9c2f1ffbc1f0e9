"""The console's reads of PostgreSQL: job and plan lists with filters, and the last hour's
outcomes minute by minute. Named statements, read-only, each one round trip."""

from __future__ import annotations

import threading
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

# The page is cut from the executions alone, then joined with its plans: an offset skips
# rows without looking their plans up.
SQL_JOBS = """
SELECT e.job_id, e.plan_id, e.status, e.attempt_number, e.max_attempts, e.progress,
       e.created_at, e.completed_at, e.error_type, e.error_message, p.title
FROM (
  SELECT * FROM marketplace_job_executions
  WHERE queue = %(queue)s
    AND (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(plan_id)s::uuid IS NULL OR plan_id = %(plan_id)s)
    AND (%(title)s::text IS NULL
         OR plan_id IN (SELECT id FROM marketplace_plans WHERE title ILIKE %(title)s))
    AND (%(since)s::timestamp IS NULL OR created_at >= %(since)s)
  ORDER BY created_at DESC, job_id
  LIMIT %(limit)s OFFSET %(offset)s
) e JOIN marketplace_plans p ON p.id = e.plan_id
ORDER BY e.created_at DESC, e.job_id
"""

SQL_PLANS = """
SELECT p.id, p.title, p.status, p.created_at, e.job_id, e.status AS job_status,
       (SELECT COUNT(*) FROM marketplace_tasks t WHERE t.plan_id = p.id) AS tasks
FROM (
  SELECT * FROM marketplace_plans
  WHERE (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(title)s::text IS NULL OR title ILIKE %(title)s)
  ORDER BY created_at DESC, id
  LIMIT %(limit)s OFFSET %(offset)s
) p LEFT JOIN marketplace_job_executions e ON e.plan_id = p.id
ORDER BY p.created_at DESC, p.id
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
    """One page of a list: its rows, its offset, and whether another page follows (one row
    more is read to know; counting every match would read them all)."""

    rows: list[Row]
    offset: int
    has_next: bool


def _page(rows: list[Row], offset: int) -> Page:
    return Page(rows=rows[:PAGE_SIZE], offset=offset, has_next=len(rows) > PAGE_SIZE)


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
            "limit": PAGE_SIZE + 1,
            "offset": offset,
        },
    ).fetchall()
    return _page(rows, offset)


def plans(conn: Conn, *, status: str | None, title: str | None, offset: int) -> Page:
    """Plans, newest first, with their job and how many tasks they have."""
    rows = conn.execute(
        SQL_PLANS,
        {
            "status": status,
            "title": _title_pattern(title),
            "limit": PAGE_SIZE + 1,
            "offset": offset,
        },
    ).fetchall()
    return _page(rows, offset)


@dataclass(frozen=True)
class Minute:
    """What happened in one minute: jobs completed and failed, attempts retried, latency."""

    at: datetime
    completed: int
    failed: int
    retried: int
    p50: float | None
    p95: float | None


def per_minute(conn: Conn, queue: str, since: datetime) -> dict[datetime, Minute]:
    """Each minute from `since` (naive UTC, as the tables are) that had something in it."""
    rows = conn.execute(SQL_PER_MINUTE, {"queue": queue, "since": since}).fetchall()
    return {
        row["minute"]: Minute(
            at=row["minute"],
            completed=int(row["completed"]),
            failed=int(row["failed"]),
            retried=int(row["retried"]),
            p50=_float(row["p50"]),
            p95=_float(row["p95"]),
        )
        for row in rows
    }


class LastHour:
    """The last hour minute by minute, for the overview's charts. A minute more than two
    minutes old no longer changes (what ends is written within seconds), so it is read once;
    each call reads only the last two minutes and any not read yet."""

    SETTLED = timedelta(minutes=2)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled: dict[datetime, Minute] = {}
        self._read_from: datetime | None = None  # the minutes from here on were read

    def get(self, conn: Conn, queue: str, now: datetime) -> list[Minute]:
        end = now.replace(second=0, microsecond=0)
        start = end - timedelta(minutes=59)
        settled_before = end - self.SETTLED
        with self._lock:
            known = dict(self._settled) if self._read_from is not None else {}
            read_from = self._read_from if self._read_from is not None else start
        since = min(max(read_from, start), settled_before)
        fresh = per_minute(conn, queue, since)
        with self._lock:
            self._settled = {
                at: m for at, m in {**known, **fresh}.items() if start <= at < settled_before
            }
            self._read_from = settled_before
            found = {**self._settled, **fresh}
        return [found.get(start + timedelta(minutes=i)) or _empty(start + timedelta(minutes=i))
                for i in range(60)]  # fmt: skip


def _empty(at: datetime) -> Minute:
    return Minute(at=at, completed=0, failed=0, retried=0, p50=None, p95=None)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def rows_of(conn: Conn, job_ids: list[str]) -> dict[str, Row]:
    """The execution rows (with their plan's title) of these jobs, by job id."""
    if not job_ids:
        return {}
    rows = conn.execute(SQL_ROWS, {"job_ids": job_ids}).fetchall()
    return {row["job_id"]: row for row in rows}
