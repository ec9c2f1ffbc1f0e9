"""The tests' own servers: a Redis database number and a PostgreSQL database claimed for one
run, so runs side by side (and the benchmarks, which claim theirs here too) never share data.
Never database 0, never FLUSHALL, never a database this run did not create."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from redis import Redis

from phase1 import db

CLAIM_KEY = "phase1:test-db-claim:{}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NoFreeDatabase(RuntimeError):
    """Raised when every Redis database number 1-15 is claimed by another run."""


@contextlib.contextmanager
def claimed_redis(server_url: str, holder: str = "bench") -> Iterator[str]:
    """A Redis database number (15..1) claimed for this run, emptied before and after; never
    database 0, never FLUSHALL. Test runs (tests/conftest.py) claim theirs the same way."""
    base = server_url.rstrip("/")
    if base.count("/") > 2:
        base = base.rsplit("/", 1)[0]
    admin = Redis.from_url(base + "/0")
    token = f"{holder}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    claimed = next(
        (n for n in range(15, 0, -1) if admin.set(CLAIM_KEY.format(n), token, nx=True, ex=3600)),
        None,
    )
    if claimed is None:
        raise NoFreeDatabase(f"no free Redis database number (1-15) for this {holder} run")
    url = f"{base}/{claimed}"
    own = Redis.from_url(url)
    own.flushdb()  # the number claimed above: nobody else's data
    try:
        yield url
    finally:
        own.flushdb()
        own.close()
        if admin.get(CLAIM_KEY.format(claimed)) == token.encode():
            admin.delete(CLAIM_KEY.format(claimed))
        admin.close()


def with_db(url: str, name: str) -> str:
    """`url` naming database `name` instead (URLs keep their form, e.g. ?host=/socket/dir)."""
    if "://" in url:
        return urlunsplit(urlsplit(url)._replace(path="/" + name))
    return make_conninfo(url, dbname=name)


@contextlib.contextmanager
def own_database(
    server_url: str, prefix: str = "phase1_bench", *, async_commit: bool = False
) -> Iterator[str]:
    """A migrated PostgreSQL database created for this run and dropped after it; with
    `async_commit` its commits do not wait for the WAL flush (that database's own setting)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = with_db(server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if async_commit:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                    sql.Identifier(name)
                )
            )
    url = with_db(server_url, name)
    try:
        db.migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
