"""The reconciler: re-enqueue each job PostgreSQL holds as live but Redis no longer knows, and
record the end of each one RQ ended without phase1 recording it.

PostgreSQL is the system of record and Redis the transport. When Redis restarts without
persistence, is flushed, or an approval's process dies between its commit and its enqueue, the
execution row says `pending`, `active` or `retrying` while Redis has no `rq:job:<id>` hash; the
reconciler enqueues such a job again under the same id.

The other way round, RQ can end a job that phase1 never hears of: a plain `rq worker`'s
maintenance fails a job a dead worker took and never started, and RQ's tools stop or cancel
jobs, all without phase1's failure handling; and a final failure that phase1 dead-lettered
while PostgreSQL was down left its row live. The row would say `pending` or `active` for good;
the reconciler records the failure (the dead-letter entry and the `job:failed` event too, when
phase1 had not sent them).

PostgreSQL holds the dead-letter queue's entries too; the reconciler writes back to Redis those
Redis lost, so `rq info`, `phase1 info` and the DLQ's index agree again.

Safe with many reconcilers at once: a transaction-scoped PostgreSQL advisory lock lets one run
per queue at a time, and `phase1.jobs.queue.enqueue` uses RQ's atomic unique enqueue, so even a
reconciler racing an approval's own enqueue cannot queue a job twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import audit, dead_letters
from phase1.errors import UnavailableError
from phase1.jobs import deadletter, events, failure
from phase1.jobs import queue as jobs
from phase1.settings import redact_url

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn

log = logging.getLogger(__name__)

BATCH = 500

# RQ's statuses of a job that has ended, and not as `finished` (a job that completed commits
# its row before RQ hears of it).
ENDED_IN_RQ = frozenset({"failed", "stopped", "canceled"})
LIVE = ("pending", "active", "retrying")

SQL_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext(%(key)s)) AS locked"
# Live rows old enough that their approval has had time to enqueue them: `pending` and
# `retrying` ones after the grace (a retry once its time has come), `active` ones only once the
# attempt must have ended (a running job updates its row).
SQL_CANDIDATES = """
SELECT job_id, plan_id, status FROM marketplace_job_executions
WHERE queue = %(queue)s AND status IN ('pending', 'active', 'retrying') AND job_id > %(after)s
  AND updated_at < NOW() - make_interval(secs => %(grace)s)
  AND (status <> 'active' OR updated_at < NOW() - make_interval(secs => %(active_grace)s))
  AND (status <> 'retrying' OR next_retry_at IS NULL
       OR next_retry_at < NOW() - make_interval(secs => %(grace)s))
ORDER BY job_id
LIMIT %(limit)s
"""

# An `active` or `retrying` job whose Redis entry is gone waits on the queue again: `pending`.
SQL_BACK_TO_PENDING = """
UPDATE marketplace_job_executions
SET status = 'pending', progress = 0, next_retry_at = NULL, updated_at = NOW()
WHERE job_id = %(job_id)s AND status = %(status)s
"""


@dataclass
class Reconciliation:
    """What one reconciler pass saw and did."""

    queue: str
    checked: int = 0
    requeued: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # DLQ entries written back to Redis
    locked_out: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "checked": self.checked,
            "requeued": len(self.requeued),
            "jobIds": self.requeued,
            "settled": len(self.settled),
            "settledJobIds": self.settled,
            "restored": len(self.restored),
            "restoredJobIds": self.restored,
            "lockedOut": self.locked_out,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[Reconciliation], None]


def lock_key(queue: str) -> str:
    return f"phase1:reconcile:{queue}"


def reconcile(
    ctx: Phase1,
    *,
    grace: float | None = None,
    wait: float = 0.0,
    progress: Progress | None = None,
) -> Reconciliation:
    """One pass over the queue's live executions; re-enqueues those Redis lost.

    `grace` (default PHASE1_RECONCILE_GRACE) leaves younger rows alone. When another reconciler
    holds the lock, tries again for up to `wait` seconds, then returns with `locked_out` set.
    Raises UnavailableError when Redis or PostgreSQL cannot be reached.
    """
    settings = ctx.settings
    grace = settings.reconcile_grace if grace is None else grace
    params: dict[str, Any] = {
        "queue": settings.queue,
        "grace": grace,
        "active_grace": max(grace, settings.job_timeout + grace),
        "limit": BATCH,
        "after": "",
    }
    outcome = Reconciliation(queue=settings.queue)
    started = time.monotonic()
    deadline = started + wait
    with ctx.transaction() as conn:
        while not _try_lock(conn, settings.queue):
            if time.monotonic() >= deadline:
                outcome.locked_out = True
                outcome.seconds = time.monotonic() - started
                return outcome
            time.sleep(0.25)
        while True:
            rows = conn.execute(SQL_CANDIDATES, params).fetchall()
            if not rows:
                break
            params["after"] = rows[-1]["job_id"]
            outcome.checked += len(rows)
            for row, rq_status in _in_redis(ctx, rows):
                if rq_status is None:
                    _requeue(ctx, row)
                    outcome.requeued.append(row["job_id"])
                elif rq_status in ENDED_IN_RQ and _settle(ctx, row["job_id"], rq_status):
                    outcome.settled.append(row["job_id"])
            if progress is not None:
                progress(outcome)
            if len(rows) < BATCH:
                break
        outcome.restored = _rebuild_dlq(ctx, conn)
    outcome.seconds = time.monotonic() - started
    if outcome.requeued:
        log.warning(
            "reconciler: re-enqueued %d job(s) on %s that PostgreSQL holds and Redis lost",
            len(outcome.requeued),
            settings.queue,
        )
    if outcome.restored:
        log.warning(
            "reconciler: wrote back %d dead-letter entr(ies) on %s that Redis lost",
            len(outcome.restored),
            settings.queue,
        )
    if outcome.settled:
        log.warning(
            "reconciler: recorded the failure of %d job(s) on %s that RQ had ended without "
            "phase1 recording it",
            len(outcome.settled),
            settings.queue,
        )
    return outcome


def _try_lock(conn: Conn, queue: str) -> bool:
    row = conn.execute(SQL_TRY_LOCK, {"key": lock_key(queue)}).fetchone()
    return bool(row and row["locked"])


def _in_redis(ctx: Phase1, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """Each row with its job's RQ status ('' when it has none), None when Redis lost the job."""
    try:
        with ctx.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(keys.rq_job(row["job_id"]))
                pipe.hget(keys.rq_job(row["job_id"]), "status")
            answers = pipe.execute()
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc
    return [
        (row, (answers[2 * i + 1] or b"").decode() if answers[2 * i] else None)
        for i, row in enumerate(rows)
    ]


