"""Start-up checks: set-ups that would lose or strand jobs silently get one WARNING line."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from rq import Queue
from support import RQ, Processes, wait_until

from faults.faultkit import OwnRedis, start_worker
from phase1.context import build
from phase1.runtime import startup_checks
from phase1.settings import Settings

OwnRedisFactory = Callable[..., OwnRedis]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("allkeys-lru", "queued jobs included"),
        ("volatile-ttl", "keys with a TTL"),
        ("noeviction", None),
    ],
)
def test_eviction_policy(
    own_redis: OwnRedisFactory,
    make_settings: Callable[..., Settings],
    policy: str,
    expected: str | None,
) -> None:
    server = own_redis(extra=("--maxmemory", "64mb", "--maxmemory-policy", policy))
    ctx = build(make_settings(redis_url=server.url))
    problem = startup_checks.eviction_policy(ctx)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem and policy in problem
    ctx.close()


def test_no_limit_means_no_eviction(
    own_redis: OwnRedisFactory, make_settings: Callable[..., Settings]
) -> None:
    server = own_redis(extra=("--maxmemory-policy", "allkeys-lru"))  # maxmemory 0: never full
    ctx = build(make_settings(redis_url=server.url))
    assert startup_checks.eviction_policy(ctx) is None
    ctx.close()


def test_worker_warns_at_start(
    own_redis: OwnRedisFactory, make_settings: Callable[..., Settings], processes: Processes
) -> None:
    server = own_redis(extra=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
    settings = make_settings(redis_url=server.url)
    start_worker(processes, settings)
    wait_until(lambda: "Listening on" in processes.log(0), timeout=30, what="worker started")
    warnings = [line for line in processes.log(0).splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "maxmemory-policy is allkeys-lru" in warnings[0]


def test_scheduler_missing_until_a_worker_runs(
    make_settings: Callable[..., Settings], processes: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = build(make_settings())
    with caplog.at_level(logging.WARNING, logger="phase1.runtime.startup_checks"):
        problems = startup_checks.run_startup_checks(ctx)
    assert len(problems) == 1 and "no RQ scheduler is running" in problems[0]
    assert [r.getMessage() for r in caplog.records] == problems
    assert startup_checks.run_startup_checks(ctx, expect_scheduler=False) == []
    start_worker(processes, ctx.settings)
    wait_until(lambda: startup_checks.scheduler_missing(ctx) is None, timeout=30, what="scheduler")
    ctx.close()


def test_pickle_on_the_queue_is_noticed(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    ctx = build(make_settings())
    assert startup_checks.serializer_mismatch(ctx) is None
    # A producer with RQ's default (pickle) serializer, then a plain worker without --serializer.
    pickled = Queue(ctx.settings.queue, connection=ctx.redis)
    pickled.enqueue("os.getpid")
    problem = startup_checks.serializer_mismatch(ctx)
    assert problem is not None and "enqueued with the pickle serializer" in problem
    processes.start(
        [RQ, "worker", ctx.settings.queue, "--burst", "--url", ctx.redis_url], ctx.settings
    )
    # Waits for the result, not for the worker's exit: plain RQ's teardown can wait out its
    # command listener's 60 s poll first.

    def noticed() -> str | None:
        problem = startup_checks.serializer_mismatch(ctx)
        return (
            problem if problem and "stores results with the pickle serializer" in problem else None
        )

    wait_until(noticed, timeout=60, what="the pickled result to be noticed")
    ctx.close()
