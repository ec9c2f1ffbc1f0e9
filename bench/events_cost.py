"""What lifecycle events (and webhooks) cost one job: Redis commands and time.

Runs N approvals and then an in-process `phase1 worker` (burst) three ways: with `emit` made a
no-op, with events on, and with events on plus one webhook receiver (a local HTTP server),
on a redis-server of its own (so `INFO commandstats` counts nobody else's commands) and a
PostgreSQL database of its own (created and dropped on DATABASE_URL's server).

    .venv/bin/python bench/events_cost.py [--jobs 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql
from redis import Redis

from phase1 import context, db, keys
from phase1.domain import plans
from phase1.jobs import approval, events
from phase1.runtime.worker import Phase1Worker
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            cwd=home,
            stdout=subprocess.DEVNULL,
        )
        try:
            client = Redis(port=port)
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if client.ping():
                        break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.contextmanager
def own_database(server_url: str) -> Iterator[str]:
    name = f"phase1_bench_{os.getpid()}"
    admin = server_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        db.migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            ))  # fmt: skip


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def commandstats(redis: Redis) -> Counter[str]:
    info: Any = redis.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


def run(settings: Settings, jobs: int, *, emit_on: bool) -> dict[str, Any]:
    ctx = context.build(settings)
    context.install_worker_context(ctx)
    real_emit, real_notify = events.emit, events.notify
    spent: list[float] = []

    def timed_emit(redis: Any, settings: Settings, event: events.Event) -> events.Event:
        started = time.perf_counter()
        try:
            return real_emit(redis, settings, event)
        finally:
            spent.append(time.perf_counter() - started)

    if emit_on:
        events.emit = timed_emit  # type: ignore[assignment]
    else:
        events.emit = lambda _redis, _settings, event: event  # type: ignore[assignment]
        events.notify = lambda _event: None  # type: ignore[assignment]
    try:
        with ctx.transaction() as conn:
            plan_ids = [plans.create_plan(conn, "bench", SAMPLE_ANALYSIS).id for _ in range(jobs)]
        admin = ctx.redis
        admin.config_resetstat()
        started = time.perf_counter()
        for plan_id in plan_ids:
            approval.approve(ctx, plan_id)
        approve_s = time.perf_counter() - started
        approve_cmds = commandstats(admin)
        admin.config_resetstat()
        queues = [ctx.queue(), ctx.queue(keys.webhook_queue(settings.queue))]
        started = time.perf_counter()
        Phase1Worker(queues, connection=ctx.redis).work(burst=True, logging_level="WARNING")
        work_s = time.perf_counter() - started
        work_cmds = commandstats(admin)
    finally:
        events.emit, events.notify = real_emit, real_notify
        ctx.close()
    return {
        "approve_ms": approve_s * 1000 / jobs,
        "work_ms": work_s * 1000 / jobs,
        "approve_cmds": approve_cmds,
        "work_cmds": work_cmds,
        "emit_ms": sum(spent) * 1000 / jobs,
    }


def per_job(counter: Counter[str], jobs: int) -> float:
    # INFO and CONFIG are the benchmark's own; the rest is phase1 and RQ.
    return sum(v for k, v in counter.items() if k not in ("info", "config|resetstat")) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database-server", default="postgresql://127.0.0.1:5432/postgres", help="PostgreSQL"
    )
    args = parser.parse_args()
    with (
        own_redis() as redis_url,
        own_database(args.database_server) as database_url,
        receiver() as hook,
    ):
        modes = {
            "events off (emit is a no-op)": ({}, False),
            "events on": ({}, True),
            "events on + 1 webhook URL": ({"webhook_urls": [hook], "webhook_secret": "s"}, True),
        }
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, (overrides, emit_on) in modes.items():
                settings = Settings(
                    redis_url=redis_url,
                    database_url=database_url,
                    queue=f"bench-{uuid.uuid4().hex[:8]}",
                    **overrides,
                )
                results[name].append(run(settings, args.jobs, emit_on=emit_on))
        client = context.redis_client(redis_url)
        for label, overrides in (("", {}), (" with 1 webhook URL", {"webhook_urls": [hook]})):
            settings = Settings(
                redis_url=redis_url, database_url=database_url, queue="bench-emit",
                webhook_secret="s", **overrides,
            )  # fmt: skip
            client.config_resetstat()
            started = time.perf_counter()
            for n in range(2000):
                events.emit(client, settings, events.make(events.COMPLETED, f"j{n}", "p", 1))
            emit_us = (time.perf_counter() - started) * 1e6 / 2000
            cmds = per_job(commandstats(client), 2000)
            print(f"one emit(){label}: {emit_us:.0f} µs, {cmds:.1f} Redis commands")
        client.close()
        base = results["events off (emit is a no-op)"][-1]
        print(f"{args.jobs} jobs x {args.rounds} rounds; medians per job")
        for name, runs in results.items():
            last = runs[-1]
            approve_cmds = per_job(last["approve_cmds"], args.jobs)
            work_cmds = per_job(last["work_cmds"], args.jobs)
            approve_ms = statistics.median(r["approve_ms"] for r in runs)
            work_ms = statistics.median(r["work_ms"] for r in runs)
            emit_ms = statistics.median(r["emit_ms"] for r in runs)
            print(
                f"{name:32} approve {approve_cmds:6.1f} cmds {approve_ms:6.2f} ms | "
                f"worker {work_cmds:6.1f} cmds {work_ms:6.2f} ms | inside emit {emit_ms:.2f} ms"
            )
            delta = (last["approve_cmds"] + last["work_cmds"]) - (
                base["approve_cmds"] + base["work_cmds"]
            )
            shown = {k: round(v / args.jobs, 2) for k, v in sorted(delta.items()) if v > 0}
            print(f"{'':32} more than events off, per job: {shown}")


if __name__ == "__main__":
    main()