def _rebuild_dlq(ctx: Phase1, conn: Conn) -> list[str]:
    try:
        return deadletter.rebuild(ctx, conn)
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc


def _settle(ctx: Phase1, job_id: str, rq_status: str) -> bool:
    """Record the failure of a live row's job that RQ has ended; whether it was recorded."""
    entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    if entry is not None:  # dead-lettered and announced while PostgreSQL was down
        with ctx.transaction() as conn:
            row = audit.get(conn, job_id, lock=True)
            if row is None or row["status"] not in LIVE:
                return False  # recorded meanwhile
            failed = audit.record_failed_attempt(
                conn,
                job_id,
                worker=None,
                final=True,
                error_type=str(entry.get("errorType") or "Error"),
                error_message=str(entry.get("message") or ""),
                next_retry_at=None,
            )
            dead_letters.record(conn, entry)  # PostgreSQL was down when Redis got it
        return failed is not None and failed.status == "failed"
    try:
        job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    except NoSuchJobError:  # gone since: the next pass enqueues it again
        return False
    latest = job.latest_result()
    said = f": {latest.exc_string.strip()}" if latest is not None and latest.exc_string else ""
    recorded = failure.record_failure(
        job,
        ctx.redis,
        reason="abandoned",
        error_type="EndedOutsidePhase1",
        message=f"RQ ended the job as {rq_status} without phase1's failure handling{said}",
        traceback_text=None,
        final=True,
        next_retry_at=None,
        ctx=ctx,
    )
    return recorded == "recorded"


def _requeue(ctx: Phase1, row: dict[str, Any]) -> None:
    job_id, plan_id = row["job_id"], row["plan_id"]
    if row["status"] != "pending":
        # Committed before the enqueue, so no worker can have started the job yet.
        with ctx.transaction() as conn:
            conn.execute(SQL_BACK_TO_PENDING, {"job_id": job_id, "status": row["status"]})
    jobs.enqueue(ctx, job_id, plan_id)  # unique: a job that reappeared meanwhile is left alone
    events.emit(
        ctx.redis,
        ctx.settings,
        events.make(
            events.ENQUEUED,
            job_id,
            str(plan_id),
            None,
            {"queue": ctx.settings.queue, "reason": "reconciled", "was": row["status"]},
        ),
    )


def run_periodically(ctx: Phase1) -> Reconciliation | None:
    """The worker's maintenance task: one pass, skipped while another worker reconciles."""
    outcome = reconcile(ctx)
    if outcome.locked_out:
        log.debug("reconciler: another process is reconciling %s", ctx.settings.queue)
        return None
    return outcome
