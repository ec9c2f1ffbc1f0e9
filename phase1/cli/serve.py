"""`phase1 serve` (the HTTP API on waitress) and `phase1 up` (HTTP and supervised workers)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import typer

from phase1 import db
from phase1.cli.common import EXIT_USAGE, fail, state, stderr
from phase1.settings import Settings, redact_url

RESTART_DELAY = 1.0  # seconds before a crashed worker process is started again

HOST_OPTION = typer.Option("127.0.0.1", "--host", help="Address to listen on.")
PORT_OPTION = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on.")
THREADS_OPTION = typer.Option(
    8, "--threads", min=1, max=256, help="Request threads (and PostgreSQL connections)."
)


def _stop_on_sigterm() -> None:
    """SIGTERM stops the server like Ctrl-C: waitress finishes the requests in flight."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def open_api_warning(settings: Settings, addresses: list[str]) -> str | None:
    """The warning for an API without a token: what is open, and to whom."""
    if settings.api_token is not None:
        return None
    warning = (
        "warning: PHASE1_API_TOKEN is not set: the /api/ routes need no token, so any client "
        "can approve and reject plans"
    )
    exposed = [address for address in addresses if not is_loopback(address)]
    if exposed:
        warning += (
            f"; listening on {', '.join(exposed)}, which is not loopback: anyone who can reach "
            "it can approve plans. Set PHASE1_API_TOKEN"
        )
    return warning


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return address == "localhost"


def run_server(settings: Settings, host: str, port: int, threads: int) -> None:
    """Serve the API on waitress until SIGINT/SIGTERM, then close the connections."""
    from phase1.http import create_app
    from phase1.http.server import create_server

    app = create_app(settings, threads=threads)
    try:
        server = create_server(app, host=host, port=port, threads=threads)
    except OSError as exc:
        app.close()
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except ValueError:  # waitress: the host does not resolve
        app.close()
        raise fail(f"invalid --host {host!r}: not an address of this machine", EXIT_USAGE) from None
    _stop_on_sigterm()
    addresses = [str(s.effective_host) for s in [server, *server.siblings]]
    warning = open_api_warning(settings, addresses)
    if warning is not None:
        stderr().print(warning, markup=False, highlight=False)
    stderr().print(
        f"phase1: serving http://{host}:{server.effective_port} ({threads} threads; "
        f"Redis {redact_url(settings.redis_url or '')}, "
        f"PostgreSQL {redact_url(settings.database_url or '')}, "
        f"approval mode {settings.approval_mode})",
        highlight=False,
    )
    try:
        server.run()  # returns after Ctrl-C/SIGTERM, once in-flight requests are answered
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            server.close()
        app.close()
        stderr().print("phase1: server stopped", highlight=False)


def serve(
    ctx: typer.Context,
    host: str = HOST_OPTION,
    port: int = PORT_OPTION,
    threads: int = THREADS_OPTION,
) -> None:
    """Serve the HTTP API (approval, job polling, health, metrics, OpenAPI) on waitress.

    Starts even when Redis or PostgreSQL is down: requests then answer 503 and /readyz says
    which one. Without PHASE1_API_TOKEN it warns that the /api/ routes are open. Ctrl-C or
    SIGTERM stops it after the requests in flight.

    Example: phase1 serve --port 8000
    """
    run_server(state(ctx).resolved(), host, port, threads)


class WorkerSupervisor:
    """Runs `phase1 worker --processes N` and starts it again when it dies unasked."""

    def __init__(self, argv: list[str], env: dict[str, str], shutdown_timeout: float) -> None:
        self.argv = argv
        self.env = env
        self.shutdown_timeout = shutdown_timeout
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.restarts = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="phase1-workers", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        # A session of its own: a terminal's Ctrl-C reaches `up` alone, which then sends the
        # workers exactly one SIGTERM (a second signal would make RQ stop cold).
        self.child = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            with self._lock:
                child = self.child
                if child is None or child.poll() is None or self.stopping.is_set():
                    continue
                _kill_group(child)
                stderr().print(
                    f"phase1: workers exited with {child.returncode}; restarting", highlight=False
                )
            if self.stopping.wait(RESTART_DELAY):
                return
            with self._lock:
                if not self.stopping.is_set():
                    self.restarts += 1
                    self._spawn()

    def stop(self) -> int | None:
        """SIGTERM the workers (warm shutdown), SIGKILL after the shutdown timeout."""
        with self._lock:
            self.stopping.set()
            child = self.child
        if child is None or child.poll() is not None:
            return None if child is None else child.returncode
        child.send_signal(signal.SIGTERM)
        try:
            return child.wait(timeout=self.shutdown_timeout + 10)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return child.wait(timeout=10)
        finally:
            _kill_group(child)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a worker's process group once the worker itself is gone.

    RQ runs its scheduler in a forked child: when the worker is killed, that orphan keeps the
    worker's Redis socket open, and a BLPOP the worker was blocked in then swallows the next
    job pushed to the queue (measured: the job stays `queued`, in no queue). Killing the
    group closes that socket."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def up(
    ctx: typer.Context,
    processes: int = typer.Option(
        1, "--processes", "-p", min=1, max=64, help="Worker processes to run (supervised)."
    ),
    host: str = HOST_OPTION,
    port: int = PORT_OPTION,
    threads: int = THREADS_OPTION,
) -> None:
    """Migrate, then run the HTTP API and N worker processes together (for development).

    With no REDIS_URL/DATABASE_URL and nothing on the default addresses it runs embedded
    Redis and PostgreSQL. Crashed workers are started again; Ctrl-C or SIGTERM stops the
    server, then the workers (each finishes its job first, up to PHASE1_SHUTDOWN_TIMEOUT).
    Without PHASE1_API_TOKEN it warns that the /api/ routes are open.

    Example: phase1 up --processes 2 --port 8000
    """
    settings = state(ctx).resolved()
    assert settings.redis_url and settings.database_url
    db.migrate(settings.database_url)
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
    argv = [sys.executable, "-m", "phase1", "worker", "--processes", str(processes)]
    workers = WorkerSupervisor(argv, env, settings.shutdown_timeout)
    # Signals that arrive before the server is up must stop `up` the same way.
    _stop_on_sigterm()
    workers.start()
    started = time.monotonic()
    try:
        run_server(settings, host, port, threads)
    finally:
        stderr().print("phase1: stopping workers", highlight=False)
        code = workers.stop()
        stderr().print(
            f"phase1: workers stopped ({code}) after {time.monotonic() - started:.1f}s; "
            f"{workers.restarts} restart(s)",
            highlight=False,
        )
