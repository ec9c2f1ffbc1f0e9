"""What tracing costs a Phase 1 job (issue 24): the spans, attributes, trace context, log
fields and metrics one attempt records, timed in-process without the job's own I/O.

    python -m bench.tracing_cost            # tracing off: the microseconds a job gains
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python -m bench.tracing_cost
                                            # on: per job, the export of its spans included

On, the figure includes the BatchSpanProcessor's export thread (serialising the spans and
posting them), which shares the GIL with the jobs; run a collector that answers quickly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from phase1.jobs import attempt_trace
from phase1.jobs.phase1_job import describe_failure
from phase1.telemetry import logs as logformat
from phase1.telemetry import tracing

URL = "postgresql://127.0.0.1:5432/phase1"


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 20_000
    on = tracing.configure()
    tracing.batch_across_jobs()  # as `phase1 worker` does
    meta: dict[str, Any] = {"planId": "5f1c2d9e-0000-4000-8000-000000000000"}
    with tracing.span("send phase1-tasks", kind="producer"):
        tracing.inject(meta)
    job: Any = SimpleNamespace(
        id="job-1",
        origin="phase1-tasks",
        meta=meta,
        worker_name="w",
        timeout=10,
        created_at=datetime.now(UTC).replace(tzinfo=None),
        retries_left=3,
    )

    def traced_job() -> None:  # run_phase1_job's tracing, tracing on
        token = logformat.set_job(job.id, meta["planId"])
        try:
            with attempt_trace.attempt_span(job, describe_failure) as span:
                with tracing.db_span("open attempt", URL):
                    pass
                logformat.set_attempt(1)
                tracing.set_attributes(span, {"phase1.attempt": 1})
                with tracing.db_span("create tasks", URL):
                    pass
                with tracing.restored(tracing.capture()):
                    pass
        finally:
            logformat.job_fields.reset(token)

    def untraced_job() -> None:  # the same calls with tracing off
        token = logformat.set_job(job.id, meta["planId"])
        try:
            if tracing.enabled():
                raise AssertionError("tracing is on")
            with tracing.db_span("open attempt", URL):
                pass
            logformat.set_attempt(1)
            tracing.set_attributes(None, {"phase1.attempt": 1})
            with tracing.db_span("create tasks", URL):
                pass
            with tracing.restored(tracing.capture()):
                pass
        finally:
            logformat.job_fields.reset(token)

    def timed(fn: Callable[[], None]) -> float:
        for _ in range(500):
            fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        tracing.flush(60_000)
        return (time.perf_counter() - started) / n * 1e6

    if on:
        print(f"tracing on: {timed(traced_job):.0f} µs per job, its export included ({n} jobs)")
    else:
        added = timed(untraced_job) - timed(lambda: None)
        print(f"tracing off: {added:.2f} µs added per job ({n} jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
