"""`phase1 info`: the queue at a glance, once or refreshed in place."""

from __future__ import annotations

import time
from collections.abc import Callable

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from phase1.cli.common import (
    EXIT_FAILURE,
    duration,
    fancy,
    iso,
    json_option,
    note,
    one_line,
    plain_columns,
    print_json,
    print_json_line,
    state,
    stdout,
    table,
)
from phase1.errors import UnavailableError
from phase1.runtime import monitor
from phase1.runtime.monitor import Snapshot

INFO_SHAPE = (
    '{"queue", "redis", "redisPrimary", "at", "queued", "paused", "pausedQueues", '
    '"scheduled": {"count", "nextAt"}, '
    '"active": [{"jobId", "planId", "attempt", "maxAttempts", "progress", "worker", '
    '"startedAt", "ageSeconds"}], "dlq": {"size", "oldest": {"jobId", "planId", "reason", '
    '"failedAt", "error"}|null}, "workers": [{"name", "hostname", "pid", "state", "queues", '
    '"jobId", "birth", "lastHeartbeat", "successfulJobs", "failedJobs"}], "scheduler": '
    '{"running", "name", "hostname", "pid"}, "lastHour": {"completed", "failed", '
    '"failedAttempts"}, "webhooksQueued", "redisSettings": {"maxmemoryPolicy", "appendonly"}, '
    '"warnings": [...]}; with --watch one such document '
    "per line per refresh."
)


def info(
    ctx: typer.Context,
    as_json: bool = json_option(INFO_SHAPE),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Refresh in place until Ctrl-C (or --count refreshes)."
    ),
    interval: float = typer.Option(
        2.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."
    ),
    count: int = typer.Option(
        0, "--count", min=0, help="With --watch, stop after this many refreshes (0: never)."
    ),
) -> None:
    """Show the queue: depth, scheduled retries, active jobs, DLQ, workers, scheduler, last hour.

    Counts come from Redis (RQ's queue, registries, workers and scheduler lock, phase1's DLQ);
    the last hour's outcomes from PostgreSQL. Warnings say what needs an operator.

    Example: phase1 info --watch
    """
    phase1 = state(ctx).connect()
    if not watch:
        snap = monitor.snapshot(phase1)
        if as_json:
            print_json(snap.model_dump(mode="json"))
        else:
            show(snap)
        return
    if not _watch(
        lambda: monitor.snapshot(phase1), interval=interval, count=count, as_json=as_json
    ):
        raise typer.Exit(EXIT_FAILURE)


def _watch(read: Callable[[], Snapshot], *, interval: float, count: int, as_json: bool) -> bool:
    """Refresh until Ctrl-C or `count` refreshes; True when the last refresh succeeded."""
    console = stdout()
    live = fancy(console) and not as_json
    done, ok = 0, True
    display = Live(console=console, auto_refresh=False, transient=False) if live else None
    try:
        if display is not None:
            display.start()
        while True:
            try:
                snap, ok = read(), True
            except UnavailableError as exc:
                snap, ok = None, False
                error = str(exc)
            if display is not None:
                body = render(snap) if snap else Text(f"error: {error}", style="bold red")
                footer = Text(f"refreshing every {interval:g}s · Ctrl-C to stop", style="dim")
                display.update(Group(body, footer), refresh=True)
            elif snap is None:
                note(f"error: {error}")
            elif as_json:
                print_json_line(snap.model_dump(mode="json"))
            else:
                console.file.write(plain(snap) + "\n\n")
                console.file.flush()
            done += 1
            if count and done >= count:
                return ok
            time.sleep(interval)
    except KeyboardInterrupt:
        return ok
    finally:
        if display is not None:
            display.stop()


def show(snap: Snapshot) -> None:
    console = stdout()
    if fancy(console):
        console.print(render(snap))
    else:
        console.file.write(plain(snap) + "\n")
        console.file.flush()


