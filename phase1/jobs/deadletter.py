"""The dead-letter queue: every exhausted job, with its story, until an operator acts.

One JSON string per job (`phase1:<queue>:dlq:<job id>`) and a sorted set of job ids scored by
the time they failed. Entries do not expire unless PHASE1_DLQ_RETENTION says so. RQ's own
FailedJobRegistry holds the same jobs, so `rq info` and rq-dashboard show them too.

PostgreSQL, the system of record, holds every entry too (`phase1.domain.dead_letters`): what
Redis lost is read from there (`find`, `entries`), requeued from there, and written back to
Redis by the reconciler (`rebuild`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq.job import Job, JobStatus

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import audit, dead_letters
from phase1.errors import NotFoundError, Phase1Error, UnavailableError
from phase1.jobs import events
from phase1.jobs import queue as jobs
from phase1.settings import redact_url
from phase1.telemetry import tracing

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn, Row

log = logging.getLogger(__name__)

# A job in one of these states is on its way already: requeueing must not push it twice.
_LIVE_RAW = {
    s.value.encode()
    for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
}


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        aware: datetime = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return aware.isoformat().replace("+00:00", "Z")
    return str(moment)


def attempts_view(history: Iterable[Row]) -> list[dict[str, Any]]:
    """Attempt-history rows as they go into an entry: number, status, worker, times, error."""
    return [
        {
            "attempt": a["attempt"],
            "status": a["status"],
            "worker": a["worker"],
            "startedAt": _iso(a["started_at"]),
            "endedAt": _iso(a["ended_at"]),
            "errorType": a["error_type"],
            "error": a["error_message"],
            # What blocked an attempt that timed out in PostgreSQL (phase1.jobs.lockwatch).
            **({"blockedBy": a["blocked_by"]} if a.get("blocked_by") else {}),
        }
        for a in history
    ]


def make_entry(
    *,
    job_id: str,
    plan_id: str | None,
    queue: str,
    reason: str,
    error_type: str,
    message: str,
    traceback_text: str | None,
    payload: Any,
    history: Iterable[Row],
) -> dict[str, Any]:
    """A DLQ entry: the job, why it failed last, and every attempt's start, end and error."""
    return {
        "jobId": job_id,
        "planId": plan_id,
        "queue": queue,
        "reason": reason,
        "errorType": error_type,
        "message": message,
        "traceback": traceback_text,
        "payload": payload,
        "attempts": attempts_view(history),
    }


def add(redis: Redis, queue: str, entry: dict[str, Any], *, retention: int = 0) -> bool:
    """Store `entry` (it must hold `jobId`) unless that job is in the DLQ already.

    The entry and its index member are written together (MULTI/EXEC), so a crash never
    leaves one without the other. Returns False when it was there: a job is never
    dead-lettered twice.
    """
    job_id = entry["jobId"]
    entry_key = keys.dlq_entry(queue, job_id)
    index = keys.dlq_index(queue)
    failed_at = _moment(entry.get("failedAt")) or datetime.now(UTC)
    entry = {**entry, "failedAt": failed_at.isoformat().replace("+00:00", "Z")}
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(entry_key)  # type: ignore[no-untyped-call]
                if pipe.exists(entry_key):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(entry_key, json.dumps(entry, default=str), ex=retention or None)
                pipe.zadd(index, {job_id: failed_at.timestamp()})
                if retention:
                    pipe.zremrangebyscore(index, "-inf", failed_at.timestamp() - retention)
                pipe.execute()
                return True
            except WatchError:
                continue


