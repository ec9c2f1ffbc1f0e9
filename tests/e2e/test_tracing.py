"""One trace from the HTTP click to the tasks (issue 24): the real `phase1 serve`, a real
`phase1 worker` and a plain `rq worker` export OTLP over HTTP to a collector of the test's own,
which decodes the spans; the webhook receiver sees the trace's `traceparent`; JSON log lines
of the server and the worker join on the trace id."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import make_plan, start_server, task_count
from otel_collector import Collector, HeaderReceiver, Span, tree
from support import PHASE1, RQ, Processes, inject_fault, wait_until

from phase1.context import Phase1
from phase1.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[HeaderReceiver]:
    receiver = HeaderReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


def otel_env(collector: Collector, service: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "PHASE1_LOG_FORMAT": "json",
    }


def caller_traceparent() -> tuple[str, str, str]:
    """A W3C traceparent as the web app's own instrumentation would send it."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, tree(spans))
    return found[0]


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_one_trace_from_the_request_to_the_tasks_with_a_retry_and_the_webhook(
    processes: Processes,
    make_settings,  # type: ignore[no-untyped-def]
    ctx: Phase1,
    collector: Collector,
    webhook_receiver: HeaderReceiver,
    tmp_path: Path,
) -> None:
    settings: Settings = make_settings(
        max_retries=2,
        retry_intervals=[1.0],
        webhook_urls=[webhook_receiver.start()],
        webhook_secret="whsec-tracing",
        webhook_events=["job:completed"],
    )
    api = start_server(processes, settings, env=otel_env(collector, "phase1-serve"))
    processes.start([PHASE1, "worker"], settings, env=otel_env(collector, "phase1-worker"))
    plan_id = make_plan(ctx)
    inject_fault(settings.database_url or "", plan_id, fail_times=1)
    traceparent, trace_id, caller_span = caller_traceparent()

    answer = api.approve(plan_id, headers={"traceparent": traceparent})
    assert answer.status == 202, answer.body
    job_id = answer.json["jobId"]
    assert answer.header("traceparent") is None  # phase1 only continues the caller's trace
    wait_until(lambda: task_count(settings.database_url or "", plan_id) > 0, 60, what="tasks")
    wait_until(lambda: webhook_receiver.headers, 60, what="the webhook")
    wait_until(lambda: collector.named(trace_id, "POST"), 30, what="the webhook's span")
    spans = collector.trace(trace_id)
    shape = tree(spans)

    # The request continues the caller's trace; the transaction and the enqueue are children.
    server = one(spans, "PATCH /api/marketplace/analysis/{plan_id}")
    assert server.kind == "server" and server.parent_id == caller_span, shape
    assert server.service == "phase1-serve"
    assert server.attributes["http.request.method"] == "PATCH"
    assert server.attributes["http.route"] == "/api/marketplace/analysis/{plan_id}"
    assert server.attributes["http.response.status_code"] == 202
    approve = one(spans, "phase1.approve")
    assert approve.parent_id == server.span_id, shape
    transaction = one(spans, "approve plan")
    assert transaction.kind == "client" and transaction.parent_id == approve.span_id, shape
    assert transaction.attributes["db.system.name"] == "postgresql"
    send = one(spans, f"send {settings.queue}")
    assert send.kind == "producer" and send.parent_id == approve.span_id, shape
    assert send.attributes["messaging.message.id"] == job_id
    assert send.start_ns >= transaction.end_ns  # the outbox: enqueued after the commit

    # Two attempts, each a consumer span child of the enqueue, in the worker's process.
    attempts = collector.named(trace_id, f"process {settings.queue}")
    assert len(attempts) == 2, shape
    first, second = attempts
    for n, attempt in enumerate(attempts, 1):
        assert attempt.kind == "consumer" and attempt.parent_id == send.span_id, shape
        assert attempt.service == "phase1-worker"
        assert attempt.attributes["phase1.attempt"] == n
        assert attempt.attributes["messaging.destination.name"] == settings.queue
        assert attempt.attributes["messaging.message.id"] == job_id
        assert attempt.attributes["phase1.plan_id"] == str(plan_id)
    assert first.error and "exception" in first.events and "retry scheduled" in first.events
    assert first.attributes["phase1.failure.reason"] == "exception"
    assert first.attributes["phase1.retry.delay_s"] == 1.0
    assert not second.error
    # The retry wait shows as the gap between the attempts (the scheduler's own precision
    # is about a second, so only a clear part of the 1 s interval is asserted).
    assert second.start_ns - first.end_ns >= 0.5e9, shape
    creates = [s for s in spans if s.name == "create tasks"]
    assert {s.parent_id for s in creates} == {first.span_id, second.span_id}, shape

    # The webhook: a client span in the trace, and the receiver got its traceparent.
    post = one(spans, "POST")
    assert post.kind == "client" and post.parent_id == second.span_id, shape
    assert post.attributes["http.response.status_code"] == 200
    header = webhook_receiver.headers[0]["traceparent"]
    assert header.split("-")[1:3] == [trace_id, post.span_id]

    # Metrics go the same way (worker side).
    wait_until(lambda: "phase1.jobs.finished" in collector.metric_names, 30, what="metrics")
    assert "messaging.process.duration" in collector.metric_names

    # JSON logs: the server's and the worker's lines of this approval share the trace id.
    server_lines = [x for x in json_lines(tmp_path / "proc-0.log") if x.get("trace_id")]
    worker_lines = [x for x in json_lines(tmp_path / "proc-1.log") if x.get("trace_id")]
    assert any(x["trace_id"] == trace_id for x in server_lines), server_lines
    ours = [x for x in worker_lines if x["trace_id"] == trace_id]
    assert ours, worker_lines
    assert {"ts", "level", "logger", "message", "job_id", "plan_id", "span_id"} <= set(ours[0])
    assert {x["attempt"] for x in ours if "attempt" in x} >= {1, 2}
    print(shape)


