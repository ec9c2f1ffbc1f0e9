"""Operators acting on jobs and queues: `phase1 cancel`, `phase1 pause`, `phase1 resume`."""

from __future__ import annotations

import typer

from phase1.cli.common import json_option, note, print_details, print_json, state
from phase1.cli.jobs import JOB_SHAPE, view_details
from phase1.domain import plans
from phase1.jobs import cancel as cancelling
from phase1.jobs import pause as pausing


def cancel(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job to cancel."),
    reason: str | None = typer.Option(
        None, "--reason", help="Why (kept with the job, its DLQ entry and its event)."
    ),
    as_json: bool = json_option(JOB_SHAPE),
) -> None:
    """Cancel a pending, retrying or running job: it ends `failed` with reason `cancelled`.

    A waiting job leaves its queue (or its scheduled retry) at once; a running one is
    interrupted before its tasks commit (nothing is half-written). The job goes to the
    dead-letter queue: `phase1 dlq requeue JOB_ID` brings it back. Cancelling again prints
    the same; a completed job cannot be cancelled (exit 1, naming its state).

    Example: phase1 cancel "$job" --reason "wrong plan approved"
    """
    view = cancelling.cancel(state(ctx).connect(), plans.parse_job_id(job_id), reason)
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        print_details(view_details(view))


def pause(
    ctx: typer.Context,
    queue: str | None = typer.Argument(None, help="The queue (default PHASE1_QUEUE)."),
) -> None:
    """Pause a queue: phase1 workers stop taking its jobs within a second.

    They finish the ones they hold. Approvals still answer 202; their jobs wait on the queue.

    Plain `rq worker`s do not know of it (RQ's `rq suspend` stops every queue of them).

    Example: phase1 pause phase1-tasks
    """
    phase1 = state(ctx).connect()
    name = queue or phase1.settings.queue
    pausing.pause(phase1, name)
    note(f"{name} paused: workers take none of its jobs (`phase1 resume {name}` to go on)")


def resume(
    ctx: typer.Context,
    queue: str | None = typer.Argument(None, help="The queue (default PHASE1_QUEUE)."),
) -> None:
    """Resume a paused queue: workers take its jobs again within a second.

    Example: phase1 resume phase1-tasks
    """
    phase1 = state(ctx).connect()
    name = queue or phase1.settings.queue
    pausing.resume(phase1, name)
    note(f"{name} resumed")
