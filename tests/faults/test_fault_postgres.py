"""PostgreSQL faults: a backend terminated mid-transaction, and a server (of the test's own)
stopped for 10 s mid-job. The attempt fails cleanly, a retry succeeds, no task is doubled."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Processes

from faults.faultkit import (
    attempt_history,
    check_invariants,
    pg_terminate,
    run_slow_job,
    sleeping_backend,
    wait_final,
)
from phase1 import db, embedded
from phase1.context import build
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]


def test_backend_terminated_mid_transaction(
    make_settings: Callable[..., Settings], processes: Processes, record: Record
) -> None:
    ctx = build(make_settings(job_timeout=8))
    plan_id, job_id, worker = run_slow_job(ctx, processes, 2)
    backend = sleeping_backend(ctx.database_url)  # the worker's, in this test's database only
    assert backend is not None and pg_terminate(ctx.database_url, backend)
    terminated = time.monotonic()
    wait_final(ctx, [job_id], timeout=40)
    took = time.monotonic() - terminated
    assert worker.poll() is None
    check_invariants(ctx, [plan_id])
    history = attempt_history(ctx, job_id)
    assert history == ["failed", "completed"]
    record(
        "PostgreSQL backend terminated",
        "pg_terminate_backend of the job's connection mid-transaction",
        f"attempts {history}, tasks once",
        took,
    )
    ctx.close()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An embedded PostgreSQL of this test's own, migrated; stopped afterwards."""
    home = tmp_path / "pg"
    url = embedded.start_postgres(home)
    db.migrate(url)
    try:
        yield home, url
    finally:
        embedded.stop(home)


@pytest.mark.slow
def test_postgres_stopped_for_10_seconds(
    own_postgres: tuple[Path, str],
    make_settings: Callable[..., Settings],
    processes: Processes,
    record: Record,
) -> None:
    home, url = own_postgres
    # A retry 12 s after the failure comes once PostgreSQL is back (the default schedule of
    # 1, 5 and 30 s outlasts a 10 s outage too, in 36 s).
    settings = make_settings(
        database_url=url, job_timeout=8, max_retries=2, retry_intervals=[12, 12]
    )
    ctx = build(settings)
    plan_id, job_id, worker = run_slow_job(ctx, processes, 2)
    embedded.stop(home)
    stopped = time.monotonic()
    time.sleep(10)
    assert embedded.start_postgres(home) == url
    wait_final(ctx, [job_id], timeout=60)
    took = time.monotonic() - stopped
    assert worker.poll() is None  # and its connection pool recovered
    check_invariants(ctx, [plan_id])
    history = attempt_history(ctx, job_id)
    assert history[-1] == "completed" and set(history[:-1]) == {"failed"}
    record(
        "PostgreSQL stopped for 10 s",
        "embedded server stopped mid-job, started 10 s later",
        f"attempts {history} (failed ones unrecordable while down), tasks once",
        took,
    )
    ctx.close()
