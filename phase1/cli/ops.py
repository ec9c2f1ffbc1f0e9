"""Operations commands: reconcile."""

from __future__ import annotations

import typer

from phase1.cli.common import fail, print_json, state, stderr, stdout
from phase1.runtime.reconcile import Reconciliation
from phase1.runtime.reconcile import reconcile as reconcile_once


def reconcile(
    ctx: typer.Context,
    as_json: bool = typer.Option(
        False,
        "--json",
        help=(
            "Print a summary: queue, checked, requeued, jobIds, settled, settledJobIds, "
            "restored, restoredJobIds, lockedOut, seconds."
        ),
    ),
    grace: float | None = typer.Option(
        None,
        "--grace",
        min=0,
        help="Leave rows younger than this many seconds alone (default PHASE1_RECONCILE_GRACE).",
    ),
    wait: float = typer.Option(
        30.0, "--wait", min=0, help="Seconds to wait while another process reconciles."
    ),
) -> None:
    """Put PostgreSQL's record and Redis in step: re-enqueue, settle, restore DLQ entries.

    Re-enqueue every job PostgreSQL holds as pending, active or retrying that Redis has
    lost (Redis restarted without persistence, or was flushed), under the same job id; and
    record as failed (dead-lettered) each of those jobs that RQ has ended without phase1 hearing
    of it (failed by a plain `rq worker`'s maintenance, stopped or cancelled with RQ's tools,
    or failed while PostgreSQL was down); and write back to Redis the dead-letter entries
    PostgreSQL holds and Redis lost.

    Every `phase1 worker` also does this every PHASE1_RECONCILE_INTERVAL seconds; running it
    by hand after a Redis loss just makes it happen now. Safe to run alongside workers.

    Example: phase1 reconcile --json
    """
    conn = state(ctx).connect()
    err = stderr()

    def progress(outcome: Reconciliation) -> None:
        if outcome.checked >= 1000:  # only worth a line when there are many
            err.print(
                f"checked {outcome.checked} live job(s), re-enqueued {len(outcome.requeued)}",
                highlight=False,
            )

    outcome = reconcile_once(conn, grace=grace, wait=wait, progress=progress)
    if as_json:
        print_json(outcome.as_dict())
    elif not outcome.locked_out:
        stdout().print(
            f"re-enqueued {len(outcome.requeued)} of {outcome.checked} live job(s) on "
            f"{outcome.queue} that Redis had lost",
            highlight=False,
        )
        if outcome.restored:
            stdout().print(
                f"wrote back {len(outcome.restored)} dead-letter entr(ies) that Redis had "
                "lost (see phase1 dlq list)",
                highlight=False,
            )
        if outcome.settled:
            stdout().print(
                f"recorded the failure of {len(outcome.settled)} that RQ had ended without "
                f"phase1 (see phase1 dlq list)",
                highlight=False,
            )
    if outcome.locked_out:
        raise fail(
            f"another process is reconciling {outcome.queue}; nothing done after waiting "
            f"{wait:g} s (try again, or pass --wait)"
        )
