"""Observability for every layer: OpenTelemetry traces and metrics (off, and free, unless the
standard OTEL_* variables ask for them) and log lines as text or JSON. Part of the foundation:
it imports nothing above it."""
