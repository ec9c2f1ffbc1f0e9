"""Events, their stream, webhook routing and signatures, on fakeredis (no network)."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from typer.testing import CliRunner

from phase1 import keys, verify_signature
from phase1.cli import app
from phase1.cli.events import _resolve_since, describe
from phase1.errors import ConfigError, InvalidInputError
from phase1.jobs import events, webhooks
from phase1.schemas import Event
from phase1.settings import Settings, load_settings

SECRET = "whsec-unit-test"
QUEUE = "unit-events"


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def settings() -> Settings:
    return Settings(queue=QUEUE)


@pytest.fixture
def hooked() -> Settings:
    return Settings(
        queue=QUEUE,
        webhook_urls=["http://127.0.0.1:9/a", "https://user:pw@hooks.example/b/T0KEN"],
        webhook_secret=SECRET,
        webhook_max_tries=4,
        webhook_retry_intervals=[0.5, 2],
        webhook_timeout=3,
    )


@pytest.fixture
def received() -> Iterator[list[Event]]:
    seen: list[Event] = []
    unsubscribe = events.subscribe("*", seen.append)
    try:
        yield seen
    finally:
        unsubscribe()


def stream(redis: fakeredis.FakeRedis, queue: str = QUEUE) -> list[Event]:
    return [event for _, event in events.read(redis, queue)]


def test_envelope_has_the_designed_fields() -> None:
    event = events.make(events.FAILED, "job-1", "plan-1", 2, {"final": False})
    document = json.loads(event.model_dump_json())
    assert set(document) == {"id", "type", "jobId", "planId", "attempt", "at", "data"}
    assert uuid.UUID(document["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", document["at"])
    assert document["type"] == "job:failed" and document["attempt"] == 2
    assert events.make(events.ENQUEUED, "j", None, None).data == {}


def test_emit_appends_to_the_stream_and_read_replays_it(
    redis: fakeredis.FakeRedis, settings: Settings
) -> None:
    first = events.emit(redis, settings, events.make(events.ENQUEUED, "a", "p", None))
    events.emit(redis, settings, events.make(events.ENQUEUED, "b", "p", None))
    third = events.emit(redis, settings, events.make(events.ACTIVE, "a", "p", 1))
    replay = list(events.read(redis, QUEUE))
    assert replay[0][1] == first
    assert [e.jobId for _, e in replay] == ["a", "b", "a"]
    assert [e for _, e in events.read(redis, QUEUE, job_id="a")] == [first, third]
    after_first = [e.jobId for _, e in events.read(redis, QUEUE, since=replay[0][0])]
    assert after_first == ["b", "a"]
    assert events.last_id(redis, QUEUE) == replay[-1][0]
    assert events.last_id(redis, "no-such-queue") == "0-0"


def test_progress_is_clamped_and_carries_details(
    redis: fakeredis.FakeRedis, settings: Settings
) -> None:
    job = Job.create(func=print, connection=redis, id="job-p")
    events.progress(job, settings, "plan", 1, 140, step="x")
    (event,) = stream(redis)
    assert event.type == events.PROGRESS and event.jobId == "job-p"
    assert event.data == {"progress": 100, "step": "x"}


def test_read_skips_entries_that_are_not_events(
    redis: fakeredis.FakeRedis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    redis.xadd(keys.event_stream(QUEUE), {"e": "not json"})
    events.emit(redis, settings, events.make(events.ENQUEUED, "a", "p", None))
    with caplog.at_level(logging.WARNING):
        assert [e.jobId for e in stream(redis)] == ["a"]
    assert "not a phase1 event" in caplog.text


def test_subscribers_by_type_and_catch_all(
    redis: fakeredis.FakeRedis, settings: Settings, received: list[Event]
) -> None:
    completed: list[Event] = []
    unsubscribe = events.subscribe(events.COMPLETED, completed.append)
    events.emit(redis, settings, events.make(events.ACTIVE, "j", "p", 1))
    done = events.emit(redis, settings, events.make(events.COMPLETED, "j", "p", 1))
    unsubscribe()
    events.emit(redis, settings, events.make(events.COMPLETED, "k", "p", 1))
    assert completed == [done]
    assert [e.type for e in received] == ["job:active", "job:completed", "job:completed"]
    with pytest.raises(ValueError, match="unknown event type 'job:done'"):
        events.subscribe("job:done", completed.append)


def test_a_raising_handler_is_logged_and_changes_nothing(
    redis: fakeredis.FakeRedis,
    settings: Settings,
    received: list[Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_event: Event) -> None:
        raise RuntimeError("handler bug")

    unsubscribe = events.subscribe(events.COMPLETED, broken)
    try:
        with caplog.at_level(logging.ERROR, logger="phase1.jobs.events"):
            event = events.emit(redis, settings, events.make(events.COMPLETED, "j", "p", 1))
    finally:
        unsubscribe()
    assert received == [event]  # the catch-all after it still ran
    assert stream(redis) == [event]
    assert "handler bug" in caplog.text and "failed on job:completed" in caplog.text


def test_emit_in_a_pipeline_writes_and_notifies_only_after_execute(
    redis: fakeredis.FakeRedis, settings: Settings, received: list[Event]
) -> None:
    event = events.make(events.ENQUEUED, "j", "p", None)
    with redis.pipeline(transaction=True) as pipe:
        pipe.set("other-write", 1)
        events.emit(pipe, settings, event)
        assert received == [] and stream(redis) == []
        pipe.execute()
    events.notify(event)
    assert received == [event] and stream(redis) == [event]


def test_a_redis_failure_loses_the_event_not_the_job(
    settings: Settings, received: list[Event], caplog: pytest.LogCaptureFixture
) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    down = fakeredis.FakeRedis(server=server)
    with caplog.at_level(logging.WARNING, logger="phase1.jobs.events"):
        event = events.emit(down, settings, events.make(events.COMPLETED, "j", "p", 1))
    assert received == [event]
    assert "could not write job:completed of job j" in caplog.text


def test_the_stream_is_capped(redis: fakeredis.FakeRedis) -> None:
    settings = Settings(queue=QUEUE, event_stream_maxlen=100)
    for n in range(500):
        events.emit(redis, settings, events.make(events.PROGRESS, f"j{n}", None, 1))
    length = redis.xlen(keys.event_stream(QUEUE))
    # MAXLEN ~ trims in whole nodes: never far above the cap, and the newest are kept.
    assert 100 <= length <= 200
    assert stream(redis)[-1].jobId == "j499"


def delivery_jobs(redis: fakeredis.FakeRedis) -> list[Job]:
    queue = Queue(keys.webhook_queue(QUEUE), connection=redis, serializer=JSONSerializer)
    return queue.get_jobs()


def test_webhooks_go_out_for_completed_and_final_failed_only(
    redis: fakeredis.FakeRedis, hooked: Settings
) -> None:
    events.emit(redis, hooked, events.make(events.ACTIVE, "j", "p", 1))
    events.emit(redis, hooked, events.make(events.PROGRESS, "j", "p", 1, {"progress": 10}))
    events.emit(redis, hooked, events.make(events.FAILED, "j", "p", 1, {"final": False}))
    assert delivery_jobs(redis) == []
    final = events.emit(redis, hooked, events.make(events.FAILED, "j", "p", 2, {"final": True}))
    done = events.emit(redis, hooked, events.make(events.COMPLETED, "k", "p", 1))
    jobs = delivery_jobs(redis)
    assert [(j.args[0]["url"], j.args[1]["id"]) for j in jobs] == [
        ("http://127.0.0.1:9/…", final.id),
        ("https://hooks.example/…", final.id),
        ("http://127.0.0.1:9/…", done.id),
        ("https://hooks.example/…", done.id),
    ]
    assert jobs[1].args[0]["sha256"] == webhooks.fingerprint(hooked.webhook_urls[1])
    assert jobs[0].args[1] == final.model_dump(mode="json")
    assert jobs[0].func_name == keys.WEBHOOK_FUNC
    assert "pw" not in (jobs[1].description or "")
    # The event is in the stream as well, written in the same transaction.
    assert [e.type for e in stream(redis)][-2:] == ["job:failed", "job:completed"]


def test_no_secret_in_redis(redis: fakeredis.FakeRedis, hooked: Settings) -> None:
    """Neither the signing secret nor a URL's password or path token."""
    events.emit(redis, hooked, events.make(events.COMPLETED, "j", "p", 1))
    for key in redis.keys("*"):
        kind = redis.type(key)
        values: list[Any] = []
        if kind == b"hash":
            values = list(redis.hgetall(key).values())
            values += [zlib.decompress(v) for v in values if v[:1] == b"x"]
        elif kind == b"list":
            values = redis.lrange(key, 0, -1)
        elif kind == b"stream":
            values = [f[b"e"] for _, f in redis.xrange(key)]
        for secret in (SECRET, "T0KEN", "user:pw"):
            assert not any(secret.encode() in bytes(v) for v in values), (key, secret)


