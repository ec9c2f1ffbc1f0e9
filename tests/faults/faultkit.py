"""What the fault tests share: servers of their own, workers, waiting, and the invariants."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis
from support import PHASE1, Processes, inject_fault, wait_until

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval, deadletter, events
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
FINAL = ("completed", "failed")
SAMPLE_KEYS = [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on a free port: it may be stopped, killed, paused or
    flushed without touching anybody else's data."""

    def __init__(self, home: Path, *, aof: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = home / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        command = [
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
            *("--save", "", "--appendonly", "yes" if self.aof else "no"),
            *(("--appendfsync", "always") if self.aof else ()),
            *self.extra,
        ]
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.answers, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        client = Redis.from_url(self.url, socket_connect_timeout=0.3, socket_timeout=0.3)
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.kill()


def worker_env(reconcile_interval: float = 1.0, grace: float = 1.0) -> dict[str, str]:
    return {
        "PHASE1_RECONCILE_INTERVAL": str(reconcile_interval),
        "PHASE1_RECONCILE_GRACE": str(grace),
    }


def start_worker(
    processes: Processes, settings: Settings, *args: str, **env: Any
) -> subprocess.Popen[bytes]:
    """`phase1 worker ARGS` with short reconciler timings."""
    return processes.start([PHASE1, "worker", *args], settings, env=worker_env(**env))


def make_plans(ctx: Phase1, count: int) -> list[uuid.UUID]:
    with ctx.transaction() as conn:
        return [plans.create_plan(conn, f"Plan {i}", SAMPLE_ANALYSIS).id for i in range(count)]


def approve_all(ctx: Phase1, plan_ids: list[uuid.UUID]) -> list[str]:
    return [approval.approve(ctx, plan_id).job_id for plan_id in plan_ids]


def approve_slow(ctx: Phase1, sleep_s: float) -> tuple[uuid.UUID, str]:
    """A plan whose job spends `sleep_s` seconds inside PostgreSQL (each attempt), approved."""
    plan_id = make_plans(ctx, 1)[0]
    inject_fault(ctx.database_url, plan_id, fail_times=0, sleep_s=sleep_s)
    return plan_id, approval.approve(ctx, plan_id).job_id


def wait_running(ctx: Phase1, job_id: str) -> None:
    wait_until(
        lambda: status(ctx, job_id) == "active" and sleeping_backend(ctx.database_url),
        timeout=30,
        what=f"job {job_id} running inside PostgreSQL",
    )


def run_slow_job(
    ctx: Phase1, processes: Processes, sleep_s: float, *worker_args: str
) -> tuple[uuid.UUID, str, subprocess.Popen[bytes]]:
    """Approve a slow job, start a worker, and return once the job runs inside PostgreSQL."""
    plan_id, job_id = approve_slow(ctx, sleep_s)
    worker = start_worker(processes, ctx.settings, *worker_args)
    wait_running(ctx, job_id)
    return plan_id, job_id, worker


def attempt_history(ctx: Phase1, job_id: str) -> list[str]:
    with ctx.transaction() as conn:
        rows = conn.execute(
            "SELECT status FROM marketplace_job_attempts WHERE job_id = %s ORDER BY attempt",
            (job_id,),
        ).fetchall()
    return [r["status"] for r in rows]


def status(ctx: Phase1, job_id: str) -> str:
    with ctx.transaction() as conn:
        row = conn.execute(
            "SELECT status FROM marketplace_job_executions WHERE job_id = %s", (job_id,)
        ).fetchone()
    return row["status"] if row else "missing"


def statuses(ctx: Phase1, job_ids: list[str]) -> dict[str, int]:
    with ctx.transaction() as conn:
        rows = conn.execute(
            "SELECT status, count(*) AS n FROM marketplace_job_executions "
            "WHERE job_id = ANY(%s) GROUP BY status",
            (job_ids,),
        ).fetchall()
    return {r["status"]: int(r["n"]) for r in rows}


def wait_final(ctx: Phase1, job_ids: list[str], timeout: float, what: str = "") -> float:
    """Wait until every job is completed or failed; returns the seconds it took."""
    started = time.monotonic()

    def done() -> bool:
        counts = statuses(ctx, job_ids)
        return sum(counts.get(s, 0) for s in FINAL) == len(job_ids)

    wait_until(done, timeout=timeout, interval=0.2, what=what or f"{len(job_ids)} job(s) final")
    return time.monotonic() - started


def sleeping_backend(database_url: str) -> int | None:
    """The PID of a phase1 backend in this database that sits in pg_sleep (an injected slow
    job), or None."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'phase1 %' AND wait_event = 'PgSleep' LIMIT 1"
        ).fetchone()
    return int(row[0]) if row else None


def children(pid: int) -> list[tuple[int, int]]:
    """(pid, process group) of each child of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((int(entry.name), int(fields[2])))
    return found


def horse_of(worker_pid: int) -> int | None:
    """A forking worker's work horse: the child that leads its own process group (the
    scheduler child stays in the worker's group)."""
    for child, group in children(worker_pid):
        if child == group:
            return child
    return None


def exit_within(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - started


SQL_INVARIANTS = """
SELECT p.id AS plan_id, p.status AS plan_status, e.job_id, e.status,
  jsonb_array_length(p.analysis -> 'phase1') AS expected,
  (SELECT count(*) FROM marketplace_tasks t WHERE t.plan_id = p.id) AS tasks,
  (SELECT count(DISTINCT t.task_key) FROM marketplace_tasks t WHERE t.plan_id = p.id) AS keys,
  COALESCE((SELECT array_agg(a.attempt ORDER BY a.attempt)
            FROM marketplace_job_attempts a WHERE a.job_id = e.job_id), '{}') AS attempts,
  COALESCE((SELECT array_agg(a.status ORDER BY a.attempt)
            FROM marketplace_job_attempts a WHERE a.job_id = e.job_id), '{}') AS attempt_statuses
FROM marketplace_plans p LEFT JOIN marketplace_job_executions e ON e.plan_id = p.id
WHERE p.id = ANY(%s)
"""


@dataclass
class Outcome:
    completed: int
    failed: int
    attempts: dict[str, list[str]]


def check_invariants(
    ctx: Phase1, plan_ids: list[uuid.UUID], *, events_kept: bool = True
) -> Outcome:
    """Every approved plan has exactly its tasks, once; every job is completed, or failed and in
    the DLQ; attempt numbers run 1..n with none left `active`; one job:completed event each."""
    with ctx.transaction() as conn:
        rows = conn.execute(SQL_INVARIANTS, (plan_ids,)).fetchall()
    assert len(rows) == len(plan_ids)
    completed = failed = 0
    history: dict[str, list[str]] = {}
    for row in rows:
        where = f"plan {row['plan_id']} job {row['job_id']}"
        assert row["plan_status"] == "approved", where
        assert row["job_id"] is not None, f"{where}: approved without an execution row"
        assert row["status"] in FINAL, f"{where}: stuck in {row['status']}"
        assert row["attempts"] == list(range(1, len(row["attempts"]) + 1)), f"{where}: gaps"
        assert "active" not in row["attempt_statuses"], f"{where}: {row['attempt_statuses']}"
        history[row["job_id"]] = row["attempt_statuses"]
        if row["status"] == "completed":
            completed += 1
            assert row["tasks"] == row["expected"] == row["keys"], f"{where}: {row['tasks']} tasks"
            assert row["attempt_statuses"][-1] == "completed", where
        else:
            failed += 1
            assert row["tasks"] == 0, f"{where}: failed but has tasks"
            assert deadletter.get(ctx.redis, ctx.settings.queue, row["job_id"]), where
    if events_kept:
        seen: dict[str, int] = {}
        for _, event in events.read(ctx.redis, ctx.settings.queue):
            if event.type == events.COMPLETED:
                seen[event.jobId] = seen.get(event.jobId, 0) + 1
        doubled = {job: n for job, n in seen.items() if n > 1}
        assert not doubled, f"jobs completed more than once: {doubled}"
    return Outcome(completed, failed, history)


def pg_terminate(database_url: str, pid: int) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid = %s AND datname = current_database()",
            (pid,),
        ).fetchone()
    return bool(row and row[0])


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
