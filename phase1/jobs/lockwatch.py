"""What a slow attempt is waiting for in PostgreSQL, kept so that a timeout can say who held
the lock (issue 21): the blocking backends' pid, application name, state, transaction age
and query, from `pg_blocking_pids` and `pg_stat_activity`.

By the time an attempt fails with the job timeout, `lock_timeout` or `statement_timeout`, its
wait is over and nothing blocks it any more; so while a job runs longer than a fraction of
its lock timeout, the process timer samples its backend's blockers (on another pooled
connection) every such fraction, and the failure path takes the last sample. A quick job
costs nothing: no sample is ever taken for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from phase1.context import Phase1
from phase1.engine.timer import timer
from phase1.errors import Phase1Error

log = logging.getLogger(__name__)

QUERY_CHARS = 300
SQL_BLOCKERS = f"""
SELECT a.pid, a.application_name AS "applicationName", a.state,
       round(EXTRACT(EPOCH FROM (clock_timestamp() - a.xact_start))::numeric, 1)::float
         AS "transactionAgeSeconds",
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), {QUERY_CHARS}) AS query
FROM unnest(pg_blocking_pids(%(pid)s)) AS b(pid)
JOIN pg_stat_activity a ON a.pid = b.pid
ORDER BY a.xact_start
"""

# The job's backend in this process (job id, pid), and the last blockers seen per job.
_backend: tuple[str, int] | None = None
_seen: dict[str, list[dict[str, Any]]] = {}


def note_backend(job_id: str, conn: Any) -> None:
    """The job now works on `conn` (its pid is known locally: no round trip)."""
    global _backend
    pid = getattr(getattr(conn, "info", None), "backend_pid", None)
    _backend = (job_id, int(pid)) if pid else None


def sample(ctx: Phase1, job_id: str) -> None:
    """Who blocks the job's backend now; kept when someone does."""
    backend = _backend
    if backend is None or backend[0] != job_id:
        return
    try:
        with ctx.read() as conn:
            rows = conn.execute(SQL_BLOCKERS, {"pid": backend[1]}).fetchall()
    except Phase1Error as exc:
        log.debug("job %s: could not read its blockers: %s", job_id, exc)
        return
    if rows:
        _seen[job_id] = [dict(r) for r in rows]


@contextlib.contextmanager
def watching(ctx: Phase1, job_id: str) -> Iterator[None]:
    """Sample the job's blockers every third of its lock timeout while the block runs."""
    global _backend
    every = max(0.2, ctx.settings.db_lock_timeout_ms / 3000)
    _seen.pop(job_id, None)
    call = timer.call_every(every, lambda: sample(ctx, job_id))
    try:
        yield
    finally:
        call.cancel()
        _backend = None


def blocked_by(job_id: str) -> list[dict[str, Any]] | None:
    """The blockers last seen for the job (and forgotten now), None when none was seen."""
    return _seen.pop(job_id, None)
