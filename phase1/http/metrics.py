"""Prometheus metrics of one app, on a registry of its own.

Queue depth and DLQ size are read from Redis, job counts and durations from PostgreSQL (the
system of record), at scrape time: every process that scrapes sees the same numbers. HTTP
request durations are this process's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from phase1 import keys
from phase1.context import Phase1
from phase1.errors import Phase1Error
from phase1.schemas import JobStatus

log = logging.getLogger(__name__)

HTTP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
STATUSES: tuple[JobStatus, ...] = ("pending", "active", "retrying", "completed", "failed")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

SQL_JOBS_BY_STATUS = """
SELECT status, count(*) AS n FROM marketplace_job_executions WHERE queue = %(queue)s
GROUP BY status
"""
# One pass over the finished jobs: count, sum and the cumulative count under each bucket.
SQL_JOB_DURATIONS = (
    "SELECT status, count(*) AS n, COALESCE(sum(d), 0) AS total, "
    + ", ".join(f"count(*) FILTER (WHERE d <= {le!r}) AS b{i}" for i, le in enumerate(JOB_BUCKETS))
    + """
FROM (
  SELECT status, EXTRACT(EPOCH FROM completed_at - created_at)::float8 AS d
  FROM marketplace_job_executions
  WHERE queue = %(queue)s AND status IN ('completed', 'failed') AND completed_at IS NOT NULL
) finished
GROUP BY status
"""
)


class StateCollector(Collector):
    """Reads the queue's state from Redis and PostgreSQL when Prometheus scrapes."""

    def __init__(self, ctx: Phase1) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "phase1_dependency_up",
            "Whether the dependency answered this scrape (1) or not (0).",
            labels=["dependency"],
        )
        redis_ok = True
        try:
            yield from self._redis_metrics()
        except RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            redis_ok = False
        pg_ok = True
        try:
            yield from self._postgres_metrics()
        except (Phase1Error, psycopg.Error) as exc:
            log.warning("metrics: PostgreSQL unavailable: %s", exc)
            pg_ok = False
        up.add_metric(["redis"], 1.0 if redis_ok else 0.0)
        up.add_metric(["postgres"], 1.0 if pg_ok else 0.0)
        yield up

    def _redis_metrics(self) -> Iterator[Metric]:
        queue = self.ctx.settings.queue
        names = [queue, keys.webhook_queue(queue)]
        with self.ctx.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(self.ctx.queue(name).key)
            pipe.zcard(self.ctx.queue().scheduled_job_registry.key)
            pipe.zcard(keys.dlq_index(queue))
            *depths, scheduled, dlq = pipe.execute()
        depth = GaugeMetricFamily(
            "phase1_queue_depth", "Jobs waiting on the RQ queue.", labels=["queue"]
        )
        for name, value in zip(names, depths, strict=True):
            depth.add_metric([name], float(value))
        yield depth
        waiting = GaugeMetricFamily(
            "phase1_scheduled_jobs",
            "Jobs waiting for their retry time in RQ's scheduled registry.",
            labels=["queue"],
        )
        waiting.add_metric([queue], float(scheduled))
        yield waiting
        size = GaugeMetricFamily(
            "phase1_dlq_size", "Jobs in the dead-letter queue.", labels=["queue"]
        )
        size.add_metric([queue], float(dlq))
        yield size

    def _postgres_metrics(self) -> Iterator[Metric]:
        queue = self.ctx.settings.queue
        with self.ctx.transaction() as conn:
            rows = conn.execute(SQL_JOBS_BY_STATUS, {"queue": queue}).fetchall()
            durations = conn.execute(SQL_JOB_DURATIONS, {"queue": queue}).fetchall()
        counts = {row["status"]: row["n"] for row in rows}
        by_status = GaugeMetricFamily(
            "phase1_jobs",
            "Jobs by state, from the audit table (completed and failed are final).",
            labels=["queue", "status"],
        )
        for status in STATUSES:
            by_status.add_metric([queue, status], float(counts.get(status, 0)))
        yield by_status
        histogram = HistogramMetricFamily(
            "phase1_job_duration_seconds",
            "Seconds from enqueue to the final state, of finished jobs.",
            labels=["queue", "status"],
        )
        for row in durations:
            buckets = [(repr(le), float(row[f"b{i}"])) for i, le in enumerate(JOB_BUCKETS)]
            buckets.append(("+Inf", float(row["n"])))
            histogram.add_metric([queue, row["status"]], buckets, float(row["total"]))
        yield histogram


class Metrics:
    """The app's registry: HTTP request durations observed in-process, state at scrape time."""

    def __init__(self, ctx: Phase1) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # no scrape at start-up
        self.requests = Histogram(
            "phase1_http_request_duration_seconds",
            "Seconds spent answering HTTP requests, by method, route and status.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(StateCollector(ctx))

    def observe(self, method: str, route: str, status: str, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, status).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
