"""phase1.embedded against real redis-server and PostgreSQL processes (no mocks).

Every server started here lives under a tmp_path home and is stopped at teardown; the shared
servers on 6379/5432 only ever get read-only pings (through `resolve`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from phase1 import embedded
from phase1.errors import UnavailableError
from phase1.settings import DEFAULT_REDIS_URL, Settings


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    embedded.stop(home)  # whatever a test left running


def test_start_redis_reuses_the_running_server_and_stop_kills_it(home: Path) -> None:
    url = embedded.start_redis(home)
    assert url.startswith("redis://127.0.0.1:")
    assert embedded.start_redis(home) == url
    assert ping(url)
    pid = int((home / "redis" / "redis.pid").read_text())
    assert running(pid)
    assert (home / "redis" / "url").read_text().strip() == url
    assert embedded.status(home) == {"redis": url, "postgres": None}

    assert embedded.stop(home) == ["redis"]

    assert not running(pid)
    assert not ping(url)
    assert not (home / "redis" / "url").exists()
    assert embedded.status(home) == {"redis": None, "postgres": None}
    assert embedded.stop(home) == []


def test_start_redis_after_stop_starts_a_new_server(home: Path) -> None:
    embedded.start_redis(home)
    first = int((home / "redis" / "redis.pid").read_text())
    embedded.stop(home)
    url = embedded.start_redis(home)
    second = int((home / "redis" / "redis.pid").read_text())
    assert second != first
    assert running(second)
    assert not running(first)
    assert ping(url)
    assert embedded.status(home)["redis"] == url


def test_concurrent_callers_share_one_redis(home: Path) -> None:
    code = "import sys; from pathlib import Path; from phase1.embedded import start_redis; "
    code += "print(start_redis(Path(sys.argv[1])))"
    callers = [
        subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    urls = [caller.communicate(timeout=60)[0].strip() for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0]
    assert urls[0] == urls[1]
    assert ping(urls[0])


def test_start_redis_failure_names_the_log_file(home: Path) -> None:
    (home / "redis" / "redis.log").mkdir(parents=True)  # redis-server cannot open its log
    with pytest.raises(UnavailableError, match=r"cannot start embedded Redis: .*redis\.log"):
        embedded.start_redis(home)


def test_resolve_keeps_explicit_urls(home: Path) -> None:
    settings = Settings(
        redis_url="redis://redis.invalid:6380/2",
        database_url="postgresql://db.invalid:5433/other",
        home=home,
    )
    resolved = embedded.resolve(settings)
    assert resolved.redis_url == "redis://redis.invalid:6380/2"
    assert resolved.database_url == "postgresql://db.invalid:5433/other"
    assert not home.exists()  # nothing probed, nothing started


def test_resolve_fills_an_unset_redis_url(home: Path) -> None:
    settings = Settings(redis_url=None, database_url="postgresql://db.invalid/x", home=home)
    default_answers = ping(DEFAULT_REDIS_URL)  # read-only probe of the shared server
    resolved = embedded.resolve(settings)
    assert resolved.database_url == "postgresql://db.invalid/x"
    if default_answers:
        assert resolved.redis_url == DEFAULT_REDIS_URL
        assert embedded.status(home)["redis"] is None
    else:
        assert resolved.redis_url == embedded.status(home)["redis"]
        assert resolved.redis_url is not None and ping(resolved.redis_url)


@pytest.mark.slow
def test_start_postgres_creates_phase1_and_stop_stops_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Undone at teardown: start_postgres sets XDG_RUNTIME_DIR when it is unset.
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    url = embedded.start_postgres(home)
    assert url.startswith("postgresql://")
    assert embedded.start_postgres(home) == url
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1, current_database()").fetchone() == (1, "phase1")
        names = conn.execute("SELECT datname FROM pg_database").fetchall()
        assert ("phase1",) in names
    assert embedded.status(home)["postgres"] == url
    pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert running(pid)

    assert embedded.stop(home) == ["postgres"]

    deadline = time.monotonic() + 5
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)
    assert embedded.status(home) == {"redis": None, "postgres": None}
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()

    # A stopped server starts again in the same process (no stale handle is reused).
    assert embedded.start_postgres(home) == url
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert embedded.stop(home) == ["postgres"]


def test_embedded_redis_keeps_its_data_and_its_port_across_a_stop(home: Path) -> None:
    """AOF with fsync every second, and the port kept in PHASE1_HOME: a stop (or a reboot)
    loses neither the DLQ nor the URL printed before it."""
    url = embedded.start_redis(home)
    client = redis.Redis.from_url(url)
    client.set("phase1:test:kept", "yes")
    client.zadd("phase1:test:dlq", {"job": 1.0})
    # The append-only file holds the writes once fsynced (every second).
    aof = home / "redis" / "appendonly.aof"
    deadline = time.monotonic() + 10
    while b"phase1:test:dlq" not in (aof.read_bytes() if aof.exists() else b""):
        assert time.monotonic() < deadline, "the writes never reached the append-only file"
        time.sleep(0.05)
    client.close()
    assert embedded.stop(home) == ["redis"]

    assert embedded.start_redis(home) == url
    client = redis.Redis.from_url(url)
    try:
        assert client.get("phase1:test:kept") == b"yes"
        assert client.zscore("phase1:test:dlq", "job") == 1.0
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


def test_embedded_redis_takes_another_port_when_its_own_is_taken(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    url = embedded.start_redis(home)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    embedded.stop(home)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with caplog.at_level("WARNING", logger="phase1.embedded"):
            moved = embedded.start_redis(home)
    assert moved != url and ping(moved)
    assert f"port {port} of the embedded Redis is taken by another program" in caplog.text
    embedded.stop(home)
    assert embedded.start_redis(home) == moved  # the new port is the one kept from now on
