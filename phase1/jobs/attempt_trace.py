"""A Phase 1 job's attempt as an OpenTelemetry consumer span, and the job metrics (issue 24).

The span continues the trace whose `traceparent` the enqueue put in the job's meta, so the
same function run by `phase1 worker` or a plain `rq worker` joins the approval's trace. A
failed attempt records its exception, reason and retry; its span context is kept for
`on_failure`, which runs after the function, so the dead-lettering joins the same trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from rq.job import Job

from phase1.telemetry import tracing

Describe = Callable[[type[BaseException], BaseException, Any], tuple[str, str, str]]

# The span context of each failed attempt this process ran, until on_failure takes it.
failed_spans: dict[str, Any] = {}


@contextlib.contextmanager
def attempt_span(job: Job, describe: Describe) -> Iterator[Any]:
    """The attempt's consumer span (with its process-duration metric) around the work."""
    queue = job.origin
    plan_id = (job.meta or {}).get("planId")
    attributes = {
        "messaging.system": "rq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job.id,
        "phase1.plan_id": str(plan_id) if plan_id else None,
        "phase1.worker": job.worker_name,
    }
    started = time.perf_counter()
    outcome = "completed"
    try:
        with tracing.span(
            f"process {queue}",
            kind="consumer",
            attributes=attributes,
            parent=tracing.carrier_of(job.meta),
        ) as span:
            try:
                yield span
            except BaseException as exc:
                outcome = "failed"
                _note_failure(job, span, exc, describe)
                raise
    finally:
        tracing.record(
            "messaging.process.duration",
            time.perf_counter() - started,
            {"messaging.system": "rq", "messaging.destination.name": queue, "outcome": outcome},
        )
        if outcome == "completed":
            record_finished(job, "completed")
            tracing.job_done()  # a failed attempt exports after on_failure


def _note_failure(job: Job, span: Any, exc: BaseException, describe: Describe) -> None:
    """The failed attempt's reason and its retry: the wait shows as the gap to the next
    attempt's span, and its planned length as attributes and an event."""
    if span is None:
        return
    reason, error_type, _ = describe(type(exc), exc, job.timeout)
    final = reason == "permanent" or not job.should_retry
    attributes: dict[str, Any] = {
        "error.type": error_type,
        "phase1.failure.reason": reason,
        "phase1.retry.final": final,
    }
    if not final:
        delay = float(job.get_retry_interval())
        next_at = datetime.now(UTC) + timedelta(seconds=delay)
        attributes["phase1.retry.delay_s"] = delay
        attributes["phase1.retry.next_at"] = next_at.isoformat().replace("+00:00", "Z")
        span.add_event("retry scheduled", {"phase1.retry.delay_s": delay})
    tracing.set_attributes(span, attributes)
    failed_spans[job.id] = span.get_span_context()


def record_finished(job: Job, status: str) -> None:
    """OpenTelemetry metrics of a finished job, as /metrics serves them (count, duration)."""
    attributes = {"messaging.destination.name": job.origin, "status": status}
    tracing.record("phase1.jobs.finished", 1, attributes, counter=True)
    if job.created_at is not None:
        created = job.created_at.replace(tzinfo=UTC)
        seconds = (datetime.now(UTC) - created).total_seconds()
        tracing.record("phase1.job.duration", seconds, attributes)
