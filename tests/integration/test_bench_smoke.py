"""The benchmark suite runs: `python -m bench --quick` against this test run's own Redis
database and PostgreSQL database. It checks that every section ran and wrote its results,
not the numbers (those are for bench/RESULTS.md and the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The sections `python -m bench` runs (run as a program: the tests import nothing of bench).
SECTIONS = {"overhead", "real_jobs", "latency", "http_latency", "start", "cost"}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_benchmark_runs_every_section(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--redis-url", redis_url),
            *("--database-url", database_url, "--out", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    table = (tmp_path / "latest.md").read_text()
    assert document["meta"]["mode"] == "quick"
    assert set(document["sections"]) == SECTIONS
    for name, section in document["sections"].items():
        assert "error" not in section, f"{name}: {section['error']}"
        if name == "http_latency" and "skipped" in section["raw"]:
            continue  # issue 4's module is not there yet: the runner says so in a note
        assert section["rows"], f"{name} produced no figures"
        for row in section["rows"]:
            assert row["phase1"] is not None and row["phase1"] > 0, row
            assert row["measure"] in table  # and the table shows it
    # Every comparison the issue asks for has a plain-RQ figure beside phase1's.
    measured = {r["measure"]: r for r in document["rows"]}
    assert measured["no-op jobs/s, 1 process"]["rq_worker"] > 0
    assert measured["no-op jobs/s, 1 process"]["rq_simple"] > 0
    assert measured["Phase 1 jobs/s (5 tasks each), 2 processes"]["rq_worker"] > 0
    assert "PG limit" in measured["Phase 1 jobs/s (5 tasks each), 2 processes"]["reference"]
    assert table.startswith("# phase1 benchmarks") and proc.stdout.startswith("# phase1 benchmarks")
