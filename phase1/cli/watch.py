"""`phase1 status --watch`: follow a job to a final state with a live progress bar."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from phase1 import queue as jobs
from phase1.cli.common import print_json, stderr
from phase1.context import Phase1
from phase1.schemas import FINAL_STATUSES, JobView


def _describe(view: JobView) -> str:
    text = f"{view.status} (attempt {view.attempt}/{view.maxAttempts})"
    if view.status == "retrying" and view.nextRetryAt is not None:
        wait = (view.nextRetryAt.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        text += f", next attempt in {max(0.0, wait):.0f}s"
    if view.status == "failed" and view.error is not None:
        text += f": {view.error.message}"
    return text


def watch_job(ctx: Phase1, view: JobView, *, interval: float, as_json: bool) -> JobView:
    """Poll until the job is completed or failed; the bar goes to stderr, --json to stdout."""
    console = stderr()
    with Progress(
        TextColumn("[bold]{task.fields[job]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(_describe(view), total=100, completed=view.progress, job=view.jobId)
        while view.status not in FINAL_STATUSES:
            time.sleep(interval)
            view = jobs.view(ctx, view.jobId)
            bar.update(task, completed=view.progress, description=_describe(view))
        bar.update(task, completed=view.progress, description=_describe(view))
    if as_json:
        print_json(view.model_dump(mode="json"))
    return view
