"""The console's actions, through the same service functions as the CLI: requeue (`phase1
dlq requeue`), cancel (`phase1 cancel`), pause and resume (`phase1 pause`/`resume`). So the
DLQ, the audit rows and the events agree whichever door was used.

Each action first answers a confirmation page naming what it will do; only the confirmed
form (the same fields plus `confirm=yes`) acts. Each returns what to tell the operator and
where to send them next.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from phase1.context import Phase1
from phase1.errors import InvalidInputError, NotFoundError, Phase1Error
from phase1.jobs import deadletter

# A bulk requeue names at most this many jobs on its confirmation page.
LISTED = 20


@dataclass(frozen=True)
class Plan:
    """What a confirmed action will do: a question, the items, and the hidden fields."""

    question: str
    items: list[str]
    total: int
    fields: list[tuple[str, str]]
    back: str


@dataclass(frozen=True)
class Outcome:
    message: str
    go_to: str


def _service(name: str) -> Any:
    """phase1.jobs.<name>, or InvalidInputError when this build does not have it yet."""
    try:
        return importlib.import_module(f"phase1.jobs.{name}")
    except ImportError:
        raise InvalidInputError(
            f"this build of phase1 has no {name} (phase1.jobs.{name})"
        ) from None


def requeue_targets(ctx: Phase1, form: Any) -> tuple[list[str], str]:
    """The job ids a requeue form names (`job` fields, or `all` with an optional `reason`)
    and a description of them."""
    if form.get("all") == "yes":
        reason = form.get("reason") or None
        if reason is not None:
            entries = deadletter.list_entries(ctx.redis, ctx.settings.queue, limit=1_000_000)
            ids = [e["jobId"] for e in entries if e.get("reason") == reason]
            return ids, f"every job in the DLQ with reason {reason}"
        return deadletter.job_ids(ctx.redis, ctx.settings.queue), "every job in the DLQ"
    ids = [i for i in form.getall("job") if i][:1000]
    if not ids:
        raise InvalidInputError("choose at least one job to requeue")
    return ids, "the chosen job" if len(ids) == 1 else "the chosen jobs"


def plan_requeue(ctx: Phase1, form: Any) -> Plan:
    ids, what = requeue_targets(ctx, form)
    if not ids:
        raise NotFoundError("nothing to requeue: the dead-letter queue has no such job")
    if form.get("all") == "yes":
        fields = [("all", "yes")] + ([("reason", form.get("reason"))] if form.get("reason") else [])
    else:
        fields = [("job", i) for i in ids]
    count = f"{len(ids)} job{'s' if len(ids) != 1 else ''}"
    question = (
        f"Requeue {what} ({count}) with a fresh retry budget of "
        f"{ctx.settings.max_attempts} attempts?"
    )
    back = f"/console/dlq/{ids[0]}" if len(ids) == 1 else "/console/dlq"
    return Plan(question, ids[:LISTED], len(ids), fields, back)


def requeue(ctx: Phase1, form: Any) -> Outcome:
    ids, _ = requeue_targets(ctx, form)
    done, failed = [], []
    for job_id in ids:
        try:
            deadletter.requeue(ctx, job_id)
            done.append(job_id)
        except Phase1Error as exc:
            failed.append(f"{job_id}: {exc}")
    if len(ids) == 1 and done:
        return Outcome(f"Requeued job {done[0]}.", f"/console/jobs/{done[0]}")
    message = f"Requeued {len(done)} job{'s' if len(done) != 1 else ''}."
    if failed:
        message += f" {len(failed)} could not be: {failed[0]}"
    return Outcome(message, "/console/dlq")


def _job_field(form: Any) -> str:
    job_id = (form.get("job") or "").strip()
    if not job_id:
        raise InvalidInputError("name the job to cancel")
    return str(job_id)[:255]


def plan_cancel(ctx: Phase1, form: Any) -> Plan:
    job_id = _job_field(form)
    reason = (form.get("reason") or "").strip()[:500]
    fields = [("job", job_id)] + ([("reason", reason)] if reason else [])
    question = f"Cancel job {job_id}? It ends failed with reason cancelled, in the DLQ."
    return Plan(question, [], 1, fields, f"/console/jobs/{job_id}")


def cancel(ctx: Phase1, form: Any) -> Outcome:
    job_id = _job_field(form)
    reason = (form.get("reason") or "").strip()[:500] or None
    view = _service("cancel").cancel(ctx, job_id, reason)
    return Outcome(f"Cancelled job {job_id}: it is {view.status} now.", f"/console/jobs/{job_id}")


def _queue_field(ctx: Phase1, form: Any) -> str:
    queue = form.get("queue") or ctx.settings.queue
    if queue != ctx.settings.queue:
        raise InvalidInputError(f"this console serves queue {ctx.settings.queue}, not {queue}")
    return str(queue)


def plan_pause(ctx: Phase1, form: Any, *, resume: bool) -> Plan:
    queue = _queue_field(ctx, form)
    if resume:
        question = f"Resume queue {queue}? Workers start taking its jobs again."
    else:
        question = (
            f"Pause queue {queue}? Workers stop taking its jobs (running ones finish); "
            "approvals still enqueue."
        )
    return Plan(question, [], 1, [("queue", queue)], "/console/")


def pause(ctx: Phase1, form: Any, *, resume: bool) -> Outcome:
    queue = _queue_field(ctx, form)
    service = _service("pause")
    if resume:
        service.resume(ctx, queue)
        return Outcome(f"Resumed queue {queue}.", "/console/")
    service.pause(ctx, queue)
    return Outcome(f"Paused queue {queue}.", "/console/")
