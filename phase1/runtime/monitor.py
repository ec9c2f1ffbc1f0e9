"""A snapshot of the job queue for operators: what `phase1 info` shows (and /metrics may read).

Reads RQ's queue, registries, workers and scheduler lock in Redis, the DLQ, and the last
hour's outcomes from PostgreSQL. Read-only, except that RQ itself drops the registration of a
worker whose key has expired when it is listed (as `rq info` does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.exceptions import ResponseError
from rq import Worker
from rq.executions import Execution
from rq.registry import StartedJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.serializers import JSONSerializer

from phase1 import keys
from phase1.context import Phase1, redis_errors
from phase1.db import Conn
from phase1.jobs import deadletter
from phase1.jobs.pause import read_paused
from phase1.redisconn import primary_address
from phase1.schemas import UtcDatetime
from phase1.settings import redact_url

SQL_LAST_HOUR = """
SELECT
  COUNT(*) FILTER (WHERE status = 'completed') AS completed,
  COUNT(*) FILTER (WHERE status = 'failed') AS failed
FROM marketplace_job_executions
WHERE queue = %(queue)s AND completed_at > NOW() - INTERVAL '1 hour'
"""
SQL_FAILED_ATTEMPTS_LAST_HOUR = """
SELECT COUNT(*) AS failed_attempts
FROM marketplace_job_attempts a JOIN marketplace_job_executions e USING (job_id)
WHERE e.queue = %(queue)s AND a.status = 'failed' AND a.ended_at > NOW() - INTERVAL '1 hour'
"""
SQL_ACTIVE_ROWS = """
SELECT job_id, plan_id, status, attempt_number, max_attempts, progress, started_at
FROM marketplace_job_executions WHERE job_id = ANY(%(job_ids)s)
"""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scheduled(_Model):
    """Retries (and other jobs) waiting in RQ's scheduled registry for their time."""

    count: int
    nextAt: UtcDatetime | None


class ActiveJob(_Model):
    """A job a worker is running now, as RQ's started registry and PostgreSQL know it."""

    jobId: str
    planId: str | None
    attempt: int | None
    maxAttempts: int | None
    progress: int | None
    worker: str | None
    startedAt: UtcDatetime | None
    ageSeconds: float | None


class WorkerInfo(_Model):
    """A worker registered on the queue (RQ drops it once its heartbeat key expires)."""

    name: str
    hostname: str | None
    pid: int | None
    state: str
    queues: list[str]
    jobId: str | None
    birth: UtcDatetime | None
    lastHeartbeat: UtcDatetime | None
    successfulJobs: int
    failedJobs: int


class SchedulerInfo(_Model):
    """Who holds RQ's scheduler lock for the queue (`rq:scheduler-lock:<queue>`), if anyone."""

    running: bool
    name: str | None
    hostname: str | None
    pid: int | None


class DlqOldest(_Model):
    jobId: str
    planId: str | None
    reason: str | None
    failedAt: UtcDatetime | None
    error: str | None


class Dlq(_Model):
    size: int
    oldest: DlqOldest | None


class LastHour(_Model):
    """Jobs that ended in the last hour, and failed attempts (retried or not) in it."""

    completed: int
    failed: int
    failedAttempts: int


class RedisSettings(_Model):
    """The Redis server settings phase1 depends on, from INFO (None when not allowed)."""

    maxmemoryPolicy: str | None
    appendonly: bool | None


class Snapshot(_Model):
    """Everything `phase1 info` shows, at one moment."""

    queue: str
    redis: str
    redisPrimary: str | None = None  # host:port of the server answering (Sentinel: its primary)
    at: UtcDatetime
    queued: int
    paused: bool = False  # `phase1 pause`: phase1 workers take none of its jobs
    pausedQueues: list[str] = []
    scheduled: Scheduled
    active: list[ActiveJob]
    dlq: Dlq
    workers: list[WorkerInfo]
    scheduler: SchedulerInfo
    lastHour: LastHour
    webhooksQueued: int
    redisSettings: RedisSettings
    warnings: list[str]


