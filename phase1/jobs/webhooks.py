"""Signed webhook deliveries: one RQ job per event and receiver, on a queue of their own.

A delivery job carries the event envelope and a reference to its receiver (the URL's origin
and a hash of the whole URL), never the signing secret nor a URL that may hold a token: the
worker that delivers finds the URL in its own PHASE1_WEBHOOK_URLS and signs with its own
PHASE1_WEBHOOK_SECRET (DESIGN §8). Deliveries run on `keys.webhook_queue(queue)`, so a slow
receiver holds a delivery worker, never a job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import math
import ssl
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from phase1 import context, keys
from phase1.errors import ConfigError, Phase1Error
from phase1.schemas import Event
from phase1.settings import Settings
from phase1.telemetry import tracing

log = logging.getLogger(__name__)

EVENT_HEADER = "X-Phase1-Event"
DELIVERY_HEADER = "X-Phase1-Delivery"
SIGNATURE_HEADER = "X-Phase1-Signature"
ATTEMPT_HEADER = "X-Phase1-Delivery-Attempt"
USER_AGENT = "phase1-webhooks/1"
FAILURE_CALLBACK = "phase1.webhooks.on_delivery_failure"
# A delivered job's RQ entry is only useful for a short look; failures are kept a week in RQ's
# failed registry and, summarised, in our own capped list.
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600
FAILURES_KEPT = 1000
# Receivers' answers are read (to free the connection) but never used beyond their status.
RESPONSE_BYTES = 64 * 1024


class DeliveryError(Phase1Error):
    """Raised when a receiver cannot be reached in time or answers with a non-2xx status."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Phase1-Signature` value for `body`: `t=<unix>,v1=<hex HMAC-SHA256>`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance: float | None = 300,
    *,
    now: float | None = None,
) -> bool:
    """For receivers: True when `header` (the `X-Phase1-Signature` value) signs exactly `body`
    with `secret` and was made within `tolerance` seconds of now (None: any age).

    Pass the raw request body as received, before any JSON parsing. Comparison is in
    constant time; several `v1=` values (a secret being rotated) are accepted.
    """
    if not header or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            signatures.append(value.encode("utf-8", "replace"))
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if tolerance is not None and abs(current - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, raw).encode()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def retry_schedule(settings: Settings) -> list[float]:
    """Seconds before each retry of a delivery (one per retry); the last interval repeats."""
    retries = settings.webhook_max_tries - 1
    intervals = list(settings.webhook_retry_intervals[:retries])
    return intervals + intervals[-1:] * (retries - len(intervals))


def job_timeout(settings: Settings) -> int:
    """RQ's bound on one try (whole seconds): room for a slow connect plus a slow answer, so a
    receiver that trickles its answer still cannot hold a worker for long."""
    return math.ceil(settings.webhook_timeout * 2) + 1


def enqueue(pipe: Pipeline, settings: Settings, event: Event, connection: Redis) -> list[str]:
    """Stage one delivery job per receiver in `pipe`'s transaction; returns their job ids.

    `connection` is a client of the same Redis (RQ asks it for the server version once).
    """
    if not pipe.explicit_transaction:
        # RQ puts the pipeline in MULTI mode itself, which redis-py refuses once commands are
        # queued; a pipeline from `Redis.pipeline()` is transactional anyway.
        pipe.explicit_transaction = True
    queue = Queue(
        keys.webhook_queue(settings.queue), connection=connection, serializer=JSONSerializer
    )
    schedule = retry_schedule(settings)
    envelope = event.model_dump(mode="json")
    ids = []
    for n, url in enumerate(settings.webhook_urls):
        receiver = {"url": shown_url(url), "sha256": fingerprint(url)}
        job = queue.enqueue(
            keys.WEBHOOK_FUNC,
            receiver,
            envelope,
            job_id=f"webhook-{event.id}-{n}",
            description=f"{event.type} of job {event.jobId} to {receiver['url']}",
            meta={
                "queue": settings.queue,
                "maxTries": settings.webhook_max_tries,
                "eventId": event.id,
                "eventType": event.type,
                "jobId": event.jobId,
                **tracing.traced({}),  # issue 24: the delivery joins the job's trace
            },
            # RQ's annotation says int; it only does timedelta(seconds=...) with the value.
            retry=Retry(max=len(schedule), interval=schedule) if schedule else None,  # type: ignore[arg-type]
            job_timeout=job_timeout(settings),
            on_failure=Callback(FAILURE_CALLBACK, timeout=10),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            pipeline=pipe,
        )
        ids.append(job.id)
    return ids


