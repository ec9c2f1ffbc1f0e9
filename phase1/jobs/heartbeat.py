"""Heartbeats of running Phase 1 jobs: the sign of life the orphan sweep reads.

The process that runs the job beats, not the worker around it: a forking worker's horse that
outlives its parent still beats, and a job run by plain `rq worker` beats too. A job whose
beats stop for PHASE1_ORPHAN_AFTER seconds while RQ still says `started` is an orphan.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import get_current_job

from phase1 import context, keys
from phase1.engine import success_writes
from phase1.engine.timer import timer
from phase1.settings import Settings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def beat_interval(settings: Settings) -> float:
    """Seconds between beats: several per `orphan_after`, so one late beat is no death."""
    return max(0.1, settings.orphan_after / 4)


def beat(redis: Redis | Pipeline, queue: str, job_id: str) -> None:
    """Record that `job_id` is alive now (the score is unix seconds)."""
    redis.zadd(keys.heartbeats(queue), {job_id: time.time()})


def _beat_quietly(redis: Redis, queue: str, job_id: str) -> None:
    try:
        beat(redis, queue, job_id)
    except RedisError as exc:
        log.warning("could not record a heartbeat for job %s: %s", job_id, exc)


@contextlib.contextmanager
def beating(redis: Redis, queue: str, job_id: str, interval: float) -> Iterator[None]:
    """Beat for `job_id` from the process's timer thread while the block runs.

    The first beat comes after `interval`: until then the execution RQ created when it
    started the job (its `created_at`) is the sign of life the sweep reads.
    The last beat is stamped on the way out and left in place: RQ still has to record the
    outcome, and the sweep must not take that moment for a death. The sweep prunes it later.
    """
    beats = timer.call_every(interval, functools.partial(_beat_quietly, redis, queue, job_id))
    try:
        yield
    finally:
        beats.cancel()
        # The last beat goes with the worker's success bookkeeping when it can.
        if not success_writes.after_success(lambda pipe: beat(pipe, queue, job_id)):
            _beat_quietly(redis, queue, job_id)


_FORGET_EVERY_S = 30.0
_forgotten_at: dict[str, float] = {}


def _forget_ancient(redis: Redis, queue: str, settings: Settings) -> None:
    """Drop beats far older than any live job's: each job leaves its last beat behind, and
    with no phase1 worker sweeping (plain `rq worker` only) nothing else would remove them.
    The sweep does not need them: a dead job's own RQ timestamps are as old."""
    cutoff = time.time() - max(3600.0, 10 * settings.orphan_after)
    try:
        redis.zremrangebyscore(keys.heartbeats(queue), "-inf", cutoff)
    except RedisError as exc:
        log.warning("could not prune old heartbeats: %s", exc)


def _forget_ancient_now_and_then(redis: Redis, queue: str, settings: Settings) -> None:
    """_forget_ancient at most every _FORGET_EVERY_S per queue and process, not per job."""
    now = time.monotonic()
    if now - _forgotten_at.get(queue, float("-inf")) >= _FORGET_EVERY_S:
        _forgotten_at[queue] = now
        _forget_ancient(redis, queue, settings)


def heartbeating(func: F) -> F:
    """Make a job function beat while it runs inside an RQ worker (no-op outside one)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        job = get_current_job()
        if job is None:
            return func(*args, **kwargs)
        ctx = context.for_worker_process()
        queue = job.origin or ctx.settings.queue
        _forget_ancient_now_and_then(ctx.redis, queue, ctx.settings)
        with beating(ctx.redis, queue, job.id, beat_interval(ctx.settings)):
            return func(*args, **kwargs)

    return cast(F, wrapper)
