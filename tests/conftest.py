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

import psycopg
import pytest
from psycopg import sql
from redis import Redis
from support import Processes, with_db

from phase1 import db
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
    base = redis_server_url.rstrip("/")
    if base.count("/") > 2:
        base = base.rsplit("/", 1)[0]
    admin = Redis.from_url(base + "/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    claimed = None
    for number in range(15, 0, -1):
        if admin.set(f"phase1:test-db-claim:{number}", token, nx=True, ex=3600):
            claimed = number
            break
    if claimed is None:
        pytest.fail("no free Redis database number (1-15) for this test run")
    url = f"{base}/{claimed}"
    own = Redis.from_url(url)
    own.flushdb()  # our own database number, claimed above: nobody else's data
    try:
        yield url
    finally:
        own.flushdb()
        own.close()
        if admin.get(f"phase1:test-db-claim:{claimed}") == token.encode():
            admin.delete(f"phase1:test-db-claim:{claimed}")
        admin.close()


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
    name = f"phase1_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = with_db(pg_server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_db(pg_server_url, name)
    db.migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


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
