"""The HTTP latency benchmark runs end to end (its numbers are reported, not asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "http_latency.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_http_latency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_http_latency_bench_runs(pg_server_url: str) -> None:
    result = load().run(20, warmup=5, threads=2, database_url=pg_server_url)
    for name in ("approval", "polling", "approval_back_to_back", "polling_while_draining"):
        row = result[name]
        assert row["n"] == 20
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    for name in ("approval", "polling"):
        assert 0 <= result["server_within_target"][name] <= 1
    assert result["worker_processes"] == 1 and result["keepalive"] is True
