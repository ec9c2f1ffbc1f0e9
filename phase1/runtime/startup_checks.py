"""Start-up checks: set-ups that lose or strand jobs without an error anywhere.

Each problem is logged as one WARNING line (and returned); nothing here stops the program, and a
check that cannot run (Redis down, CONFIG disabled on a managed Redis) is skipped quietly.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.results import Result
from rq.scheduler import RQScheduler

from phase1.context import Phase1

log = logging.getLogger(__name__)

SAMPLE = 10  # jobs looked at per place when guessing serializers
PICKLE_MARK = b"\x80"  # every pickle of protocol 2 or later starts with PROTO


def scheduler_missing(ctx: Phase1) -> str | None:
    """Interval retries wait in RQ's scheduled registry until a scheduler moves them."""
    queue = ctx.settings.queue
    if ctx.redis.exists(RQScheduler.get_locking_key(queue)):
        return None
    return (
        f"no RQ scheduler is running for queue {queue}: retries will wait until one does "
        "(run `phase1 worker`, or `rq worker --with-scheduler`)"
    )


def eviction_policy(ctx: Phase1) -> str | None:
    """A Redis that evicts keys when full can silently drop queued jobs or their state."""
    try:
        config = ctx.redis.config_get("maxmemory*")
    except RedisError:
        return None  # CONFIG is often disabled on managed Redis; nothing to say then
    policy = str(config.get("maxmemory-policy", "noeviction"))
    limit = int(config.get("maxmemory", 0) or 0)
    if policy == "noeviction" or limit == 0:
        return None
    if policy.startswith("allkeys"):
        what = "any key, queued jobs included,"
    else:
        what = "keys with a TTL (job results, worker heartbeats, scheduler locks)"
    return (
        f"Redis maxmemory-policy is {policy} with maxmemory {limit}: when full it evicts {what} "
        "without an error; set maxmemory-policy noeviction for job queues"
    )


def _is_pickle(raw: bytes | None, *, compressed: bool) -> bool:
    if not raw:
        return False
    try:
        data = zlib.decompress(raw) if compressed else raw
    except zlib.error:
        data = raw
    return data.startswith(PICKLE_MARK)


def serializer_mismatch(ctx: Phase1) -> str | None:
    """phase1 uses JSON; a producer or worker on pickle leaves traces: pickled job data on the
    queue, or pickled results of jobs a worker finished."""
    queue = ctx.queue()
    redis: Redis = ctx.redis
    for job_id in queue.get_job_ids(0, SAMPLE - 1):
        data: Any = redis.hget(Job.key_for(job_id), "data")
        if _is_pickle(data, compressed=True):
            return (
                f"job {job_id} on queue {queue.name} was enqueued with the pickle serializer; "
                "phase1 workers read JSON only (use rq.serializers.JSONSerializer)"
            )
    for job_id in queue.finished_job_registry.get_job_ids(0, SAMPLE - 1):
        latest: Any = redis.xrevrange(Result.get_key(job_id), count=1)  # type: ignore[no-untyped-call]
        if not latest:
            continue
        fields = latest[0][1] or {}
        value = fields.get(b"return_value") or fields.get("return_value")
        if value and _is_pickle(base64.b64decode(value), compressed=False):
            return (
                f"a worker on queue {queue.name} stores results with the pickle serializer "
                f"(job {job_id}); run it with --serializer rq.serializers.JSONSerializer"
            )
    return None


Check = Callable[[Phase1], str | None]


def run_startup_checks(ctx: Phase1, *, expect_scheduler: bool = True) -> list[str]:
    """Run the checks, log each problem as one WARNING line, and return the problems.

    `expect_scheduler=False` for a worker, which runs a scheduler of its own.
    """
    checks: list[Check] = [eviction_policy, serializer_mismatch]
    if expect_scheduler:
        checks.insert(0, scheduler_missing)
    problems: list[str] = []
    for check in checks:
        try:
            problem = check(ctx)
        except RedisError as exc:
            log.debug("start-up check %s skipped: %s", check.__name__, exc)
            continue
        if problem:
            log.warning("%s", problem)
            problems.append(problem)
    return problems
