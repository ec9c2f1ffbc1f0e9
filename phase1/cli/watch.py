"""`phase1 status --watch`: follow a job to a final state with a live progress bar.

On a terminal, stderr shows a bar with the state as it moves (pending → active → retrying with
a countdown to the next attempt → completed or failed) and a line per change above it; off a
terminal, only the lines. The caller prints the final status on stdout.
"""

from __future__ import annotations

import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from phase1.cli.common import duration, fancy, now, one_line, stderr
from phase1.context import Phase1
from phase1.errors import Phase1Error
from phase1.jobs import queue as jobs
from phase1.schemas import FINAL_STATUSES, JobView

STYLES = {
    "pending": "cyan",
    "active": "blue",
    "retrying": "yellow",
    "completed": "bold green",
    "failed": "bold red",
}


def _seconds_until(moment: datetime | None) -> float:
    return 0.0 if moment is None else (moment - now()).total_seconds()


def describe(view: JobView) -> str:
    """The state in words, with the countdown to the next attempt while retrying."""
    text = f"{view.status} · attempt {view.attempt}/{view.maxAttempts}"
    if view.status == "retrying":
        text += f" failed · next attempt in {duration(max(0.0, _seconds_until(view.nextRetryAt)))}"
    return text


def change_line(view: JobView) -> str:
    """One line for a change of state or attempt: what happened and what comes next."""
    stamp = now().strftime("%H:%M:%S")
    line = f"{stamp}  {view.status:<9} attempt {view.attempt}/{view.maxAttempts}"
    if view.status == "retrying":
        when = view.nextRetryAt.strftime("%H:%M:%S") if view.nextRetryAt else "?"
        line += f" failed: {_error(view)}; next attempt at {when}Z"
    elif view.status == "failed":
        line += (
            f" failed: {_error(view)}; in the dead-letter queue (phase1 dlq inspect {view.jobId})"
        )
    elif view.status == "completed" and view.result is not None:
        line += f": {view.result.get('tasksCreated')} task(s) created"
    return line


def _error(view: JobView) -> str:
    if view.error is None:
        return "unknown error"
    message = one_line(view.error.message)
    return f"{view.error.type}: {message}" if view.error.type else message


def watch_job(ctx: Phase1, view: JobView, *, interval: float, timeout: float = 0) -> JobView:
    """Poll PostgreSQL until the job is completed or failed (or `timeout` seconds pass)."""
    console = stderr()
    if not fancy(console):
        return _follow(ctx, view, console, None, interval, timeout)
    with Progress(
        TextColumn("[bold]{task.fields[job]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=100, job=view.jobId[:8])
        return _follow(ctx, view, console, (bar, task), interval, timeout)


def _follow(
    ctx: Phase1,
    view: JobView,
    console: Console,
    live: tuple[Progress, TaskID] | None,
    interval: float,
    timeout: float,
) -> JobView:
    deadline = time.monotonic() + timeout if timeout else None
    last: tuple[str, int] | None = None
    while True:
        if (view.status, view.attempt) != last:
            last = (view.status, view.attempt)
            console.print(change_line(view), style=STYLES[view.status], highlight=False)
        if live is not None:
            bar, task = live
            style = STYLES[view.status]
            bar.update(task, completed=view.progress, description=f"[{style}]{describe(view)}")
        if view.status in FINAL_STATUSES:
            return view
        if deadline is not None and time.monotonic() > deadline:
            raise Phase1Error(
                f"job {view.jobId} is still {view.status} after {timeout:g}s (--timeout)"
            )
        time.sleep(interval)
        view = jobs.view(ctx, view.jobId)
