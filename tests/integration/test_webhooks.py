"""Signed webhooks on real Redis, PostgreSQL, RQ workers and a real local HTTP receiver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import PHASE1, RQ, Processes, inject_fault, settings_env, wait_until

from phase1 import verify_signature
from phase1.context import Phase1, build
from phase1.domain import plans
from phase1.jobs import approval, events, webhooks
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

SECRET = "whsec-integration"


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


class Receiver:
    """A real HTTP server on 127.0.0.1 (a free port) in a thread. `answer(delivery_id, nth)`
    gives the status for the nth request (1-based) of a delivery; `hang` makes it wait."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answer: Callable[[str, int], int] = lambda _id, _n: 200
        self.hang = False
        self.hung = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang:
                    receiver.hung += 1
                    receiver.release.wait(30)
                delivery = self.headers.get("X-Phase1-Delivery", "")
                with receiver.lock:
                    nth = 1 + sum(
                        r.headers.get("X-Phase1-Delivery") == delivery for r in receiver.requests
                    )
                    status = receiver.answer(delivery, nth)
                    receiver.requests.append(
                        Request(dict(self.headers.items()), body, status, time.monotonic())
                    )
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/phase1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody-listens"


def webhook_env(settings: Settings) -> dict[str, str]:
    """The webhook settings `support.settings_env` does not pass on."""
    return {
        "PHASE1_WEBHOOK_TIMEOUT": str(settings.webhook_timeout),
        "PHASE1_WEBHOOK_MAX_TRIES": str(settings.webhook_max_tries),
        "PHASE1_WEBHOOK_RETRY_INTERVALS": ",".join(map(str, settings.webhook_retry_intervals)),
        "PHASE1_WEBHOOK_EVENTS": ",".join(settings.webhook_events),
    }


def phase1_worker(processes: Processes, settings: Settings) -> subprocess.Popen[bytes]:
    return processes.start([PHASE1, "worker"], settings, env=webhook_env(settings))


def rq_worker(processes: Processes, settings: Settings, *queues: str) -> subprocess.Popen[bytes]:
    """A plain `rq worker` on the given queues, with phase1's in-process worker class."""
    argv = [RQ, "worker", *queues, "--with-scheduler", "--url", settings.redis_url or ""]
    argv += ["--serializer", "rq.serializers.JSONSerializer"]
    argv += ["--worker-class", "phase1.worker.Phase1Worker"]
    return processes.start(argv, settings, env=webhook_env(settings))


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def make_plan(ctx: Phase1) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "Webhook plan", SAMPLE_ANALYSIS).id


def settled(ctx: Phase1, *job_ids: str) -> bool:
    return all(jobs.view(ctx, j).status in ("completed", "failed") for j in job_ids)


@pytest.fixture
def hooked(
    make_settings: Callable[..., Settings], receiver: Receiver, request: pytest.FixtureRequest
) -> Iterator[Phase1]:
    overrides = getattr(request, "param", {})
    settings = make_settings(
        webhook_urls=[receiver.url, *overrides.pop("more_urls", [])],
        webhook_secret=SECRET,
        webhook_timeout=1,
        webhook_retry_intervals=[0.2],
        **overrides,
    )
    ctx = build(settings)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.mark.parametrize("hooked", [{"more_urls": [closed_port_url()], "max_retries": 1,
                                     "webhook_max_tries": 2}], indirect=True)  # fmt: skip
def test_signed_deliveries_and_a_receiver_that_is_down(
    hooked: Phase1, receiver: Receiver, processes: Processes
) -> None:
    ctx, settings = hooked, hooked.settings
    done_plan, doomed_plan = make_plan(ctx), make_plan(ctx)
    inject_fault(ctx.database_url, doomed_plan, fail_times=99)
    done = approval.approve(ctx, done_plan).job_id
    doomed = approval.approve(ctx, doomed_plan).job_id
    phase1_worker(processes, settings)
    wait_until(lambda: settled(ctx, done, doomed), timeout=40, what="both jobs settled")
    wait_until(lambda: len(receiver.accepted()) >= 2, timeout=30, what="two deliveries")
    # The dead URL: tried twice per event, then given up and recorded.
    failed = wait_until(
        lambda: len(webhooks.failed_deliveries(ctx.redis, settings.queue)) >= 2 and
        webhooks.failed_deliveries(ctx.redis, settings.queue),
        timeout=30,
        what="the dead receiver's deliveries given up",
    )  # fmt: skip
    time.sleep(0.5)  # nothing more may arrive

    stream = {e.id: e for _, e in events.read(ctx.redis, settings.queue)}
    got = receiver.accepted()
    assert len(receiver.requests) == 2 and len(got) == 2
    bodies = [json.loads(r.body) for r in got]
    assert sorted((b["type"], b["jobId"]) for b in bodies) == sorted(
        [("job:completed", done), ("job:failed", doomed)]
    )
    for request, body in zip(got, bodies, strict=True):
        headers = request.headers
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Phase1-Event"] == body["type"]
        assert headers["X-Phase1-Delivery"] == body["id"]
        assert headers["X-Phase1-Delivery-Attempt"] == "1"
        assert stream[body["id"]].model_dump(mode="json") == body  # the envelope, as streamed
        signature = headers["X-Phase1-Signature"]
        assert verify_signature(SECRET, signature, request.body)
        assert not verify_signature(SECRET, signature, request.body.replace(b'"', b"'", 1))
        tampered = json.dumps({**body, "jobId": "someone-else"}).encode()
        assert not verify_signature(SECRET, signature, tampered)
        assert not verify_signature("not-the-secret", signature, request.body)
    failed_body = next(b for b in bodies if b["type"] == "job:failed")
    assert failed_body["data"]["final"] is True  # the non-final failure was not sent

    assert sorted(f["jobId"] for f in failed) == sorted([done, doomed])
    for entry in failed:
        assert entry["tries"] == 2 and "ConnectionRefusedError" in entry["error"]
        assert entry["url"].startswith("http://127.0.0.1:") and "nobody" not in entry["url"]
    # Deliveries never touch the jobs they are about.
    assert jobs.view(ctx, done).status == "completed"
    assert jobs.view(ctx, doomed).status == "failed"

    shown = subprocess.run(
        [PHASE1, "events", "--webhook-failures", "--json"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line) for line in shown.stdout.splitlines()] == failed


