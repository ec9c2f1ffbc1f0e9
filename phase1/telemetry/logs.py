"""Log lines as text (the default) or one JSON object per line (PHASE1_LOG_FORMAT=json).

A JSON line has `ts`, `level`, `logger` and `message`, plus `job_id`, `plan_id` and `attempt`
while a job runs (a contextvar the job sets) and `trace_id`/`span_id` inside a span, so the
worker's and the server's lines of one approval join on the trace id.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

from phase1.telemetry import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (job id, plan id, attempt) of the job this context runs, or None.
job_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "phase1_job_fields", default=None
)


def set_job(job_id: str, plan_id: str | None, attempt: int | None = None) -> contextvars.Token[Any]:
    """Name the job whose log lines follow; reset with the token returned."""
    return job_fields.set({"job_id": job_id, "plan_id": plan_id, "attempt": attempt})


def set_attempt(attempt: int) -> None:
    fields = job_fields.get()
    if fields is not None:
        fields["attempt"] = attempt


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = job_fields.get()
        if fields is not None:
            line.update({k: v for k, v in fields.items() if v is not None})
        ids = tracing.current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
