"""`phase1 audit`: PostgreSQL, Redis and the tasks checked against each other.

Queues stop at the queue; phase1 also holds the business record (plans, tasks, execution
rows), so it can prove afterwards that nothing slipped through. Each check names the id at
fault and the command that mends it; `fix` does what can be done safely (missing tasks
created, stuck jobs handed to the reconciler, missing final events and lost webhook
deliveries sent again) and says what it did. Read-only otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rq.job import Job

from phase1 import keys
from phase1.context import Phase1, redis_errors
from phase1.domain import phase1_tasks
from phase1.jobs import deadletter, events, pause, webhooks
from phase1.jobs import queue as jobs
from phase1.runtime import reconcile
from phase1.schemas import Event

PENDING_BOUND = timedelta(minutes=10)  # on a queue nobody paused
ACTIVE_MARGIN = timedelta(seconds=60)  # past the job timeout (and its failure callback)
RETRY_MARGIN = timedelta(seconds=60)  # past a retry's due time
MENDABLE = {"tasks-missing", "stuck", "final-event-missing", "webhook-lost"}

SQL_PLAN_EXECUTIONS = """
SELECT p.id::text AS plan_id, count(e.id) AS n, array_agg(e.job_id) AS job_ids
FROM marketplace_plans p LEFT JOIN marketplace_job_executions e ON e.plan_id = p.id
WHERE p.status = 'approved' AND p.updated_at >= %(since)s
  AND NOT (e.id IS NULL AND EXISTS (SELECT 1 FROM marketplace_tasks t WHERE t.plan_id = p.id))
GROUP BY p.id HAVING count(e.id) <> 1
"""
# Completed executions whose plan lacks one of its analysis's Phase 1 tasks (a task is unique
# per plan and key, so none can be there twice).
SQL_TASKS_MISSING = """
SELECT e.job_id, e.plan_id::text AS plan_id, count(*) AS missing
FROM marketplace_job_executions e
JOIN marketplace_plans p ON p.id = e.plan_id
CROSS JOIN LATERAL jsonb_array_elements(COALESCE(p.analysis->'phase1', '[]')) AS a(task)
WHERE e.queue = %(queue)s AND e.status = 'completed' AND e.created_at >= %(since)s
  AND NOT EXISTS (SELECT 1 FROM marketplace_tasks t
                  WHERE t.plan_id = e.plan_id AND t.phase = 1 AND t.task_key = a.task->>'key')
GROUP BY e.job_id, e.plan_id
"""
SQL_STUCK = """
SELECT job_id, status, updated_at, started_at, next_retry_at, LOCALTIMESTAMP AS now
FROM marketplace_job_executions
WHERE queue = %(queue)s AND created_at >= %(since)s AND (
  (status = 'pending' AND NOT %(paused)s AND updated_at < NOW() - %(pending)s)
  OR (status = 'active' AND started_at < NOW() - %(active)s)
  OR (status = 'retrying' AND next_retry_at < NOW() - %(retry)s))
ORDER BY job_id
"""
SQL_KNOWN = "SELECT job_id FROM marketplace_job_executions WHERE job_id = ANY(%(ids)s)"
SQL_FINISHED = """
SELECT job_id, plan_id::text AS plan_id, status, attempt_number, result, error_type,
       error_message, cancelled_at
