"""The OpenTelemetry SDK set up from its standard OTEL_* variables (the `phase1[otel]` extra).

Imported by telemetry.tracing only when OTEL_* ask for an exporter; an ImportError here means the
extra is not installed. The SDK reads its own variables (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*,
OTEL_METRIC_EXPORT_INTERVAL); this module only picks the exporter that OTEL_TRACES_EXPORTER /
OTEL_METRICS_EXPORTER name, through the entry points the exporter packages register.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from phase1.errors import ConfigError

_providers: list[Any] = []


def _resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES as the SDK reads them; `phase1` when they
    name no service."""
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return Resource.create({} if named else {"service.name": "phase1"})


def _exporters(signal: str) -> list[Any]:
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    found = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = os.environ.get(
                f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol not in ("http/protobuf", "grpc"):
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not http/protobuf or grpc"
                )
            name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        group = f"opentelemetry_{signal}_exporter"
        matches = list(entry_points(group=group, name=name))
        if not matches:
            raise ConfigError(
                f"{variable}: no installed exporter named {name!r} "
                "(phase1[otel] ships OTLP over HTTP and `console`)"
            )
        found.append(matches[0].load()())
    return found


def setup_traces() -> bool:
    exporters = _exporters("traces")
    if not exporters:
        return False
    provider = TracerProvider(resource=_resource())  # the sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _providers.append(provider)
    return True


def setup_metrics() -> bool:
    exporters = _exporters("metrics")
    if not exporters:
        return False
    readers = [PeriodicExportingMetricReader(exporter) for exporter in exporters]
    provider = MeterProvider(metric_readers=readers, resource=_resource())
    metrics.set_meter_provider(provider)
    _providers.append(provider)
    return True


def flush(timeout_ms: int) -> None:
    for provider in _providers:
        provider.force_flush(timeout_ms)
