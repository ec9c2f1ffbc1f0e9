"""`phase1 worker --processes N`: N worker processes, restarted when they crash, stopped
together and within a bound.

Given a `run_child` function, the supervisor forks its children from itself, with every module
already imported, so a new worker starts in milliseconds rather than in a fresh interpreter's
second; otherwise each child is a new `python -m phase1 worker` process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from phase1.telemetry import tracing

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# A stopping child takes up to its shutdown timeout, then up to ~10 s more to interrupt the
# job and put it back; past that it is killed (its job is then recovered like a crashed one's).
STOP_GRACE = 15.0
QUICK_CRASH = 10.0  # a child that dies this soon after starting counts towards backoff
MAX_BACKOFF = 30.0
POLL = 0.1


class _Forked:
    """A child forked from this process, with the part of Popen's interface used below."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout)
            time.sleep(0.01)
        return code


@dataclass
class _Child:
    proc: subprocess.Popen[bytes] | _Forked
    started: float


def _forked(run_child: Callable[[list[str]], int], argv: list[str]) -> _Forked:
    """Fork; the child starts with the signal handlers a new interpreter has, runs
    `run_child(argv)` and exits with its code, never returning here."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write the parent's buffered output again
    # Held back until the child has its own handlers: this process's would pass the signal
    # on to the child's copy of the children.
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        return _Forked(pid)
    code = EXIT_FAILURE
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        code = run_child(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):
            tracing.flush()  # issue 24: os._exit skips the SDK's own export at exit
        os._exit(code)


@dataclass
class Supervisor:
    """Runs the children and decides the exit code; `run()` returns it."""

    argv: list[str]
    processes: int
    burst: bool
    shutdown_timeout: float
    run_child: Callable[[list[str]], int] | None = None
    children: dict[int, _Child] = field(default_factory=dict)
    respawn_at: list[float] = field(default_factory=list)
    stop_deadline: float | None = None
    quick_crashes: int = 0
    worst: int = EXIT_OK
    killed: bool = False

    def spawn(self) -> None:
        proc: subprocess.Popen[bytes] | _Forked
        if self.run_child is not None:
            proc = _forked(self.run_child, self.argv)
        else:
            proc = subprocess.Popen([sys.executable, "-m", "phase1", "worker", *self.argv])
        self.children[proc.pid] = _Child(proc, time.monotonic())

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass the signal on; the first one also starts the stop deadline. A later one is
        passed on too: it makes the children interrupt their jobs at once."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.shutdown_timeout + STOP_GRACE
            self.respawn_at.clear()
        for child in self.children.values():
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    @property
    def stopping(self) -> bool:
        return self.stop_deadline is not None

    def reap(self) -> None:
        for pid, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[pid]
            self.on_exit(pid, child, code)

    def on_exit(self, pid: int, child: _Child, code: int) -> None:
        if self.stopping or self.burst:
            if code != EXIT_OK:
                self.worst = max(self.worst, EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILURE)
            return
        if code == EXIT_USAGE:  # a bad setting: every replacement would fail the same way
            log.error(
                "worker process %s exited with %s (bad usage or setting); stopping", pid, code
            )
            self.worst = EXIT_USAGE
            self.stop(signal.SIGTERM)
            return
        lived = time.monotonic() - child.started
        self.quick_crashes = self.quick_crashes + 1 if lived < QUICK_CRASH else 0
        delay = min(MAX_BACKOFF, 2.0**self.quick_crashes - 1)
        log.warning(
            "worker process %s exited with %s; starting another in %.0f s", pid, code, delay
        )
        self.respawn_at.append(time.monotonic() + delay)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        for _ in range(self.processes):
            self.spawn()
        while self.children or self.respawn_at:
            self.reap()
            moment = time.monotonic()
            for due in [t for t in self.respawn_at if t <= moment]:
                self.respawn_at.remove(due)
                self.spawn()
            if self.stop_deadline is not None and moment > self.stop_deadline and self.children:
                self.kill_all()
            time.sleep(POLL)
        if self.killed:
            self.worst = max(self.worst, EXIT_FAILURE)
        return self.worst

    def kill_all(self) -> None:
        log.error(
            "worker processes %s did not stop within %.0f s; killing them",
            sorted(self.children),
            self.shutdown_timeout + STOP_GRACE,
        )
        self.killed = True
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        for child in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)


def supervise(
    argv: list[str],
    processes: int,
    *,
    burst: bool,
    shutdown_timeout: float = 30.0,
    run_child: Callable[[list[str]], int] | None = None,
) -> int:
    """Run `processes` worker processes (each `phase1 worker <argv>`: forked from this one to
    run `run_child(argv)` when that is given, else started afresh), restart one that
    crashes (with backoff; not in burst mode, nor after a bad-usage exit), pass SIGINT/SIGTERM
    on to all of them, and kill those still running `shutdown_timeout` + STOP_GRACE seconds
    after the first signal.

    Exit code: 0 when every child stopped cleanly, 2 when a child reported bad usage,
    1 otherwise (a child failed, or had to be killed).
    """
    return Supervisor(argv, processes, burst, shutdown_timeout, run_child).run()
