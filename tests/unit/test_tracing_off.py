"""Tracing off costs nothing (phase1 imports none of OpenTelemetry for it), the SDK starts only when
OTEL_* ask for an exporter, and PHASE1_LOG_FORMAT=json writes one object per line with the
job's fields. No server needed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from phase1.errors import ConfigError
from phase1.telemetry import logs as logformat
from phase1.telemetry import tracing


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**clean, **env},
    ).stdout
    return out.strip().splitlines()[-1]


def test_with_no_otel_variables_a_worker_never_imports_opentelemetry() -> None:
    loaded = run(
        """
        import json, sys
        import phase1.jobs.phase1_job, phase1.runtime.worker, phase1.http.app
        from phase1.telemetry import tracing
        tracing.configure()
        assert not tracing.enabled()
        with tracing.span("x") as span, tracing.db_span("y", "postgresql://h/db"):
            assert span is None
        meta = {"planId": "p"}
        tracing.inject(meta)
        assert meta == {"planId": "p"}
        print(json.dumps(sorted(sys.modules)))
        """
    )
    # redis-py (8.x) imports OpenTelemetry's metrics API itself when it is installed; phase1
    # loads neither the SDK's tracing, nor its propagators, nor its own SDK set-up.
    modules = set(json.loads(loaded))
    assert not modules & {
        "phase1.telemetry.sdk",
        "opentelemetry.propagate",
        "opentelemetry.sdk.trace",
    }


def test_the_sdk_starts_when_an_otlp_endpoint_is_set() -> None:
    code = "from phase1.telemetry import tracing; print(tracing.configure())"
    assert run(code, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1") == "True"
    assert run(code, OTEL_TRACES_EXPORTER="console") == "True"
    assert run(code, OTEL_TRACES_EXPORTER="none") == "False"
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}
    assert run(code, **disabled) == "False"


def test_a_bad_exporter_name_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "bogus")
    tracing.reset_for_tests()
    try:
        with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER.*bogus"):
            tracing.configure()
        tracing.reset_for_tests()
        assert tracing.configure(strict=False) is False  # inside a job: logged, tracing off
    finally:
        tracing.reset_for_tests()


def test_json_lines_carry_the_job_fields() -> None:
    record = logging.LogRecord("phase1.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None)
    plain = json.loads(logformat.JsonFormatter().format(record))
    assert plain["message"] == "hi there" and plain["level"] == "WARNING"
    assert plain["logger"] == "phase1.x" and plain["ts"].endswith("Z")
    assert "job_id" not in plain
    token = logformat.set_job("job-1", "plan-1")
    try:
        logformat.set_attempt(2)
        line = json.loads(logformat.JsonFormatter().format(record))
    finally:
        logformat.job_fields.reset(token)
    assert (line["job_id"], line["plan_id"], line["attempt"]) == ("job-1", "plan-1", 2)
    assert isinstance(logformat.formatter("text"), logging.Formatter)
    assert not isinstance(logformat.formatter("text"), logformat.JsonFormatter)
