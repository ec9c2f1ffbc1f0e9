"""What each console page shows, read through the same service functions as the CLI: the
monitor's snapshot (`phase1 info`), the job view (`phase1 status`), the DLQ (`phase1 dlq`),
plans, the attempt history and the event stream. Each returns the values of a template."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from phase1 import keys
from phase1.context import Phase1, redis_errors
from phase1.domain import audit, plans
from phase1.errors import InvalidInputError, NotFoundError
from phase1.http.console import chart, queries
from phase1.jobs import deadletter
from phase1.jobs import queue as jobs
from phase1.runtime import monitor
from phase1.schemas import Event

# Columns of an attempt row the timeline shows in its own cells; any other (lock
# diagnostics, say) is listed under the attempt by name.
ATTEMPT_COLUMNS = {
    "job_id", "attempt", "status", "worker", "started_at", "ended_at", "error_type",
    "error_message",
}  # fmt: skip
# Stream entries read from each end of a job's time window for its events.
EVENT_SCAN = 1000
SCHEDULED_SHOWN = 20


def paused(ctx: Phase1) -> bool | None:
    """Whether the queue is paused; None when this build has no pause (phase1.jobs.pause)."""
    try:
        from phase1.jobs import pause  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return bool(pause.is_paused(ctx, ctx.settings.queue))


def overview(ctx: Phase1, last_hour: queries.LastHour) -> dict[str, Any]:
    snap = monitor.snapshot(ctx, last_hour=False)
    with redis_errors(ctx.redis_url):
        registry = ctx.queue().scheduled_job_registry.key
        waiting: Any = ctx.redis.zrange(registry, 0, SCHEDULED_SHOWN - 1, withscores=True)
        is_paused = paused(ctx)
    scheduled = [(_text(jid), datetime.fromtimestamp(float(at), UTC)) for jid, at in waiting]
    now = snap.at
    with ctx.read() as conn:
        rows = queries.rows_of(conn, [jid for jid, _ in scheduled])
        minutes = last_hour.get(conn, ctx.settings.queue, now.replace(tzinfo=None))
    return {
        "snap": snap,
        "now": now,
        "scheduled": [(jid, at, rows.get(jid)) for jid, at in scheduled],
        "paused": is_paused,
        "hour": {
            "completed": sum(m.completed for m in minutes),
            "failed": sum(m.failed for m in minutes),
            "retried": sum(m.retried for m in minutes),
        },
        "outcomes_svg": chart.outcomes(minutes),
        "latency_svg": chart.latency(minutes),
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _page(value: str | None) -> int:
    if not value:
        return 1
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise InvalidInputError(f"page {value[:20]!r} is not a page number")
    return int(value)


def job_list(ctx: Phase1, query: dict[str, str]) -> dict[str, Any]:
    state = query.get("state") or None
    if state is not None and state not in queries.STATES:
        raise InvalidInputError(f"state {state[:40]!r} is not one of {', '.join(queries.STATES)}")
    since_label = query.get("since") or "all"
    if since_label not in queries.SINCE:
        raise InvalidInputError(
            f"since {since_label[:20]!r} is not one of {', '.join(queries.SINCE)}"
        )
    plan_text = (query.get("plan") or "").strip()[:200]
    plan_id: UUID | None = None
    title: str | None = None
    if plan_text:
        try:
            plan_id = UUID(plan_text)
        except ValueError:
            title = plan_text
    seconds = queries.SINCE[since_label]
    since = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=seconds) if seconds else None
    page = _page(query.get("page"))
    with ctx.read() as conn:
        found = queries.jobs(
            conn,
            ctx.settings.queue,
            status=state,
            plan_id=plan_id,
            title=title,
            since=since,
            offset=(page - 1) * queries.PAGE_SIZE,
        )
    filters = {"state": state, "plan": plan_text, "since": since_label if seconds else None}
    return {"found": found, "page": page, "filters": filters, "states": queries.STATES,
            "since_choices": list(queries.SINCE)}  # fmt: skip


def job(ctx: Phase1, job_id: str) -> dict[str, Any]:
    if "\x00" in job_id:
        raise NotFoundError("job not found (the id holds a NUL character)")
    view = jobs.view(ctx, job_id)
    with ctx.read() as conn:
        row = audit.get(conn, job_id) or {}
        attempts = audit.attempts(conn, job_id)
        plan = plans.get_plan(conn, view.planId)
        tasks = plans.list_tasks(conn, view.planId)
    with redis_errors(ctx.redis_url):
        entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
        found = job_events(ctx, job_id, view.enqueuedAt, view.completedAt)
        trace = trace_id(ctx, job_id)
    timeline = [
        {
            "row": a,
            "extra": {k: v for k, v in a.items() if k not in ATTEMPT_COLUMNS and v is not None},
        }
        for a in attempts
    ]
    return {"view": view, "row": row, "timeline": timeline, "plan": plan, "tasks": tasks,
            "entry": entry, "events": found, "trace": trace}  # fmt: skip


def job_events(
    ctx: Phase1, job_id: str, start: datetime | None, end: datetime | None
) -> list[tuple[str, Event]]:
    """The job's events from the stream: stream ids are times, so only the entries of its
    time window are read (up to EVENT_SCAN from each end), and only its own are parsed."""
    stream = keys.event_stream(ctx.settings.queue)
    low = f"{int(start.timestamp() * 1000) - 2000}-0" if start else "-"
    high = f"{int(end.timestamp() * 1000) + 5000}-0" if end else "+"
    head: Any = ctx.redis.xrange(stream, min=low, max=high, count=EVENT_SCAN)
    tail: Any = ctx.redis.xrevrange(stream, max=high, min=low, count=EVENT_SCAN)
    needle = job_id.encode()
    seen: dict[str, Event] = {}
    for sid, fields in [*head, *tail]:
        raw = fields.get(b"e") or b""
        key = _text(sid)
        if needle in raw and key not in seen:
            try:
                event = Event.model_validate_json(raw)
            except ValueError:
                continue
            if event.jobId == job_id:
                seen[key] = event
    return sorted(seen.items(), key=lambda item: tuple(int(p) for p in item[0].split("-")))


def trace_id(ctx: Phase1, job_id: str) -> str | None:
    """The trace id of the job's `traceparent` (set when tracing is on), if it has one."""
    raw: Any = ctx.redis.hget(keys.rq_job(job_id), "meta")
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    parent = meta.get("traceparent") if isinstance(meta, dict) else None
    parts = parent.split("-") if isinstance(parent, str) else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class DlqGroups:
    """The DLQ's entries grouped by reason and error type, kept until the DLQ changes.

    Entries never change once written, so the index's size and both ends tell whether the
    grouping still holds; grouping a thousand entries is then paid once, not every second.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._groups: dict[tuple[str, str], list[str]] = {}

    def get(self, ctx: Phase1) -> dict[tuple[str, str], list[str]]:
        index = keys.dlq_index(ctx.settings.queue)
        with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(index)
            pipe.zrange(index, 0, 0)
            pipe.zrange(index, -1, -1)
            key = tuple(map(repr, pipe.execute()))
        with self._lock:
            if key == self._key:
                return self._groups
        ids = deadletter.job_ids(ctx.redis, ctx.settings.queue)
        groups: dict[tuple[str, str], list[str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            raws: Any = ctx.redis.mget([keys.dlq_entry(ctx.settings.queue, i) for i in chunk])
            for job_id, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    continue
                entry = json.loads(raw)
                group = (str(entry.get("reason") or "-"), str(entry.get("errorType") or "-"))
                groups.setdefault(group, []).append(job_id)
        with self._lock:
            self._key, self._groups = key, groups
        return groups


def dlq(ctx: Phase1, groups_cache: DlqGroups, query: dict[str, str]) -> dict[str, Any]:
    reason = query.get("reason") or None
    page = _page(query.get("page"))
    with redis_errors(ctx.redis_url):
        groups = groups_cache.get(ctx)
        if reason is None:
            ids = deadletter.job_ids(ctx.redis, ctx.settings.queue)
        else:
            ids = [i for (r, _), members in groups.items() if r == reason for i in members]
        start = (page - 1) * queries.PAGE_SIZE
        shown = ids[start : start + queries.PAGE_SIZE]
        raws: Any = (
            ctx.redis.mget([keys.dlq_entry(ctx.settings.queue, i) for i in shown]) if shown else []
        )
    entries = [json.loads(raw) for raw in raws if raw is not None]
    counts = sorted(((len(m), r, t) for (r, t), m in groups.items()), reverse=True)
    reasons = Counter[str]()
    for n, r, _ in counts:
        reasons[r] += n
    return {"entries": entries, "counts": counts, "reasons": sorted(reasons.items()),
            "reason": reason, "page": page, "total": len(ids),
            "has_next": start + len(shown) < len(ids)}  # fmt: skip


def dlq_entry(ctx: Phase1, job_id: str) -> dict[str, Any]:
    with redis_errors(ctx.redis_url):
        entry = deadletter.get(ctx.redis, ctx.settings.queue, job_id)
    if entry is None:
        raise NotFoundError(f"job {job_id[:300]} is not in the dead-letter queue")
    return {"entry": entry}


def plan_list(ctx: Phase1, query: dict[str, str]) -> dict[str, Any]:
    status = query.get("status") or None
    if status is not None and status not in queries.PLAN_STATES:
        raise InvalidInputError(
            f"status {status[:40]!r} is not one of {', '.join(queries.PLAN_STATES)}"
        )
    title = (query.get("title") or "").strip()[:200] or None
    page = _page(query.get("page"))
    with ctx.read() as conn:
        found = queries.plans(
            conn, status=status, title=title, offset=(page - 1) * queries.PAGE_SIZE
        )
    return {"found": found, "page": page, "filters": {"status": status, "title": title},
            "states": queries.PLAN_STATES}  # fmt: skip


def plan(ctx: Phase1, plan_id: str) -> dict[str, Any]:
    pid = plans.parse_uuid(plan_id)
    with ctx.read() as conn:
        found = plans.get_plan(conn, pid)
        tasks = plans.list_tasks(conn, pid)
        row = audit.for_plan(conn, pid)
    planned = found.analysis.get("phase1") if isinstance(found.analysis, dict) else None
    return {"plan": found, "tasks": tasks, "row": row,
            "planned": planned if isinstance(planned, list) else []}  # fmt: skip


def workers(ctx: Phase1) -> dict[str, Any]:
    found, scheduler = monitor.workers(ctx)
    with redis_errors(ctx.redis_url):
        is_paused = paused(ctx)
    return {"workers": found, "scheduler": scheduler, "queue": ctx.settings.queue,
            "now": datetime.now(UTC), "paused": is_paused}  # fmt: skip
