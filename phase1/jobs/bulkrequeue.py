"""`phase1 dlq requeue --all`, paced and resumable.

A run takes the entries that failed before it started (its cutoff), optionally of one reason,
oldest first, and requeues them one by one at up to `rate` a second; each requeue is atomic
(phase1.jobs.deadletter). The cutoff is kept in Redis until the run ends, so a run
interrupted (Ctrl-C) and started again resumes with what is left, and a job that was
requeued and failed again meanwhile (it is back in the DLQ with a later time) is not
requeued a second time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from phase1 import keys
from phase1.context import Phase1
from phase1.errors import NotFoundError
from phase1.jobs import deadletter


@dataclass(frozen=True)
class Run:
    """The entries a run takes: failed before `cutoff` (unix seconds), of `reason` if set."""

    cutoff: float
    reason: str | None
    resumed: bool


def begin(ctx: Phase1, reason: str | None, *, dry_run: bool = False) -> Run:
    """The run under way with the same filter (resumed), or a new one from now."""
    key = keys.dlq_requeue_run(ctx.settings.queue)
    raw = ctx.redis.get(key)
    if raw is not None:
        kept = json.loads(raw)
        if kept.get("reason") == reason:
            return Run(float(kept["cutoff"]), reason, True)
    run = Run(time.time(), reason, False)
    if not dry_run:
        ctx.redis.set(key, json.dumps({"cutoff": run.cutoff, "reason": reason}))
    return run


def end(ctx: Phase1) -> None:
    """The run is done: the next one starts afresh."""
    ctx.redis.delete(keys.dlq_requeue_run(ctx.settings.queue))


def _failed_at(entry: dict[str, object]) -> float:
    text = str(entry.get("failedAt") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def pending(ctx: Phase1, run: Run) -> list[str]:
    """The job ids the run still has to requeue, oldest failure first: Redis's entries and
    those only PostgreSQL holds (Redis lost them)."""
    queue = ctx.settings.queue
    entries = deadletter.list_entries(
        ctx.redis, queue, limit=max(1, deadletter.size(ctx.redis, queue))
    ) + deadletter.lost_entries(ctx)
    chosen = [
        e
        for e in entries
        if _failed_at(e) <= run.cutoff and (run.reason is None or e.get("reason") == run.reason)
    ]
    chosen.sort(key=_failed_at)
    return [str(e["jobId"]) for e in chosen]


def requeue_paced(
    ctx: Phase1,
    job_ids: list[str],
    *,
    rate: float | None,
    dry_run: bool,
    progress: Callable[[int, deadletter.Requeued | None], None],
) -> list[deadletter.Requeued]:
    """Requeue `job_ids` at up to `rate` a second; `progress(done, outcome)` after each (the
    outcome None for one that left the DLQ meanwhile). Ctrl-C stops between two requeues."""
    moved: list[deadletter.Requeued] = []
    started = time.monotonic()
    for n, job_id in enumerate(job_ids):
        if rate and not dry_run:
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        try:
            outcome: deadletter.Requeued | None = deadletter.requeue(ctx, job_id, dry_run=dry_run)
        except NotFoundError:  # requeued by someone else meanwhile
            outcome = None
        if outcome is not None:
            moved.append(outcome)
        progress(n + 1, outcome)
    return moved