@pytest.mark.parametrize("hooked", [{"webhook_max_tries": 5}], indirect=True)
def test_500_twice_then_200_is_one_accepted_delivery_per_event_under_plain_rq(
    hooked: Phase1, receiver: Receiver, processes: Processes
) -> None:
    ctx, settings = hooked, hooked.settings
    receiver.answer = lambda _delivery, nth: 500 if nth <= 2 else 200
    ids = [approval.approve(ctx, make_plan(ctx)).job_id for _ in range(2)]
    rq_worker(processes, settings, settings.queue, f"{settings.queue}-webhooks")
    wait_until(lambda: settled(ctx, *ids), timeout=40, what="jobs completed")
    wait_until(lambda: len(receiver.accepted()) >= 2, timeout=30, what="accepted deliveries")
    time.sleep(1)  # a retry too many would arrive within this
    accepted = receiver.accepted()
    assert sorted(json.loads(r.body)["jobId"] for r in accepted) == sorted(ids)
    by_delivery: dict[str, list[Request]] = {}
    for r in receiver.requests:
        by_delivery.setdefault(r.headers["X-Phase1-Delivery"], []).append(r)
    assert len(by_delivery) == 2
    for tries in by_delivery.values():
        assert [r.status for r in tries] == [500, 500, 200]
        assert [r.headers["X-Phase1-Delivery-Attempt"] for r in tries] == ["1", "2", "3"]
        assert len({r.body for r in tries}) == 1  # the same event each time
        assert all(verify_signature(SECRET, r.headers["X-Phase1-Signature"], r.body) for r in tries)
        assert tries[1].at - tries[0].at >= 0.15  # retried after the interval, not at once
    assert webhooks.failed_deliveries(ctx.redis, settings.queue) == []
    assert all(jobs.view(ctx, j).status == "completed" for j in ids)


def latencies(ctx: Phase1, count: int, *, warm_up: bool = False) -> list[float]:
    """Approve `count` plans one after the other, each once the previous one completed, and
    return each job's time from approval to completion (PostgreSQL's clock). With `warm_up`,
    one job first, not counted, so that a worker's start-up is not measured."""
    result = []
    for _ in range(count + warm_up):
        job_id = approval.approve(ctx, make_plan(ctx)).job_id
        wait_until(lambda j=job_id: settled(ctx, j), timeout=30, what="job completed")  # type: ignore[misc]
        view = jobs.view(ctx, job_id)
        assert view.status == "completed" and view.completedAt and view.enqueuedAt
        result.append((view.completedAt - view.enqueuedAt).total_seconds())
    return result[warm_up:]


@pytest.mark.parametrize("hooked", [{"webhook_max_tries": 2}], indirect=True)
def test_a_hanging_receiver_does_not_slow_the_jobs(
    hooked: Phase1, receiver: Receiver, processes: Processes
) -> None:
    """Jobs arriving one at a time, their receiver healthy, then hanging past the 1 s delivery
    timeout. With a delivery worker of its own the jobs do not notice; one `phase1 worker` on
    both queues takes waiting jobs first, but a job that arrives while a delivery is in
    flight waits for it: at most one delivery timeout."""
    ctx, settings = hooked, hooked.settings
    job_worker = rq_worker(processes, settings, settings.queue)
    delivery_worker = rq_worker(processes, settings, f"{settings.queue}-webhooks")
    healthy = latencies(ctx, 4, warm_up=True)
    receiver.hang = True
    hanging = latencies(ctx, 4)
    assert receiver.hung >= 1  # deliveries really were hanging meanwhile
    stop(job_worker)
    stop(delivery_worker)
    phase1_worker(processes, settings)
    shared = latencies(ctx, 4, warm_up=True)
    report = (
        "job latency (s) from approval to completion: dedicated delivery worker, healthy "
        f"receiver {rounded(healthy)}, hanging receiver {rounded(hanging)}; one phase1 worker "
        f"on both queues, hanging receiver {rounded(shared)}"
    )
    print(report)
    assert statistics.median(hanging) <= statistics.median(healthy) + 0.5, report
    assert statistics.median(shared) <= statistics.median(healthy) + settings.webhook_timeout + 0.5
    assert max(shared) <= max(healthy) + settings.webhook_timeout + 1, report


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]
