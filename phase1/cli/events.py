"""`phase1 events`: replay and follow lifecycle events from the stream, and failed webhooks."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import typer
from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rich.text import Text

from phase1.cli.common import state, stderr, stdout
from phase1.context import redis_client
from phase1.domain import plans
from phase1.errors import InvalidInputError, UnavailableError
from phase1.jobs import events, webhooks
from phase1.schemas import Event
from phase1.settings import redact_url

STYLES = {
    events.ENQUEUED: "cyan",
    events.ACTIVE: "blue",
    events.PROGRESS: "dim",
    events.COMPLETED: "bold green",
    events.FAILED: "bold red",
    events.REQUEUED: "magenta",
}
# The highest sequence number of a stream id: "<ms-1>-MAX" is the last id before that ms.
MAX_SEQ = 2**64 - 1


def events_command(
    ctx: typer.Context,
    follow: bool = typer.Option(
        False, "--follow", "-f", help="After the backlog, print new events live until Ctrl-C."
    ),
    job: str | None = typer.Option(None, "--job", help="Only the events of this job id."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="Only events after this point: a stream id (the streamId of --json), unix "
        "milliseconds, an ISO-8601 time, or '$' for new events only.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object a line: the event envelope plus its streamId."
    ),
    webhook_failures: bool = typer.Option(
        False,
        "--webhook-failures",
        help="Instead, list webhook deliveries given up after their last try (newest first).",
    ),
) -> None:
    """Show the lifecycle events of the queue's event stream, oldest first.

    The types: job:enqueued, job:active, job:progress, job:completed, job:failed,
    job:requeued.

    Example: phase1 events --follow --job "$job"
    """
    job = plans.parse_job_id(job) if job is not None else None
    settings = state(ctx).resolved()
    assert settings.redis_url
    redis = redis_client(settings.redis_url)
    try:
        with _redis_errors(settings.redis_url):
            if webhook_failures:
                _show_failures(webhooks.failed_deliveries(redis, settings.queue, 1000), as_json)
                return
            start = _resolve_since(redis, settings.queue, since)
            stream = events.read(redis, settings.queue, since=start, job_id=job, follow=follow)
            _print_events(stream, as_json)
    finally:
        redis.close()


@contextlib.contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    try:
        yield
    except ResponseError as exc:
        raise InvalidInputError(f"Redis refused the request: {exc}") from exc
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc


def _print_events(stream: Iterator[tuple[str, Event]], as_json: bool) -> None:
    """Print until the stream ends, or, when following, until Ctrl-C or SIGTERM (exit 0)."""
    console = stdout()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for stream_id, event in stream:
            if as_json:
                _write_line({"streamId": stream_id, **event.model_dump(mode="json")})
            else:
                console.print(describe(stream_id, event), highlight=False)
    except (KeyboardInterrupt, BrokenPipeError):
        with contextlib.suppress(OSError):
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _write_line(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, default=str) + "\n")
    sys.stdout.flush()


def _resolve_since(redis: Redis, queue: str, since: str | None) -> str:
    if since is None:
        return "0-0"
    value = since.strip()
    if value in ("$", "now"):
        return events.last_id(redis, queue)
    if re.fullmatch(r"\d+-\d+", value):
        return value
    if re.fullmatch(r"\d+", value):
        millis = int(value)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(
                f"--since {since!r} is not a stream id (like 1718000000000-0), unix "
                "milliseconds, an ISO-8601 time or '$'"
            ) from None
        if moment.tzinfo is None:
            raise InvalidInputError(f"--since {since!r} needs a time zone (e.g. a trailing Z)")
        millis = int(moment.timestamp() * 1000)
    # Events are read *after* the id: start just before that millisecond.
    return f"{millis - 1}-{MAX_SEQ}" if millis > 0 else "0-0"


def describe(stream_id: str, event: Event) -> Text:
    """One line for people: time, type, job, attempt and what happened."""
    line = Text()
    line.append(f"{event.at}  ", style="dim")
    line.append(f"{event.type:<14}", style=STYLES.get(event.type, ""))
    line.append(f"  {event.jobId}")
    if event.attempt is not None:
        line.append(f"  #{event.attempt}", style="dim")
    details = _details(event)
    if details:
        line.append(f"  {details}")
    line.append(f"  [{stream_id}]", style="dim")
    return line


def _details(event: Event) -> str:
    data = event.data
    if event.type == events.PROGRESS:
        return f"{data.get('progress')}% {data.get('step', '')}".strip()
    if event.type == events.COMPLETED:
        result = data.get("result") or {}
        return (
            f"{result.get('tasksCreated')} task(s) created, {len(result.get('taskIds', []))} in all"
        )
    if event.type == events.FAILED:
        error = data.get("error") or {}
        what = f"{error.get('type')}: {error.get('message')}"
        if data.get("final"):
            return f"final ({data.get('reason')}), in the DLQ: {what}"
        return f"retry at {data.get('nextRetryAt')}: {what}"
    if event.type == events.ENQUEUED:
        return f"on {data.get('queue')}" if data.get("queue") else ""
    return json.dumps(data, default=str) if data else ""


def _show_failures(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for entry in entries:
            _write_line(entry)
        return
    if not entries:
        stderr().print("no webhook delivery has been given up", highlight=False)
    console = stdout()
    for entry in entries:
        line = Text()
        line.append(f"{entry.get('failedAt')}  ", style="dim")
        line.append(f"{entry.get('type')}", style="bold red")
        line.append(f"  {entry.get('jobId')}  to {entry.get('url')}")
        line.append(f"  after {entry.get('tries')} tries: {entry.get('error')}")
        console.print(line, highlight=False)