def test_delivery_jobs_carry_the_retry_schedule_and_a_short_timeout(
    redis: fakeredis.FakeRedis, hooked: Settings
) -> None:
    events.emit(redis, hooked, events.make(events.COMPLETED, "j", "p", 1))
    job = delivery_jobs(redis)[0]
    assert job.retries_left == 3  # 4 tries in all
    assert job.retry_intervals == [0.5, 2, 2]  # the last interval repeats
    assert job.timeout == 7
    assert job._failure_callback_name == webhooks.FAILURE_CALLBACK
    assert webhooks.try_number(job) == 1
    assert webhooks.retry_schedule(Settings(webhook_max_tries=1)) == []
    assert webhooks.retry_schedule(Settings()) == [1, 5, 30, 60]


def test_configured_event_types_and_pipelines(redis: fakeredis.FakeRedis, hooked: Settings) -> None:
    only_enqueued = hooked.model_copy(update={"webhook_events": ["job:enqueued"]})
    with redis.pipeline(transaction=True) as pipe:
        pipe.set("approval-write", 1)
        events.emit(pipe, only_enqueued, events.make(events.ENQUEUED, "j", "p", None))
        assert delivery_jobs(redis) == []
        pipe.execute()
    assert len(delivery_jobs(redis)) == 2
    events.emit(redis, only_enqueued, events.make(events.COMPLETED, "j", "p", 1))
    assert len(delivery_jobs(redis)) == 2