def fingerprint(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def shown_url(url: str) -> str:
    """The URL's scheme, host and port: safe for Redis, logs and messages even when its path,
    query or user part holds a token."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    origin = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    rest = parts.path not in ("", "/") or parts.query
    return origin + ("/…" if rest else "/")


def deliver(receiver: dict[str, str], envelope: dict[str, Any]) -> dict[str, Any]:
    """The delivery job (keys.WEBHOOK_FUNC): POST one event to one receiver, found by its hash
    among this worker's PHASE1_WEBHOOK_URLS and signed with its PHASE1_WEBHOOK_SECRET.
    Raises DeliveryError so that RQ retries it."""
    settings = context.for_worker_process().settings
    if settings.webhook_secret is None:
        raise ConfigError("PHASE1_WEBHOOK_SECRET is not set on this worker; not sending unsigned")
    url = next((u for u in settings.webhook_urls if fingerprint(u) == receiver["sha256"]), None)
    if url is None:
        raise ConfigError(f"{receiver['url']} is not in this worker's PHASE1_WEBHOOK_URLS")
    body = json.dumps(envelope, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: str(envelope.get("type", "")),
        DELIVERY_HEADER: str(envelope.get("id", "")),
        SIGNATURE_HEADER: sign(settings.webhook_secret.get_secret_value(), body),
    }
    job = get_current_job()
    if job is not None:
        headers[ATTEMPT_HEADER] = str(try_number(job))
    if not tracing.enabled():
        status = post(url, body, headers, timeout=settings.webhook_timeout)
        return {"url": receiver["url"], "status": status}
    try:
        return _deliver_traced(url, receiver, body, headers, job, settings.webhook_timeout)
    finally:
        tracing.job_done()


def _deliver_traced(
    url: str,
    receiver: dict[str, str],
    body: bytes,
    headers: dict[str, str],
    job: Job | None,
    timeout: float,
) -> dict[str, Any]:
    """Issue 24: the POST as an OpenTelemetry client span in the job's trace; the receiver
    gets its `traceparent`."""
    parts = urlsplit(url)
    attributes = {
        "http.request.method": "POST",
        "url.full": receiver["url"],  # scheme, host and port only: the path may hold a token
        "server.address": parts.hostname,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "phase1.webhook.event": headers.get(EVENT_HEADER),
        "phase1.webhook.delivery": headers.get(DELIVERY_HEADER),
    }
    if job is not None:
        attributes["http.request.resend_count"] = try_number(job) - 1 or None
    parent = tracing.carrier_of(job.meta if job is not None else None)
    with tracing.span("POST", kind="client", attributes=attributes, parent=parent) as span:
        tracing.inject(headers)
        try:
            status = post(url, body, headers, timeout=timeout)
        except DeliveryError as exc:
            tracing.set_attributes(span, {"error.type": type(exc.__cause__ or exc).__name__})
            raise
        tracing.set_attributes(span, {"http.response.status_code": status})
    return {"url": receiver["url"], "status": status}


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST `body`; the status when it is 2xx, else DeliveryError. Redirects are not followed
    (a redirected POST would lose its body or its meaning): a 3xx is a failed try."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = {
            **headers,
            "Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode(),
        }
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(RESPONSE_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{shown_url(url)}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise DeliveryError(f"{shown_url(url)} answered {response.status} {response.reason}")
    return response.status


def try_number(job: Job) -> int:
    """Which try of its delivery `job` is on (1 for the first)."""
    max_tries = int((job.meta or {}).get("maxTries", 1))
    return max(1, max_tries - int(job.retries_left or 0))


def on_delivery_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """RQ calls this after every failed try; the last one is recorded as given up.

    Nothing here touches the job the event is about: a delivery never changes a job's state.
    """
    if exc_type is not None and issubclass(exc_type, ConfigError):
        job.retries_left = 0  # a worker's settings do not change until it restarts: no retry
    meta = job.meta or {}
    url = str(job.args[0].get("url")) if job.args and isinstance(job.args[0], dict) else "?"
    if isinstance(exc_value, Phase1Error):
        error = str(exc_value)
    else:
        error = f"{_name(exc_type)}: {exc_value}" if str(exc_value or "") else _name(exc_type)
    tries = try_number(job)
    what = f"webhook {meta.get('eventType')} {meta.get('eventId')} of job {meta.get('jobId')}"
    if job.should_retry:
        log.warning("%s to %s failed (try %d): %s; retrying", what, url, tries, error)
        return
    log.error("%s to %s given up after %d tries: %s", what, url, tries, error)
    queue = str(meta.get("queue") or job.origin)
    entry = {
        "eventId": meta.get("eventId"),
        "type": meta.get("eventType"),
        "jobId": meta.get("jobId"),
        "url": url,
        "tries": tries,
        "error": error,
        "deliveryJobId": job.id,
        "failedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    with connection.pipeline(transaction=True) as pipe:
        pipe.lpush(keys.webhook_failures(queue), json.dumps(entry))
        pipe.ltrim(keys.webhook_failures(queue), 0, FAILURES_KEPT - 1)
        pipe.execute()


def _name(exc_type: type[BaseException] | None) -> str:
    return exc_type.__name__ if exc_type is not None else "Error"


def failed_deliveries(redis: Redis, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    """Deliveries given up after their last try, newest first (the last 1000 are kept)."""
    raws: Any = redis.lrange(keys.webhook_failures(queue), 0, max(0, limit - 1))
    return [json.loads(raw) for raw in raws]
