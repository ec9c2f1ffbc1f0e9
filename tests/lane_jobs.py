"""Job functions for the lane's tests (importable by in-process workers as `lane_jobs.*`)."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.job import Job, get_current_job

from phase1.engine.scripts import STEP


def noop() -> None:
    """The cheapest job there is: what the engine's tests drain."""


def answer(value: int) -> dict[str, int]:
    return {"answer": value}


def fail() -> None:
    raise RuntimeError("a failure the lane's tests expect")


def remember(job: Job, connection: Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    """A success callback: leaves a mark the test reads."""
    connection.set(f"lane-test:called:{job.id}", repr(result), ex=600)


def slow(seconds: float) -> None:
    time.sleep(seconds)


def tally(seconds: float = 0.0) -> None:
    """Counts its runs (`lane-test:runs:<job id>`), then sleeps `seconds`."""
    job = get_current_job()
    assert job is not None
    job.connection.incr(f"lane-test:runs:{job.id}")
    job.connection.expire(f"lane-test:runs:{job.id}", 600)
    time.sleep(seconds)


def _refusals(connection: Redis, error: str) -> int:
    return int(connection.info("errorstats").get(f"errorstat_{error}", {}).get("count", 0))


def script_fault(action: str) -> None:
    """A quick job that, when asked, empties Redis's script cache (as a restart or a failover
    would) once its own start is written, or loads the lane's STEP again once Redis has
    refused a script (as another worker recovering from the same flush would); or fills
    Redis's memory (`full`: its maxmemory set to 1 byte once its own start is written, so the
    STEP sent at its end is refused, out of memory) and makes room again once Redis has
    refused a write (`room`); or, once its own start is written, cuts every other client's
    connection to Redis, the worker's STEP connection among them (`cut`)."""
    job = get_current_job()
    assert job is not None
    connection = job.connection
    deadline = time.monotonic() + 5
    if action in ("flush", "full", "cut"):
        while connection.hget(job.key, "status") != b"started" and time.monotonic() < deadline:
            time.sleep(0.001)
        if action == "flush":
            connection.script_flush()
        elif action == "full":
            connection.config_set("maxmemory", "1")
        else:
            connection.client_kill_filter(_type="normal", skipme=True)
    elif action == "room":
        while not _refusals(connection, "OOM") and time.monotonic() < deadline:
            time.sleep(0.001)
        connection.config_set("maxmemory", "0")
    elif action == "load":
        while time.monotonic() < deadline:
            if _refusals(connection, "NOSCRIPT"):
                break
            time.sleep(0.001)
        connection.script_load(STEP)