def test_failed_deliveries_are_recorded_capped(
    redis: fakeredis.FakeRedis, hooked: Settings
) -> None:
    events.emit(redis, hooked, events.make(events.COMPLETED, "j", "p", 1))
    job = delivery_jobs(redis)[0]
    job.retries_left = 1
    error = webhooks.DeliveryError("http://127.0.0.1:9/a answered 500 Internal Server Error")
    webhooks.on_delivery_failure(job, redis, webhooks.DeliveryError, error, None)
    assert webhooks.failed_deliveries(redis, QUEUE) == []  # a retry is coming
    job.retries_left = 0
    webhooks.on_delivery_failure(job, redis, webhooks.DeliveryError, error, None)
    (entry,) = webhooks.failed_deliveries(redis, QUEUE)
    assert entry["type"] == "job:completed" and entry["jobId"] == "j"
    assert entry["tries"] == 4 and "answered 500" in entry["error"]
    missing = ConfigError("PHASE1_WEBHOOK_SECRET is not set on this worker")
    job.retries_left = 3
    webhooks.on_delivery_failure(job, redis, ConfigError, missing, None)
    assert job.retries_left == 0  # a missing secret is not retried
    assert len(webhooks.failed_deliveries(redis, QUEUE)) == 2


def test_a_worker_delivers_only_to_its_own_urls_and_only_signed(
    hooked: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from phase1 import context

    envelope = events.make(events.COMPLETED, "j", "p", 1).model_dump(mode="json")
    unknown = {"url": "https://elsewhere.example/…", "sha256": webhooks.fingerprint("x")}
    worker = SimpleNamespace(settings=hooked)
    monkeypatch.setattr(context, "_process_context", (os.getpid(), worker))
    with pytest.raises(ConfigError, match=r"elsewhere.example/… is not in this worker's"):
        webhooks.deliver(unknown, envelope)
    worker.settings = hooked.model_copy(update={"webhook_secret": None})
    with pytest.raises(ConfigError, match="PHASE1_WEBHOOK_SECRET is not set"):
        webhooks.deliver(unknown, envelope)


def test_shown_urls_keep_tokens_out() -> None:
    assert (
        webhooks.shown_url("https://u:p@h.example:8443/s/T0KEN?k=v") == "https://h.example:8443/…"
    )
    assert webhooks.shown_url("http://h.example") == "http://h.example/"
    assert webhooks.shown_url("http://[::1]:8080/x") == "http://[::1]:8080/…"


# Signatures


def test_signature_roundtrip_and_what_fails() -> None:
    body = b'{"id":"e1","type":"job:completed"}'
    header = webhooks.sign(SECRET, body)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify_signature(SECRET, header, body)
    assert verify_signature(SECRET, header, body.decode())  # str bodies are encoded
    assert not verify_signature(SECRET, header, body.replace(b"completed", b"failed"))
    assert not verify_signature("another-secret", header, body)
    assert not verify_signature(SECRET, None, body)
    assert not verify_signature(SECRET, "", body)
    assert not verify_signature(SECRET, "garbage", body)
    assert not verify_signature(SECRET, "t=abc,v1=00", body)
    assert not verify_signature(SECRET, header.split(",")[1], body)  # no timestamp
    assert not verify_signature("", header, body)


def test_stale_and_future_timestamps_fail() -> None:
    body = b"{}"
    old = webhooks.sign(SECRET, body, timestamp=1_700_000_000)
    assert not verify_signature(SECRET, old, body, now=1_700_000_301)
    assert verify_signature(SECRET, old, body, now=1_700_000_299)
    assert not verify_signature(SECRET, old, body, now=1_699_999_000)  # from the future
    assert verify_signature(SECRET, old, body, tolerance=None, now=1_800_000_000)
    # The timestamp is signed too: moving it breaks the signature.
    moved = old.replace("t=1700000000", "t=1700000200")
    assert not verify_signature(SECRET, moved, body, now=1_700_000_201)


def test_rotated_secrets_several_v1_values() -> None:
    body = b"{}"
    new = webhooks.sign("new-secret", body, timestamp=1_700_000_000)
    old = webhooks.sign(SECRET, body, timestamp=1_700_000_000)
    both = f"{new},v1={old.split('v1=')[1]}"
    assert verify_signature(SECRET, both, body, now=1_700_000_000)
    assert verify_signature("new-secret", both, body, now=1_700_000_000)


# Settings and the CLI's parsing


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PHASE1_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))


