"""Job functions for the lane's tests (importable by in-process workers as `lane_jobs.*`)."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.job import Job


def answer(value: int) -> dict[str, int]:
    return {"answer": value}


def fail() -> None:
    raise RuntimeError("a failure the lane's tests expect")


def remember(job: Job, connection: Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    """A success callback: leaves a mark the test reads."""
    connection.set(f"lane-test:called:{job.id}", repr(result), ex=600)


def slow(seconds: float) -> None:
    time.sleep(seconds)