def snapshot(ctx: Phase1, *, last_hour: bool = True) -> Snapshot:
    """Read the queue's state now; UnavailableError when Redis or PostgreSQL is not there.

    `last_hour=False` leaves the last hour's counts out (zeros): the web console counts them
    from its own per-minute chart, which it reads far less often."""
    settings = ctx.settings
    at = datetime.now(UTC)
    with redis_errors(ctx.redis_url):
        queue = ctx.queue()
        queued = queue.count
        webhooks = ctx.queue(keys.webhook_queue(settings.queue)).count
        scheduled = _scheduled(ctx)
        started = _started(ctx)
        dlq = _dlq(ctx)
        workers = _workers(ctx)
        scheduler = _scheduler(ctx)
        redis_settings = _redis_settings(ctx)
        primary = primary_address(ctx.redis)
        paused_now = sorted(read_paused(ctx.redis))
    with ctx.transaction() as conn:
        hour = (
            _last_hour(conn, settings.queue)
            if last_hour
            else LastHour(completed=0, failed=0, failedAttempts=0)
        )
        rows = _rows(conn, [job_id for job_id, _ in started])
    active = [_active(job_id, execution, rows.get(job_id), at) for job_id, execution in started]
    snap = Snapshot(
        queue=settings.queue,
        redis=redact_url(ctx.redis_url),
        redisPrimary=primary,
        at=at,
        queued=queued,
        paused=settings.queue in paused_now,
        pausedQueues=paused_now,
        scheduled=scheduled,
        active=active,
        dlq=dlq,
        workers=workers,
        scheduler=scheduler,
        lastHour=hour,
        webhooksQueued=webhooks,
        redisSettings=redis_settings,
        warnings=[],
    )
    return snap.model_copy(update={"warnings": warnings(snap)})


def workers(ctx: Phase1) -> tuple[list[WorkerInfo], SchedulerInfo]:
    """The queue's workers and its scheduler alone (Redis only): the console's workers page."""
    with redis_errors(ctx.redis_url):
        return _workers(ctx), _scheduler(ctx)


def warnings(snap: Snapshot) -> list[str]:
    """What an operator should act on, in words."""
    found = []
    if snap.paused:
        found.append(
            f"{snap.queue} is paused: workers take none of its jobs "
            f"(`phase1 resume {snap.queue}` to go on)"
        )
    if not snap.workers and (snap.queued or snap.scheduled.count or snap.active):
        found.append(f"no worker is listening on {snap.queue}: start `phase1 worker`")
    if not snap.scheduler.running and snap.scheduled.count:
        found.append(
            f"{snap.scheduled.count} job(s) wait for a retry but no scheduler runs for "
            f"{snap.queue}: they will not run until a worker with the scheduler starts "
            "(`phase1 worker`, or `rq worker --with-scheduler`)"
        )
    policy = snap.redisSettings.maxmemoryPolicy
    if policy not in (None, "noeviction"):
        found.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure it deletes jobs, "
            "locks and DLQ entries; set it to noeviction"
        )
    if snap.dlq.size:
        found.append(
            f"{snap.dlq.size} job(s) in the dead-letter queue: `phase1 dlq list` to triage"
        )
    return found


def _scheduled(ctx: Phase1) -> Scheduled:
    key = ctx.queue().scheduled_job_registry.key
    first: Any = ctx.redis.zrange(key, 0, 0, withscores=True)
    next_at = datetime.fromtimestamp(float(first[0][1]), UTC) if first else None
    return Scheduled(count=int(ctx.redis.zcard(key)), nextAt=next_at)


def _started(ctx: Phase1) -> list[tuple[str, Execution | None]]:
    """Job ids RQ counts as running, each with its execution (worker, start), when known."""
    registry: StartedJobRegistry = ctx.queue().started_job_registry
    pairs = registry.get_job_and_execution_ids(cleanup=False)
    executions = [Execution(id=eid, job_id=jid, connection=ctx.redis) for jid, eid in pairs]
    with ctx.redis.pipeline(transaction=False) as pipe:
        for execution in executions:
            pipe.hgetall(execution.key)
        hashes = pipe.execute()
    found: list[tuple[str, Execution | None]] = []
    for execution, data in zip(executions, hashes, strict=True):
        if data:
            execution.restore(data)
        found.append((execution.job_id, execution if data else None))
    return found


def _active(
    job_id: str, execution: Execution | None, row: dict[str, Any] | None, at: datetime
) -> ActiveJob:
    started = execution.created_at if execution else None
    if started is None and row and row["started_at"]:
        started = row["started_at"].replace(tzinfo=UTC)
    return ActiveJob(
        jobId=job_id,
        planId=str(row["plan_id"]) if row else None,
        attempt=row["attempt_number"] if row else None,
        maxAttempts=row["max_attempts"] if row else None,
        progress=row["progress"] if row else None,
        worker=(execution.worker_name or None) if execution else None,
        startedAt=started,
        ageSeconds=round((at - started).total_seconds(), 1) if started else None,
    )