def test_a_plain_rq_worker_continues_the_trace(
    processes: Processes,
    settings: Settings,
    ctx: Phase1,
    collector: Collector,
) -> None:
    api = start_server(processes, settings, env=otel_env(collector, "phase1-serve"))
    traceparent, trace_id, _ = caller_traceparent()
    plan_id = make_plan(ctx)
    answer = api.approve(plan_id, headers={"traceparent": traceparent})
    assert answer.status == 202, answer.body
    processes.start(
        [
            RQ,
            "worker",
            settings.queue,
            "--burst",
            "--serializer",
            "rq.serializers.JSONSerializer",
            "--url",
            settings.redis_url or "",
        ],
        settings,
        env=otel_env(collector, "rq-worker"),
    )
    # The tasks, not the worker's exit: plain RQ's teardown can wait out its command
    # listener's 60 s poll first.
    wait_until(lambda: task_count(settings.database_url or "", plan_id) > 0, 60, what="tasks")
    # A forking rq worker's work horse exports before it leaves.
    wait_until(
        lambda: collector.named(trace_id, f"process {settings.queue}"), 30, what="the attempt"
    )
    spans = collector.trace(trace_id)
    send = one(spans, f"send {settings.queue}")
    attempt = one(spans, f"process {settings.queue}")
    assert attempt.parent_id == send.span_id, tree(spans)
    assert attempt.attributes["phase1.attempt"] == 1
    assert one(spans, "create tasks").parent_id == attempt.span_id


def test_dead_lettering_is_a_span_and_a_requeued_job_links_to_the_original_trace(
    processes: Processes,
    make_settings,  # type: ignore[no-untyped-def]
    ctx: Phase1,
    collector: Collector,
) -> None:
    settings: Settings = make_settings(max_retries=0)
    env = otel_env(collector, "phase1-worker")
    api = start_server(processes, settings, env=otel_env(collector, "phase1-serve"))
    processes.start([PHASE1, "worker"], settings, env=env)
    plan_id = make_plan(ctx)
    inject_fault(settings.database_url or "", plan_id, fail_times=1)
    traceparent, trace_id, _ = caller_traceparent()
    job_id = api.approve(plan_id, headers={"traceparent": traceparent}).json["jobId"]
    name = f"dead-letter {settings.queue}"
    wait_until(lambda: collector.named(trace_id, name), 60, what="the dead-letter span")
    spans = collector.trace(trace_id)
    attempt = one(spans, f"process {settings.queue}")
    dead = one(spans, name)
    assert dead.kind == "producer" and dead.parent_id == attempt.span_id, tree(spans)
    assert attempt.attributes["phase1.retry.final"] is True
    assert dead.attributes["messaging.message.id"] == job_id

    requeue = processes.start([PHASE1, "dlq", "requeue", job_id], settings, env=env)
    assert requeue.wait(timeout=60) == 0
    wait_until(lambda: task_count(settings.database_url or "", plan_id) > 0, 60, what="tasks")

    def requeued() -> Span | None:
        with collector.lock:
            found = [s for s in collector.spans if s.name == f"requeue {settings.queue}"]
        return found[0] if found else None

    span = wait_until(requeued, 30, what="the requeue span")
    assert span.trace_id != trace_id  # the CLI's requeue starts a trace of its own...
    assert span.links and span.links[0][0] == trace_id  # ...linked to the original one
    rerun = wait_until(
        lambda: collector.named(span.trace_id, f"process {settings.queue}"),
        30,
        what="the requeued attempt",
    )
    new_trace = collector.trace(span.trace_id)
    send = one(new_trace, f"send {settings.queue}")
    assert send.parent_id == span.span_id and rerun[0].parent_id == send.span_id, tree(new_trace)