def _summary(snap: Snapshot) -> list[tuple[str, str]]:
    next_in = ""
    if snap.scheduled.nextAt is not None:
        next_in = f"  (next in {duration((snap.scheduled.nextAt - snap.at).total_seconds())})"
    oldest = ""
    if snap.dlq.oldest is not None:
        o = snap.dlq.oldest
        age = duration((snap.at - o.failedAt).total_seconds()) if o.failedAt else "?"
        oldest = f"  (oldest {o.jobId}, {age} ago, {o.reason}: {one_line(o.error, 100)})"
    scheduler = "none running"
    if snap.scheduler.running:
        scheduler = f"running ({snap.scheduler.hostname or '?'} pid {snap.scheduler.pid or '?'})"
    h = snap.lastHour
    return [
        ("queued", f"{snap.queued}" + ("  (PAUSED: workers take none)" if snap.paused else "")),
        ("scheduled retries", f"{snap.scheduled.count}{next_in}"),
        ("active", f"{len(snap.active)}"),
        ("dead-letter queue", f"{snap.dlq.size}{oldest}"),
        ("workers", f"{len(snap.workers)}"),
        ("scheduler", scheduler),
        (
            "last hour",
            f"{h.completed} completed, {h.failed} failed, {h.failedAttempts} failed attempts",
        ),
        ("webhooks queued", f"{snap.webhooksQueued}"),
        ("redis", _redis_line(snap.redisSettings)),
    ]


def _redis_line(config: monitor.RedisSettings) -> str:
    policy = config.maxmemoryPolicy or "unknown"
    aof = {True: "AOF on", False: "AOF off", None: "AOF unknown"}[config.appendonly]
    return f"maxmemory-policy {policy}, {aof}"


WORKER_COLUMNS = ("worker", "host", "pid", "state", "job", "heartbeat", "done", "failed")
ACTIVE_COLUMNS = ("job", "plan", "attempt", "progress", "worker", "running for")


def _worker_rows(snap: Snapshot) -> list[list[str | int | None]]:
    return [
        [
            w.name,
            w.hostname,
            w.pid,
            w.state,
            w.jobId,
            f"{duration((snap.at - w.lastHeartbeat).total_seconds())} ago"
            if w.lastHeartbeat
            else None,
            w.successfulJobs,
            w.failedJobs,
        ]
        for w in snap.workers
    ]


def _active_rows(snap: Snapshot) -> list[list[str | int | None]]:
    return [
        [
            a.jobId,
            a.planId,
            f"{a.attempt}/{a.maxAttempts}" if a.attempt else None,
            f"{a.progress}%" if a.progress is not None else None,
            a.worker,
            duration(a.ageSeconds),
        ]
        for a in snap.active
    ]


def _on(snap: Snapshot) -> str:
    """Where the snapshot was read: the URL, and the primary when Sentinel names it."""
    if snap.redisPrimary and snap.redis.startswith(("redis+sentinel", "rediss+sentinel")):
        return f"{snap.redis} (primary {snap.redisPrimary})"
    return snap.redis


def render(snap: Snapshot) -> RenderableType:
    """The snapshot for a terminal."""
    head = Text.assemble(
        (snap.queue, "bold"), f"  on {_on(snap)}  at {iso(snap.at)}", style="default"
    )
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in _summary(snap):
        grid.add_row(label, value)
    parts: list[RenderableType] = [head, Text(), grid]
    if snap.workers:
        parts += [
            Text(),
            table(WORKER_COLUMNS, _worker_rows(snap), title="Workers", keep=["worker"]),
        ]
    if snap.active:
        parts += [
            Text(),
            table(ACTIVE_COLUMNS, _active_rows(snap), title="Active jobs", keep=["job"]),
        ]
    if snap.warnings:
        parts.append(Text())
    for warning in snap.warnings:
        parts.append(Text(f"! {warning}", style="bold yellow"))
    return Group(*parts)


def plain(snap: Snapshot) -> str:
    """The snapshot as plain text, for pipes and logs."""
    blocks = [
        f"{snap.queue} on {_on(snap)} at {iso(snap.at)}",
        plain_columns([(f"{label}:", value) for label, value in _summary(snap)]),
    ]
    if snap.workers:
        header = [c.upper() for c in WORKER_COLUMNS]
        blocks.append("Workers\n" + plain_columns(_worker_rows(snap), header))
    if snap.active:
        header = [c.upper() for c in ACTIVE_COLUMNS]
        blocks.append("Active jobs\n" + plain_columns(_active_rows(snap), header))
    blocks.extend(f"warning: {w}" for w in snap.warnings)
    return "\n\n".join(blocks)
