"""Helpers for tests: settings as an environment, subprocesses, polling."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import with_db

from phase1.settings import Settings

__all__ = ["with_db"]  # re-exported: tests build database URLs with it

BIN = Path(sys.executable).parent
PHASE1 = str(BIN / "phase1")
RQ = str(BIN / "rq")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASE1_")}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    env["REDIS_URL"] = settings.redis_url or ""
    env["DATABASE_URL"] = settings.database_url or ""
    env["PHASE1_QUEUE"] = settings.queue
    env["PHASE1_MAX_RETRIES"] = str(settings.max_retries)
    env["PHASE1_RETRY_INTERVALS"] = ",".join(str(i) for i in settings.retry_intervals)
    env["PHASE1_JOB_TIMEOUT"] = str(settings.job_timeout)
    env["PHASE1_SHUTDOWN_TIMEOUT"] = str(settings.shutdown_timeout)
    env["PHASE1_APPROVAL_MODE"] = settings.approval_mode
    env["PHASE1_ORPHAN_AFTER"] = str(settings.orphan_after)
    if settings.webhook_urls:
        env["PHASE1_WEBHOOK_URLS"] = ",".join(settings.webhook_urls)
    if settings.webhook_secret:
        env["PHASE1_WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
    if settings.api_token:
        env["PHASE1_API_TOKEN"] = settings.api_token.get_secret_value()
    if settings.console_write:
        env["PHASE1_CONSOLE_WRITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    """Subprocesses a test starts; all stopped (TERM, then KILL) when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], settings: Settings, *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"proc-{len(self.started)}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**settings_env(settings), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def worker(self, settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        return self.start([PHASE1, "worker", *args], settings)

    def rq_worker(self, settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        return self.start(
            [
                RQ,
                "worker",
                settings.queue,
                "--with-scheduler",
                "--serializer",
                "rq.serializers.JSONSerializer",
                "--url",
                settings.redis_url or "",
                *args,
            ],
            settings,
        )

    def log(self, index: int = 0) -> str:
        return (self.tmp_path / f"proc-{index}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


FAULTS_SQL = """
CREATE TABLE IF NOT EXISTS test_faults (
  plan_id UUID PRIMARY KEY, fail_times INT NOT NULL, sleep_s FLOAT NOT NULL DEFAULT 0
);
CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger AS $$
DECLARE
  f test_faults%ROWTYPE;
  seq TEXT := 'test_fault_' || replace(NEW.plan_id::text, '-', '');
BEGIN
  -- Once per attempt: the first task of the plan.
  IF NEW.position <> 0 THEN RETURN NEW; END IF;
  SELECT * INTO f FROM test_faults WHERE plan_id = NEW.plan_id;
  IF NOT FOUND THEN RETURN NEW; END IF;
  IF f.sleep_s > 0 THEN PERFORM pg_sleep(f.sleep_s); END IF;
  -- A sequence, because it keeps counting when the transaction rolls back.
  IF to_regclass(seq) IS NOT NULL AND nextval(seq::regclass) <= f.fail_times THEN
    RAISE EXCEPTION 'injected fault for plan %', NEW.plan_id;
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
-- Created once: creating a trigger locks the table against the INSERTs of any job under way
-- (another plan's job sleeping in this trigger, say), and would wait for them to commit.
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger
                 WHERE tgname = 'test_fault' AND tgrelid = 'marketplace_tasks'::regclass) THEN
    CREATE TRIGGER test_fault BEFORE INSERT ON marketplace_tasks
      FOR EACH ROW EXECUTE FUNCTION test_fault();
  END IF;
END $$;
"""


def inject_fault(database_url: str, plan_id: Any, *, fail_times: int, sleep_s: float = 0) -> None:
    """Make the next `fail_times` attempts to create this plan's tasks raise in PostgreSQL
    (after sleeping `sleep_s`): a real failure in the real code path, in the test's own
    database."""
    import psycopg

    seq = "test_fault_" + str(plan_id).replace("-", "")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")  # two tests installing at once
        try:
            conn.execute(FAULTS_SQL)
        finally:
            conn.execute("SELECT pg_advisory_unlock(4242)")
        conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {seq}")
        conn.execute(
            "INSERT INTO test_faults (plan_id, fail_times, sleep_s) VALUES (%s, %s, %s) "
            "ON CONFLICT (plan_id) DO UPDATE SET fail_times = EXCLUDED.fail_times, "
            "sleep_s = EXCLUDED.sleep_s",
            (str(plan_id), fail_times, sleep_s),
        )


def run_in_terminal(
    argv: list[str],
    env: dict[str, str],
    *,
    columns: int = 120,
    lines: int = 40,
    timeout: float = 60,
    until: Callable[[str], bool] | None = None,
) -> tuple[int | None, str, bytes]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal of the given size.

    Returns the exit code (None if it was still running when `until(screen)` became true or
    `timeout` passed; it is then stopped), the final screen as plain text as a terminal would
    show it (escape codes interpreted by pyte), and the raw bytes written.
    """
    import fcntl
    import pty
    import select
    import struct
    import termios

    import pyte

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)}
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    screen = pyte.Screen(columns, lines)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + timeout

    def text() -> str:
        return "\n".join(line.rstrip() for line in screen.display).rstrip()

    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                raw.extend(chunk)
                stream.feed(chunk)
            elif proc.poll() is not None:
                break
            if until is not None and until(text()):
                break
    finally:
        os.close(master)
        code = proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    return code, text(), bytes(raw)


# The polling route's and `phase1 status --json`'s keys (DESIGN §4): a contract.
JOB_VIEW_KEYS = frozenset(
    {
        "jobId",
        "planId",
        "status",
        "progress",
        "attempt",
        "maxAttempts",
        "result",
        "error",
        "enqueuedAt",
        "startedAt",
        "completedAt",
        "nextRetryAt",
    }
)


def child_pids(pid: int, *, zombies: bool = False) -> list[int]:
    """The live child processes of `pid` (from /proc); with `zombies`, exited ones its parent
    has not reaped yet too."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            children.append(int(entry.name))
    return children


def horse_pid(worker_pid: int) -> int | None:
    """The work horse of a forking RQ worker: the child that leads its own process group
    (RQ's horse calls setpgrp; the scheduler child does not)."""
    for child in child_pids(worker_pid):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(child) == child:
                return child
    return None


def run_threads(threads: int, action: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Call `action()` from `threads` threads released together; returns the results and the
    exceptions raised."""
    import threading

    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        try:
            results.append(action())
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results, errors


def run_concurrently(
    settings: Settings, action: Callable[[Any], Any], threads: int
) -> tuple[list[Any], list[BaseException]]:
    """`run_threads`, each thread with a Phase1 context of its own for `action(ctx)`."""
    from phase1.context import build

    def with_own_context() -> Any:
        own = build(settings)
        try:
            return action(own)
        finally:
            own.close()

    return run_threads(threads, with_own_context)


def count_thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the name of every thread this process starts is appended to the list."""
    import threading

    starts: list[str] = []
    original = threading.Thread.start

    def counting(self: threading.Thread) -> None:
        starts.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", counting)
    return starts


class RoundTrips:
    """Redis round trips of this process, counted as the benchmark counts them (every write
    of a request to a Redis socket)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
