"""Shared fixtures: real Redis and PostgreSQL of the tests' own, and real phase1 processes.

Redis: a database number this run claims for itself (never FLUSHALL, never db 0), on
PHASE1_TEST_REDIS_URL, the default address, or an embedded server. PostgreSQL: a database
created for this run and dropped after it, on PHASE1_TEST_DATABASE_URL's server, the default
address, or an embedded server. Each test gets a queue name of its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.connection import AbstractConnection
from servers import NoFreeDatabase, claimed_redis, own_database
from support import Processes, RoundTrips

from phase1.context import Phase1, build
from phase1.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_HOME = ROOT / ".phase1" / "test-servers"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def embedded_servers() -> Iterator[Path]:
    """Where embedded servers live when the machine has none; stopped after the run."""
    try:
        yield EMBEDDED_HOME
    finally:
        if EMBEDDED_HOME.exists():
            from phase1.embedded import stop

            stop(EMBEDDED_HOME)


@pytest.fixture(scope="session")
def redis_server_url(embedded_servers: Path) -> str:
    url = os.environ.get("PHASE1_TEST_REDIS_URL")
    if url:
        return url
    if _answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379"
    from phase1.embedded import start_redis

    return start_redis(embedded_servers).rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database number claimed for this test run (1-15), emptied before use."""
    try:
        with claimed_redis(redis_server_url, holder=str(os.getpid())) as url:
            yield url
    except NoFreeDatabase as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def pg_server_url(embedded_servers: Path) -> str:
    url = os.environ.get("PHASE1_TEST_DATABASE_URL")
    if url:
        return url
    if _answers("127.0.0.1", 5432):
        return "postgresql://127.0.0.1:5432/postgres"
    from phase1.embedded import start_postgres

    return start_postgres(embedded_servers)


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    """A database of this run's own, migrated, dropped afterwards."""
    with own_database(pg_server_url, prefix="phase1_test") as url:
        yield url


@pytest.fixture
def queue_name() -> str:
    return f"phase1-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(redis_url: str, database_url: str, queue_name: str) -> Callable[..., Settings]:
    """Settings for this test (its own queue), with short timings unless overridden."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": database_url,
            "queue": queue_name,
            "retry_intervals": [0.2, 0.2, 0.2],
            "job_timeout": 5,
            "shutdown_timeout": 5,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Phase1]:
    phase1 = build(settings)
    try:
        yield phase1
    finally:
        phase1.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    original = AbstractConnection.send_packed_command

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        with counter.lock:
            counter.count += 1
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return counter