def _moment(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def stamp(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with its `failedAt` (now, unless it has one): the same in Redis and PostgreSQL."""
    if entry.get("failedAt"):
        return entry
    return {**entry, "failedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


def remember(ctx: Phase1, entry: dict[str, Any]) -> bool:
    """Write `entry` to PostgreSQL's record of the DLQ; False (logged) when it is down: the
    Redis entry stands, and the reconciler's settling of the row writes it later."""
    try:
        with ctx.transaction() as conn:
            dead_letters.record(conn, entry)
    except UnavailableError as exc:
        log.error("job %s: could not record its DLQ entry in PostgreSQL: %s", entry["jobId"], exc)
        return False
    return True


def find(ctx: Phase1, job_id: str) -> dict[str, Any] | None:
    """The DLQ entry of `job_id`: Redis's, else PostgreSQL's record of it, else one made from
    an execution row that says `failed` (a job dead-lettered before the record existed)."""
    entry = get(ctx.redis, ctx.settings.queue, job_id)
    if entry is not None:
        return entry
    if _live(ctx, [job_id]):  # back on the queue (a requeue PostgreSQL has not heard of yet)
        return None
    settings = ctx.settings
    with ctx.transaction() as conn:
        kept = dead_letters.open_entries(
            conn, settings.queue, retention=settings.dlq_retention, job_id=job_id, limit=1
        )
        if kept:
            return kept[0]
        row = audit.get(conn, job_id)
        if row is None or row["status"] != "failed" or row["queue"] != settings.queue:
            return None
        history = audit.attempts(conn, job_id)
    return stamp(
        make_entry(
            job_id=job_id,
            plan_id=str(row["plan_id"]),
            queue=settings.queue,
            reason="exception",
            error_type=str(row["error_type"] or "Error"),
            message=str(row["error_message"] or "the job failed"),
            traceback_text=None,
            payload={"planId": str(row["plan_id"])},
            history=history,
        )
        | {"failedAt": _iso(row["completed_at"] or row["updated_at"])}
    )


def entries(ctx: Phase1, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """The DLQ's entries, newest first, and how many there are: Redis's, with those only
    PostgreSQL still holds (Redis lost them)."""
    settings = ctx.settings
    in_redis = list_entries(ctx.redis, settings.queue, limit)
    lost = lost_entries(ctx, limit)
    merged = sorted(in_redis + lost, key=lambda e: str(e.get("failedAt") or ""), reverse=True)
    return merged[:limit], size(ctx.redis, settings.queue) + len(lost)


def all_job_ids(ctx: Phase1) -> list[str]:
    """Every dead-lettered job id, newest first: Redis's, then those only PostgreSQL holds."""
    return job_ids(ctx.redis, ctx.settings.queue) + [e["jobId"] for e in lost_entries(ctx)]


def lost_entries(
    ctx: Phase1, limit: int = 100_000, *, conn: Conn | None = None
) -> list[dict[str, Any]]:
    """The entries PostgreSQL holds as dead-lettered and Redis lost, newest first (read on
    `conn` when the caller is in a transaction: no second pooled connection)."""
    settings = ctx.settings
    with contextlib.nullcontext(conn) if conn is not None else ctx.transaction() as used:
        kept = dead_letters.open_entries(
            used, settings.queue, retention=settings.dlq_retention, limit=limit
        )
    known = set(job_ids(ctx.redis, settings.queue))
    lost = [e for e in kept if e["jobId"] not in known]
    live = _live(ctx, [e["jobId"] for e in lost])
    return [e for e in lost if e["jobId"] not in live]


def rebuild(ctx: Phase1, conn: Conn | None = None) -> list[str]:
    """Write back to Redis the entries PostgreSQL holds and Redis lost; their job ids."""
    settings = ctx.settings
    restored = []
    for entry in lost_entries(ctx, conn=conn):
        if add(ctx.redis, settings.queue, entry, retention=settings.dlq_retention):
            restored.append(entry["jobId"])
    return restored


def _live(ctx: Phase1, ids: list[str]) -> set[str]:
    """Those of `ids` whose RQ job is on its way again (queued, started, scheduled): out of
    the DLQ, whatever PostgreSQL's record says until the worker that runs it catches up."""
    if not ids:
        return set()
    with ctx.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        answers = pipe.execute()
    return {i for i, status in zip(ids, answers, strict=True) if status in _LIVE_RAW}


def get(redis: Redis, queue: str, job_id: str) -> dict[str, Any] | None:
    raw = redis.get(keys.dlq_entry(queue, job_id))
    return None if raw is None else dict(json.loads(raw))


def job_ids(redis: Redis, queue: str) -> list[str]:
    """Every dead-lettered job id, newest first."""
    members: Any = redis.zrevrange(keys.dlq_index(queue), 0, -1)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in members]


def list_entries(redis: Redis, queue: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Newest first. Index members whose entry has expired (a retention) are pruned."""
    members: Any = redis.zrevrange(keys.dlq_index(queue), 0, limit - 1)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in members]
    if not ids:
        return []
    raws = redis.mget([keys.dlq_entry(queue, i) for i in ids])
    expired = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
    if expired:
        redis.zrem(keys.dlq_index(queue), *expired)
    return [json.loads(raw) for raw in raws if raw is not None]


def size(redis: Redis, queue: str) -> int:
    return int(redis.zcard(keys.dlq_index(queue)))


@dataclass(frozen=True)
class Requeued:
    """One job sent back from the DLQ (or, with a dry run, that would be)."""

    job_id: str
    plan_id: str
    attempts_so_far: int
    fresh_attempts: int
    audit_updated: bool  # False: a worker had started it before PostgreSQL was told


def move_to_queue(ctx: Phase1, job_id: str, plan_id: UUID) -> None:
    """The Redis half of a requeue, in one MULTI/EXEC watched on the entry and the job.

    Removes the entry and its index member, drops RQ's failed job and puts a fresh one with
    the same id on the queue (status queued, a full retry budget, the current timeout and
    callbacks) — all at once or not at all. A job that is live again already (queued,
    started, scheduled) is not pushed twice; its entry just goes.
    """
    queue = ctx.queue()
    name = ctx.settings.queue
    entry_key = keys.dlq_entry(name, job_id)
    job_key = Job.key_for(job_id)
    try:
        with ctx.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(entry_key, job_key)  # type: ignore[no-untyped-call]
                    if not pipe.exists(entry_key):
                        pipe.unwatch()
                        raise NotFoundError(f"job {job_id} is not in the dead-letter queue")
                    status = pipe.hget(job_key, "status")
                    pipe.multi()
                    pipe.delete(entry_key)
                    pipe.zrem(keys.dlq_index(name), job_id)
                    pipe.zrem(keys.heartbeats(name), job_id)
                    if status not in _LIVE_RAW:
                        # A fresh job rather than a patched one: no stale field survives.
                        pipe.delete(job_key)
                        pipe.zrem(queue.failed_job_registry.key, job_id)
                        pipe.zrem(queue.scheduled_job_registry.key, job_id)
                        jobs.enqueue(ctx, job_id, plan_id, pipeline=pipe)
                    pipe.execute()
                    return
                except WatchError:
                    continue  # a worker or another requeue touched it: look again
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc}; "
            f"job {job_id} stays in the dead-letter queue"
        ) from exc


def requeue(ctx: Phase1, job_id: str, *, dry_run: bool = False) -> Requeued:
    """Send one job from the DLQ back to its queue with a fresh retry budget.

    Redis first, atomically (the entry leaves only as the job goes back on the queue), then
    PostgreSQL (`failed` → `pending`, history kept, attempt numbers continuing). A crash in
    between leaves a queued job whose row still says `failed`: nothing is lost, nothing
    runs twice, and the worker that runs it sets the row `active` and then `completed`.
    Raises NotFoundError when the job is not in the DLQ.
    """
    settings = ctx.settings
    entry = find(ctx, job_id)
    if entry is None:
        raise NotFoundError(f"job {job_id} is not in the dead-letter queue")
    with ctx.transaction() as conn:
        row = audit.get(conn, job_id)
        attempts = audit.attempt_count(conn, job_id)
    plan = row["plan_id"] if row is not None else entry.get("planId")
    if plan is None:
        raise Phase1Error(f"job {job_id} has no plan id in PostgreSQL or its DLQ entry")
    plan_id = plan if isinstance(plan, UUID) else UUID(str(plan))
    outcome = Requeued(
        job_id=job_id,
        plan_id=str(plan_id),
        attempts_so_far=attempts,
        fresh_attempts=settings.max_attempts,
        audit_updated=False,
    )
    if dry_run:
        return outcome
    # Redis lost the entry: PostgreSQL's goes back first, so the move stays all or nothing.
    try:
        add(ctx.redis, settings.queue, entry, retention=settings.dlq_retention)
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc}; "
            f"job {job_id} stays in the dead-letter queue"
        ) from exc
    # Issue 24: the requeue is a span (the root of a new trace from the CLI) linked to the
    # trace that dead-lettered the job; the requeued job's attempts continue the new one.
    with tracing.span(
        f"requeue {settings.queue}",
        kind="producer",
        attributes={
            "messaging.system": "rq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "requeue",
            "messaging.destination.name": settings.queue,
            "messaging.message.id": job_id,
            "phase1.plan_id": str(plan_id),
        },
        link=tracing.carrier_of(entry),
    ):
        move_to_queue(ctx, job_id, plan_id)
    updated = None
    try:
        with ctx.transaction() as conn:
            dead_letters.mark_requeued(conn, job_id)
            updated = audit.requeued(
                conn, job_id, attempts=attempts, fresh_attempts=settings.max_attempts
            )
    except UnavailableError as exc:
        # The job is back on the queue all the same; the worker that runs it updates the row.
        log.warning("job %s requeued, but its row still says failed: %s", job_id, exc)
    event = events.make(
        events.REQUEUED,
        job_id,
        str(plan_id),
        attempts or None,
        {"queue": settings.queue, "freshAttempts": settings.max_attempts},
    )
    events.emit(ctx.redis, settings, event)
    return replace(outcome, audit_updated=updated is not None)