FROM marketplace_job_executions
WHERE queue = %(queue)s AND status IN ('completed', 'failed') AND completed_at >= %(after)s
"""


@dataclass(frozen=True)
class Violation:
    """One thing the record and the queue disagree on: what, which id, and how to mend it."""

    kind: str
    id: str
    message: str
    fix_command: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "message": self.message, "fix": self.fix_command}


def check(ctx: Phase1, since: timedelta | None = None) -> list[Violation]:
    """Every violation found, for rows created within `since` (all of them by default)."""
    after = datetime.now(UTC).replace(tzinfo=None) - since if since else datetime(1970, 1, 1)
    found: list[Violation] = []
    found += _plans(ctx, after)
    found += _tasks(ctx, after)
    found += _stuck(ctx, after)
    found += _orphans(ctx)
    stream = _stream(ctx)
    found += _final_events(ctx, after, stream)
    found += _webhooks(ctx, stream)
    return found


def _plans(ctx: Phase1, after: datetime) -> list[Violation]:
    with ctx.read() as conn:
        rows = conn.execute(SQL_PLAN_EXECUTIONS, {"since": after}).fetchall()
    found = []
    for row in rows:
        plan = row["plan_id"]
        if row["n"] == 0:
            found.append(
                Violation(
                    "plan-without-execution",
                    plan,
                    f"plan {plan} is approved but has no execution (and no tasks)",
                    f"phase1 plans show {plan}  # then approve it again: phase1 enqueue {plan}",
                )
            )
        else:
            ids = ", ".join(j for j in row["job_ids"] if j)
            found.append(
                Violation(
                    "plan-with-many-executions",
                    plan,
                    f"plan {plan} has {row['n']} executions ({ids}); it must have one",
                    f"phase1 status <job> for each of {ids}; cancel all but one: phase1 cancel",
                )
            )
    return found


def _tasks(ctx: Phase1, after: datetime) -> list[Violation]:
    params = {"queue": ctx.settings.queue, "since": after}
    with ctx.read() as conn:
        rows = conn.execute(SQL_TASKS_MISSING, params).fetchall()
    return [
        Violation(
            "tasks-missing",
            r["job_id"],
            f"job {r['job_id']} completed but plan {r['plan_id']} lacks {r['missing']} of its "
            "Phase 1 tasks",
            "phase1 audit --fix  # creates the missing tasks (idempotent)",
        )
        for r in rows
    ]


def _stuck(ctx: Phase1, after: datetime) -> list[Violation]:
    settings = ctx.settings
    params = {
        "queue": settings.queue,
        "since": after,
        "paused": pause.is_paused(ctx),
        "pending": PENDING_BOUND,
        "active": timedelta(seconds=settings.job_timeout) + ACTIVE_MARGIN,
        "retry": RETRY_MARGIN,
    }
    with ctx.read() as conn:
        rows = conn.execute(SQL_STUCK, params).fetchall()
    found = []
    for r in rows:
        since_at = {"pending": r["updated_at"], "active": r["started_at"]}.get(
            r["status"], r["next_retry_at"]
        )
        age = int((r["now"] - since_at).total_seconds()) if since_at else 0
        found.append(
            Violation(
                "stuck",
                r["job_id"],
                f"job {r['job_id']} has been {r['status']} for {age} s, beyond its bound",
                f"phase1 reconcile  # or: phase1 cancel {r['job_id']}",
            )
        )
    return found


def _redis_ids(ctx: Phase1) -> dict[str, str]:
    """Every job id Redis holds for the queue, and where (queue, a registry, the DLQ)."""
    queue = ctx.queue()
    where: dict[str, str] = {}
    with redis_errors(ctx.redis_url):
        for job_id in queue.get_job_ids():
            where[job_id] = "queue"
        for name, registry in (
            ("scheduled", queue.scheduled_job_registry),
            ("started", queue.started_job_registry),
            ("failed", queue.failed_job_registry),
            ("finished", queue.finished_job_registry),
        ):
            for job_id in registry.get_job_ids():
                where.setdefault(job_id, name)
        for job_id in deadletter.job_ids(ctx.redis, ctx.settings.queue):
            where.setdefault(job_id, "dlq")
    return where


def _orphans(ctx: Phase1) -> list[Violation]:
    where = _redis_ids(ctx)
    if not where:
        return []
    with ctx.read() as conn:
        known = {r["job_id"] for r in conn.execute(SQL_KNOWN, {"ids": list(where)}).fetchall()}
    name = ctx.settings.queue
    found = []
    for job_id, place in sorted(where.items()):
        if job_id in known:
            continue
        if place == "dlq":
            command = f"redis-cli ZREM {keys.dlq_index(name)} {job_id}; redis-cli DEL " + (
                keys.dlq_entry(name, job_id)
            )
        else:
            command = f"redis-cli LREM rq:queue:{name} 0 {job_id}; redis-cli DEL " + (
                keys.rq_job(job_id)
            )
        found.append(
            Violation(
                "redis-without-row",
                job_id,
                f"Redis holds job {job_id} ({place}) but PostgreSQL has no execution row",
                command + "  # after a look: it can never run to a recorded end",
            )
        )
    return found


def _stream(ctx: Phase1) -> tuple[datetime | None, list[Event]]:
    """The events the capped stream still holds, and the time of its oldest."""
    with redis_errors(ctx.redis_url):
        found = [e for _, e in events.read(ctx.redis, ctx.settings.queue)]
    oldest = datetime.fromisoformat(found[0].at.replace("Z", "+00:00")) if found else None
    return oldest, found


def _final_events(
    ctx: Phase1, after: datetime, stream: tuple[datetime | None, list[Event]]
) -> list[Violation]:
    oldest, found = stream
    if oldest is None:
        return []  # nothing to compare with (an empty or trimmed-away stream)
    since = max(after, oldest.astimezone(UTC).replace(tzinfo=None))
    finals = {
        e.jobId
        for e in found
        if e.type == keys.COMPLETED or (e.type == keys.FAILED and e.data.get("final"))
    }
    with ctx.read() as conn:
        rows = conn.execute(SQL_FINISHED, {"queue": ctx.settings.queue, "after": since})
        missing = [r for r in rows.fetchall() if r["job_id"] not in finals]
    return [
        Violation(
            "final-event-missing",
            r["job_id"],
            f"job {r['job_id']} is {r['status']} but the event stream has no final event for it",
            "phase1 audit --fix  # emits it from the row",
        )
        for r in missing
    ]


def _webhooks(ctx: Phase1, stream: tuple[datetime | None, list[Event]]) -> list[Violation]:
    settings = ctx.settings
    if not settings.webhook_urls:
        return []
    with redis_errors(ctx.redis_url):
        given_up = {
            str(f.get("deliveryJobId"))
            for f in webhooks.failed_deliveries(ctx.redis, settings.queue, limit=10_000)
        }
        found = []
        horizon = datetime.now(UTC) - timedelta(seconds=webhooks.RESULT_TTL)
        for event in stream[1]:
            if not events.wants_webhooks(settings, event):
                continue
            at = datetime.fromisoformat(event.at.replace("Z", "+00:00"))
            for n in range(len(settings.webhook_urls)):
                delivery = f"webhook-{event.id}-{n}"
                if delivery in given_up:
                    continue
                raw = ctx.redis.hget(keys.rq_job(delivery), "status")
                status = raw.decode() if isinstance(raw, bytes) else raw
                if status in ("finished", "queued", "started", "scheduled", "deferred"):
                    continue
                if status is None and at < horizon:
                    continue  # its record expired with its result: nothing to tell
                found.append(
                    Violation(
                        "webhook-lost",
                        delivery,
                        f"webhook {event.type} of job {event.jobId} to receiver {n} was neither "
                        f"delivered nor recorded as given up (RQ says {status or 'nothing'})",
                        "phase1 audit --fix  # delivers it again",
                    )
                )
    return found


def fix(ctx: Phase1, violations: list[Violation]) -> list[str]:
    """Mend what can be mended safely; returns one line per thing done."""
    done: list[str] = []
    for v in violations:
        if v.kind == "tasks-missing":
            done.append(_create_tasks(ctx, v.id))
        elif v.kind == "final-event-missing":
            done.append(_emit_final(ctx, v.id))
        elif v.kind == "webhook-lost":
            done.append(_redeliver(ctx, v.id))
    if any(v.kind == "stuck" for v in violations):
        outcome = reconcile.reconcile(ctx, grace=0, wait=10)
        done.append(
            f"reconciler: re-enqueued {len(outcome.requeued)} and recorded the end of "
            f"{len(outcome.settled)} of {outcome.checked} live job(s)"
        )
    return done


def _create_tasks(ctx: Phase1, job_id: str) -> str:
    view = jobs.view(ctx, job_id)
    with ctx.transaction() as conn:
        created, _ = phase1_tasks.create_phase1_tasks(conn, view.planId)
    return f"created {len(created)} missing task(s) of plan {view.planId} (job {job_id})"


def _emit_final(ctx: Phase1, job_id: str) -> str:
    view = jobs.view(ctx, job_id)
    if view.status == "completed":
        event = events.make(
            events.COMPLETED, job_id, str(view.planId), view.attempt, {"result": view.result}
        )
    else:
        error = view.error
        data: dict[str, Any] = {
            "final": True,
            "reason": (error.reason if error else None) or "exception",
            "error": {"type": error.type if error else None, "message": error.message}
            if error
            else None,
        }
        event = events.make(events.FAILED, job_id, str(view.planId), view.attempt, data)
    events.emit(ctx.redis, ctx.settings, event)
    return f"emitted {event.type} for job {job_id}"


def _redeliver(ctx: Phase1, delivery_id: str) -> str:
    """The delivery job back on the webhook queue (RQ's own requeue for a failed one)."""
    queue = ctx.queue(keys.webhook_queue(ctx.settings.queue))
    try:
        job = Job.fetch(delivery_id, connection=ctx.redis, serializer=queue.serializer)
        if job.get_status() == "failed":
            job.requeue()
        else:
            queue.enqueue_job(job)
    except Exception as exc:  # gone, or unreadable: nothing to deliver again
        return f"webhook {delivery_id}: could not enqueue it again ({type(exc).__name__})"
    return f"enqueued webhook delivery {delivery_id} again"
