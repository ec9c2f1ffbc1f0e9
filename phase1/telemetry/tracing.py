"""OpenTelemetry glue: is tracing on, spans, and the W3C `traceparent` carried in a dict.

phase1 depends on `opentelemetry-api` only. The SDK (the `phase1[otel]` extra) is configured
once per process, from OpenTelemetry's own `OTEL_*` variables, and only when they ask for an
exporter (`OTEL_TRACES_EXPORTER`/`OTEL_METRICS_EXPORTER` other than `none`, or an
`OTEL_EXPORTER_OTLP_*ENDPOINT`) and `OTEL_SDK_DISABLED` is not true. A process embedding phase1
that set up its own TracerProvider is traced too. Otherwise every helper here returns at once
and phase1 imports nothing of OpenTelemetry: tracing off costs a job a few flag tests.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from phase1.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext

log = logging.getLogger(__name__)

TRACER_NAME = "phase1"
TRACEPARENT = "traceparent"
ON_VALUES = frozenset({"true", "1", "yes", "on"})
SPAN_KINDS = ("internal", "server", "client", "producer", "consumer")

_decided = False
_tracing = False
_metrics = False
_instruments: dict[str, Any] = {}


def _wants(signal: str) -> bool:
    """Whether the OTEL_* variables ask for this signal's export (traces or metrics)."""
    exporter = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _host_provider_set() -> bool:
    """A process embedding phase1 may have set a TracerProvider of its own: use it."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def configure(*, strict: bool = True) -> bool:
    """Decide once per process whether tracing is on, and set the SDK up if OTEL_* ask for it.

    Returns whether spans are recorded. A bad OTEL_* value raises ConfigError when `strict`
    (at a command's start), else it is logged and tracing stays off (inside a job)."""
    global _decided, _tracing, _metrics
    if _decided:
        return _tracing
    _decided = True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in ON_VALUES:
        return False
    traces, metrics = _wants("traces"), _wants("metrics")
    if traces or metrics:
        try:
            from phase1.telemetry import sdk as otelsdk
        except ImportError:
            log.warning(
                "OTEL_* asks for an exporter but the OpenTelemetry SDK is not installed "
                "(pip install 'phase1[otel]'); tracing stays off"
            )
            return False
        try:
            _tracing = traces and otelsdk.setup_traces()
            _metrics = metrics and otelsdk.setup_metrics()
        except ConfigError as exc:
            if strict:
                raise
            log.error("tracing stays off: %s", exc)
            _tracing = _metrics = False
    _tracing = _tracing or _host_provider_set()
    return _tracing


def enabled() -> bool:
    """Whether spans are recorded in this process (decided on first use)."""
    return _tracing if _decided else configure(strict=False)


def reset_for_tests() -> None:
    global _decided, _tracing, _metrics
    _decided = _tracing = _metrics = False
    _instruments.clear()


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, kind.upper())


def _parent(parent: Mapping[str, Any] | Context | None) -> Context | None:
    if parent is None or not isinstance(parent, Mapping):
        return parent
    return extract(parent)


@contextlib.contextmanager
def _span(
    name: str,
    kind: str,
    attributes: Mapping[str, Any] | None,
    parent: Mapping[str, Any] | Context | None,
    link: Mapping[str, Any] | None,
) -> Iterator[Span]:
    from opentelemetry import trace

    links = None
    if link:
        linked = trace.get_current_span(extract(link)).get_span_context()
        links = [trace.Link(linked)] if linked.is_valid else None
    tracer = _instruments.get("tracer")
    if tracer is None:  # one Tracer per process: get_tracer builds a new one each call
        tracer = _instruments["tracer"] = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        context=_parent(parent),
        kind=_kind(kind),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        links=links,
    ) as current:
        yield current


