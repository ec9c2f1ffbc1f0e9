"""A worker process as `phase1 worker` runs it: the queues, the worker class, the periodic
maintenance (the reconciler) and the orphan sweep beside its work loop."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

from phase1 import appname, keys
from phase1.context import Phase1, install_worker_context, redis_client
from phase1.errors import UnavailableError
from phase1.runtime import reconcile, sweep
from phase1.runtime.maintenance import Maintenance
from phase1.runtime.startup_checks import run_startup_checks
from phase1.runtime.worker import Phase1ForkingWorker, Phase1Worker, _Phase1Base
from phase1.settings import redact_url


def queue_names(ctx: Phase1) -> list[str]:
    return [ctx.settings.queue, keys.webhook_queue(ctx.settings.queue)]


def build_worker(ctx: Phase1, *, fork: bool = False, name: str | None = None) -> _Phase1Base:
    """A phase1 worker on the job and webhook queues, on a Redis connection of its own (RQ
    raises that connection's socket timeout for its blocking dequeue)."""
    worker_class: type[_Phase1Base] = Phase1ForkingWorker if fork else Phase1Worker
    connection: Redis = redis_client(ctx.redis_url)
    return worker_class(
        queue_names(ctx),
        connection=connection,
        name=name,
        shutdown_timeout=ctx.settings.shutdown_timeout,
        # RQ's own maintenance (abandoned jobs, a dead scheduler restarted) at least every 15 s.
        maintenance_interval=int(max(1, min(ctx.settings.reconcile_interval, 15))),
    )


def maintenance_tasks(ctx: Phase1) -> Maintenance:
    """The periodic tasks every `phase1 worker` runs beside its work loop."""
    maintenance = Maintenance()
    maintenance.add(
        "reconcile", ctx.settings.reconcile_interval, lambda: reconcile.run_periodically(ctx)
    )
    return maintenance


def run(
    ctx: Phase1,
    *,
    burst: bool = False,
    fork: bool = False,
    name: str | None = None,
    checks: bool = True,
) -> bool:
    """Run one worker in this process until stopped (or, with `burst`, until queues drain)."""
    install_worker_context(ctx)
    appname.set_role("worker")
    try:
        if checks:
            run_startup_checks(ctx, expect_scheduler=False)
        worker = build_worker(ctx, fork=fork, name=name)
    except RedisError as exc:
        raise UnavailableError(
            f"Redis at {redact_url(ctx.redis_url)} is unavailable: {exc} (set REDIS_URL)"
        ) from exc
    maintenance = maintenance_tasks(ctx)
    maintenance.start()
    sweeper = sweep.start(ctx)  # orphaned jobs of dead workers, found in seconds
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        sweeper.stop()
        maintenance.stop()