@pytest.mark.usefixtures("clean_env")
def test_webhook_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert defaults.webhook_events == ["job:completed", "job:failed"]
    assert (defaults.webhook_timeout, defaults.webhook_max_tries) == (5, 5)
    monkeypatch.setenv("PHASE1_WEBHOOK_EVENTS", "job:completed,job:done")
    with pytest.raises(ConfigError, match=r"PHASE1_WEBHOOK_EVENTS: 'job:done' is not an event"):
        load_settings()
    monkeypatch.setenv("PHASE1_WEBHOOK_EVENTS", "job:completed")
    monkeypatch.setenv("PHASE1_WEBHOOK_URLS", "http://127.0.0.1:9/a")
    with pytest.raises(ConfigError, match="PHASE1_WEBHOOK_SECRET must be set"):
        load_settings()
    monkeypatch.setenv("PHASE1_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PHASE1_WEBHOOK_RETRY_INTERVALS", "0.5, 2")
    assert load_settings().webhook_retry_intervals == [0.5, 2]
    monkeypatch.setenv("PHASE1_WEBHOOK_RETRY_INTERVALS", "soon")
    with pytest.raises(ConfigError, match="PHASE1_WEBHOOK_RETRY_INTERVALS"):
        load_settings()


def test_since_accepts_ids_times_and_now(redis: fakeredis.FakeRedis, settings: Settings) -> None:
    assert _resolve_since(redis, QUEUE, None) == "0-0"
    assert _resolve_since(redis, QUEUE, "1718000000000-3") == "1718000000000-3"
    assert _resolve_since(redis, QUEUE, "1718000000000") == f"1717999999999-{2**64 - 1}"
    assert _resolve_since(redis, QUEUE, "2024-06-10T06:13:20Z") == f"1717999999999-{2**64 - 1}"
    assert _resolve_since(redis, QUEUE, "$") == "0-0"
    events.emit(redis, settings, events.make(events.ENQUEUED, "j", "p", None))
    assert _resolve_since(redis, QUEUE, "now") == events.last_id(redis, QUEUE)
    with pytest.raises(InvalidInputError, match="is not a stream id"):
        _resolve_since(redis, QUEUE, "yesterday")
    with pytest.raises(InvalidInputError, match="needs a time zone"):
        _resolve_since(redis, QUEUE, "2024-06-10T06:13:20")


@pytest.mark.usefixtures("clean_env")
def test_bad_since_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/x")
    result = CliRunner().invoke(app, ["events", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "'yesterday' is not a stream id" in result.output
    assert "Traceback" not in result.output


def test_lines_for_people_say_what_happened() -> None:
    failed = events.make(
        events.FAILED,
        "job-1",
        "p",
        1,
        {
            "final": False,
            "nextRetryAt": "2024-01-01T00:00:01Z",
            "error": {"type": "RuntimeError", "message": "boom"},
        },
    )
    line = describe("1-0", failed).plain
    assert "job:failed" in line and "job-1" in line and "#1" in line
    assert "retry at 2024-01-01T00:00:01Z: RuntimeError: boom" in line and "[1-0]" in line
    done = events.make(
        events.COMPLETED, "job-1", "p", 2, {"result": {"tasksCreated": 5, "taskIds": list("abcde")}}
    )
    assert "5 task(s) created, 5 in all" in describe("2-0", done).plain
    progress = events.make(events.PROGRESS, "job-1", "p", 2, {"progress": 90, "step": "x"})
    assert "90% x" in describe("3-0", progress).plain
