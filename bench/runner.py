"""`python -m bench`: run every benchmark, print the table, write bench/results/latest.*"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench import cost, latency, overhead, realjobs, report, start
from bench.env import BenchEnv, bench_env
from bench.report import Row, goal

SECTIONS = ("overhead", "real_jobs", "latency", "http_latency", "start", "cost")
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="phase1's benchmarks beside plain RQ, on the real Redis and PostgreSQL.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds each")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 5, quick 1)")
    parser.add_argument(
        "--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--redis-url", help="a Redis database to use as is (default: claim one)")
    parser.add_argument(
        "--database-url", help="a migrated PostgreSQL database to use as is (default: create one)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.md/json go")
    parser.add_argument("--rss-jobs", type=int, help="jobs in the RSS run (100,000; quick 1,500)")
    parser.add_argument(
        "--rss-seconds", type=float, help="time limit of the RSS run (default 60 s; 0: none)"
    )
    args = parser.parse_args(argv)
    only = set((args.only or ",".join(SECTIONS)).split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; of {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in only]
    args.reps = args.reps or (1 if args.quick else 5)
    args.rss_jobs = args.rss_jobs or (300 if args.quick else 100_000)
    if args.rss_seconds is None:
        args.rss_seconds = 10 if args.quick else 60
    args.rss_seconds = args.rss_seconds or float("inf")
    return args


def http_latency(env: BenchEnv) -> tuple[list[Row], dict[str, Any]]:
    """bench/http_latency.py (issue 4), when it is there: its `run(...)` gets the keyword
    arguments it names among redis_url, database_url, quick, reps, workdir."""
    if importlib.util.find_spec("bench.http_latency") is None:
        return [], {"skipped": "bench/http_latency.py is not there yet (issue 4)"}
    module = importlib.import_module("bench.http_latency")
    offered = {
        "redis_url": env.redis_url,
        "database_url": env.database_url,
        "quick": env.quick,
        "reps": env.reps,
        "workdir": env.workdir,
    }
    accepted = inspect.signature(module.run).parameters
    result: dict[str, Any] = module.run(**{k: v for k, v in offered.items() if k in accepted})
    names = {f.name for f in fields(Row)}
    rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in result.get("rows", [])]
    targets = result.get("targets_p99_ms", {})
    given = bool(rows)  # the module's own rows, when it makes them
    labels = getattr(module, "LABELS", {"approval": "approval (PATCH), idle"})
    for key, label in labels.items():
        times = result.get(key)
        if given or not isinstance(times, dict):
            continue
        for pct in ("p50", "p99"):
            name, _, when = label.partition(", ")
            row = Row("http", f"{name} {pct}, {when}, through waitress", "ms", times[f"{pct}_ms"])
            row.higher_is_better = False
            if pct == "p99" and key in targets:
                goal(row, at_most=float(targets[key]))
            rows.append(row)
    return rows, result


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows: list[Row] = []
    sections: dict[str, Any] = {}
    notes: list[str] = []
    failed = False
    load_rate = 10.0
    with bench_env(
        redis_url=args.redis_url, database_url=args.database_url, quick=args.quick, reps=args.reps
    ) as env:
        runs: dict[str, Callable[[], tuple[list[Row], dict[str, Any]]]] = {
            "overhead": lambda: overhead.run(env),
            "real_jobs": lambda: realjobs.run(env),
            "latency": lambda: latency.run(env, load_rate),
            "http_latency": lambda: http_latency(env),
            "start": lambda: start.run(env),
            "cost": lambda: cost.run(env, args.rss_jobs, args.rss_seconds),
        }
        for name in args.sections:
            print(f"bench: {name} …", file=sys.stderr, flush=True)
            began, load_before = time.monotonic(), os.getloadavg()[0]
            try:
                section_rows, raw = runs[name]()
            except Exception as exc:
                failed = True
                traceback.print_exc()
                sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
                notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
                continue
            if name == "real_jobs" and section_rows[0].phase1:
                # Load for the latency section: half of what phase1's two processes sustain.
                load_rate = max(2.0, min(200.0, section_rows[0].phase1 / 2))
            if name == "http_latency" and "skipped" in raw:
                notes.append(f"http_latency skipped: {raw['skipped']}")
            rows += section_rows
            sections[name] = {
                "rows": [r.__dict__ for r in section_rows],
                "raw": raw,
                "seconds": round(time.monotonic() - began, 1),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg()[0],
            }
    text, _ = report.write(rows, sections, notes, quick=args.quick, reps=args.reps, outdir=args.out)
    print(text)
    return 1 if failed else 0