def _dlq(ctx: Phase1) -> Dlq:
    queue = ctx.settings.queue
    first: Any = ctx.redis.zrange(keys.dlq_index(queue), 0, 0, withscores=True)
    # Entries Redis lost count too (PostgreSQL holds them; the reconciler writes them back).
    lost = deadletter.lost_entries(ctx)
    if not first and lost:
        entry = lost[-1]  # the oldest
        return Dlq(
            size=len(lost),
            oldest=DlqOldest(
                jobId=entry["jobId"],
                planId=entry.get("planId"),
                reason=entry.get("reason"),
                failedAt=datetime.fromisoformat(str(entry["failedAt"]).replace("Z", "+00:00")),
                error=f"{entry.get('errorType')}: {entry.get('message')}",
            ),
        )
    if not first:
        return Dlq(size=0, oldest=None)
    raw_id, score = first[0]
    job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    entry = deadletter.get(ctx.redis, queue, job_id) or {}
    message = entry.get("message")
    oldest = DlqOldest(
        jobId=job_id,
        planId=entry.get("planId"),
        reason=entry.get("reason"),
        failedAt=datetime.fromtimestamp(float(score), UTC),
        error=f"{entry.get('errorType')}: {message}" if entry.get("errorType") else message,
    )
    return Dlq(size=deadletter.size(ctx.redis, queue) + len(lost), oldest=oldest)


def _workers(ctx: Phase1) -> list[WorkerInfo]:
    found = []
    for worker in Worker.all(queue=ctx.queue(), serializer=JSONSerializer):
        executions = worker.get_current_executions()
        found.append(
            WorkerInfo(
                name=worker.name,
                hostname=worker.hostname,
                pid=worker.pid,
                state=str(worker.get_state()),
                queues=worker.queue_names(),
                jobId=executions[0].job_id if executions else None,
                birth=worker.birth_date,
                lastHeartbeat=worker.last_heartbeat,
                successfulJobs=worker.successful_job_count,
                failedJobs=worker.failed_job_count,
            )
        )
    return sorted(found, key=lambda w: (w.hostname or "", w.name))


def _scheduler(ctx: Phase1) -> SchedulerInfo:
    owner: Any = ctx.redis.get(RQScheduler.get_locking_key(ctx.settings.queue))
    if owner is None:
        return SchedulerInfo(running=False, name=None, hostname=None, pid=None)
    name = owner.decode() if isinstance(owner, bytes) else str(owner)
    data: Any = ctx.redis.hgetall(SCHEDULER_KEY_TEMPLATE % name)
    fields = {k.decode(): v.decode() for k, v in data.items()} if data else {}
    pid = fields.get("pid")
    return SchedulerInfo(
        running=True,
        name=name,
        hostname=fields.get("hostname"),
        pid=int(pid) if pid and pid.isdigit() else None,
    )


def _redis_settings(ctx: Phase1) -> RedisSettings:
    try:
        memory: Any = ctx.redis.info("memory")
        persistence: Any = ctx.redis.info("persistence")
    except ResponseError:  # INFO not allowed for this user (see the README's ACL)
        return RedisSettings(maxmemoryPolicy=None, appendonly=None)
    aof = persistence.get("aof_enabled")
    return RedisSettings(
        maxmemoryPolicy=memory.get("maxmemory_policy"),
        appendonly=None if aof is None else bool(int(aof)),
    )


def _last_hour(conn: Conn, queue: str) -> LastHour:
    ended = conn.execute(SQL_LAST_HOUR, {"queue": queue}).fetchone() or {}
    attempts = conn.execute(SQL_FAILED_ATTEMPTS_LAST_HOUR, {"queue": queue}).fetchone() or {}
    return LastHour(
        completed=int(ended.get("completed") or 0),
        failed=int(ended.get("failed") or 0),
        failedAttempts=int(attempts.get("failed_attempts") or 0),
    )


def _rows(conn: Conn, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not job_ids:
        return {}
    rows = conn.execute(SQL_ACTIVE_ROWS, {"job_ids": job_ids}).fetchall()
    return {row["job_id"]: row for row in rows}