_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, Any] | Context | None = None,
    link: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span around a block (None inside when tracing is off); an exception escaping the
    block is recorded on it. `parent`: a carrier dict (its `traceparent`) or a Context, else
    the current span; `link`: a carrier whose trace the span links to (a requeued job's)."""
    if not enabled():
        return _OFF
    return _span(name, kind, attributes, parent, link)


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current trace context (`traceparent`, `tracestate`) into `carrier`."""
    if enabled():
        from opentelemetry import propagate

        propagate.inject(carrier)


def extract(carrier: Mapping[str, Any]) -> Context:
    from opentelemetry import propagate

    return propagate.extract({k: v for k, v in carrier.items() if isinstance(v, str)})


def carrier_of(meta: Mapping[str, Any] | None) -> dict[str, str]:
    """The trace fields of a job's `meta` (empty when it has none)."""
    if not meta:
        return {}
    return {k: v for k in (TRACEPARENT, "tracestate") if isinstance(v := meta.get(k), str)}


def capture() -> Context | None:
    """The current context, to restore later around work done outside this call (None when
    tracing is off)."""
    if not enabled():
        return None
    from opentelemetry import context

    return context.get_current()


def restored(ctx: Context | SpanContext | None) -> contextlib.AbstractContextManager[None]:
    """Make `ctx` (a captured Context, or a SpanContext to parent children) current."""
    return _OFF if ctx is None else _restored(ctx)


@contextlib.contextmanager
def _restored(ctx: Context | SpanContext) -> Iterator[None]:
    from opentelemetry import context, trace

    if isinstance(ctx, trace.SpanContext):
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(ctx))
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None when none."""
    if not _tracing:
        return None
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


def set_attributes(target: Span | None, attributes: Mapping[str, Any]) -> None:
    if target is not None:
        target.set_attributes({k: v for k, v in attributes.items() if v is not None})


def record(
    name: str, value: float, attributes: Mapping[str, Any], *, counter: bool = False
) -> None:
    """Add to a counter, or record in a histogram (seconds), when metrics are on."""
    if not _metrics:
        return
    instrument: Any = _instruments.get(name)
    if instrument is None:
        from opentelemetry import metrics

        meter = metrics.get_meter(TRACER_NAME)
        if counter:
            instrument = meter.create_counter(name, unit="{job}")
        else:
            instrument = meter.create_histogram(name, unit="s")
        _instruments[name] = instrument
    if counter:
        instrument.add(value, dict(attributes))
    else:
        instrument.record(value, dict(attributes))


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (before a forked work horse exits without atexit)."""
    if _tracing or _metrics:
        from phase1.telemetry import sdk as otelsdk

        otelsdk.flush(timeout_ms)


# A worker that runs jobs in its own long-lived process exports in batches; any other host
# (a forking `rq worker`'s work horse leaves with os._exit, skipping atexit) exports what a
# job recorded when the job is done.
_flush_each_job = True


def batch_across_jobs() -> None:
    """Called by a worker that runs its jobs in its own process: no export per job."""
    global _flush_each_job
    _flush_each_job = False


def job_done() -> None:
    """The end of a job's work in this process: export now unless batching across jobs."""
    if _flush_each_job and (_tracing or _metrics):
        flush()


@functools.lru_cache(maxsize=8)
def _db_attributes(url: str) -> tuple[tuple[str, Any], ...]:
    parts = urlsplit(url)
    return (
        ("db.system.name", "postgresql"),
        ("db.system", "postgresql"),
        ("db.namespace", parts.path.lstrip("/") or None),
        ("server.address", parts.hostname),
        ("server.port", parts.port or (5432 if parts.hostname else None)),
    )


def db_span(summary: str, database_url: str) -> contextlib.AbstractContextManager[Span | None]:
    """A PostgreSQL client span for one transaction, named by its summary (semconv
    `db.query.summary`)."""
    if not enabled():
        return _OFF
    attributes = dict(_db_attributes(database_url))
    attributes["db.query.summary"] = summary
    return _span(summary, "client", attributes, None, None)


def traced(carrier: dict[str, Any]) -> dict[str, Any]:
    """`carrier` with the current trace context written into it (unchanged when off)."""
    inject(carrier)
    return carrier
