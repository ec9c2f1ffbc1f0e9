"""The psycopg pool, transactions, migrations, and driver errors translated to Phase1Error."""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from phase1.appname import application_name
from phase1.errors import UnavailableError
from phase1.settings import redact_url

log = logging.getLogger(__name__)

Row = dict[str, Any]
Conn = psycopg.Connection[Row]

# A connection that finished a transaction this recently is handed out without the pool's
# check (one round trip per checkout, a third of a short job's PostgreSQL time): it was
# alive a moment ago, and if the server died since, the statement fails like any other
# error of the transaction (the pool drops the broken connection, the job is retried).
RECENTLY_USED_S = 1.0
_last_used: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()


def check_unless_recent(conn: Conn) -> None:
    """The pool's `check`: a round trip only for a connection idle for a while."""
    if time.monotonic() - _last_used.get(conn, float("-inf")) < RECENTLY_USED_S:
        return
    ConnectionPool.check_connection(conn)


def open_pool(
    url: str,
    *,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
    max_size: int = 4,
    wait_timeout: float = 2.0,
    check: Callable[[Conn], None] | None = None,
) -> ConnectionPool[Conn]:
    """A pool whose connections run in UTC with statement and lock timeouts set.

    `check` runs on each connection the pool hands out (by default `check_unless_recent`: a
    round trip that finds broken ones, skipped for a connection used a moment ago). Open it
    after any fork: a pool's sockets and thread must not cross into a child.
    """
    options = (
        f"-c TimeZone=UTC -c statement_timeout={statement_timeout_ms} "
        f"-c lock_timeout={lock_timeout_ms} "
        "-c idle_in_transaction_session_timeout=60000"
    )
    check = check or check_unless_recent
    pool: ConnectionPool[Conn] = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=wait_timeout,
        kwargs={
            "options": options,
            "connect_timeout": 2,
            "row_factory": dict_row,
            "application_name": application_name(),
        },
        open=False,
        name="phase1",
        check=check,
        reconnect_timeout=60,
    )
    pool.open(wait=False)
    return pool


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn "PostgreSQL is not there" driver errors into UnavailableError."""
    try:
        yield
    except PoolTimeout as exc:
        raise UnavailableError(
            f"PostgreSQL at {redact_url(url)} is unreachable (set DATABASE_URL)"
        ) from exc
    except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
        # The server is there; our statement or lock timeout gave up first (by design,
        # below the job timeout). Not a configuration problem: say what happened.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(f"PostgreSQL gave up waiting: {first}") from exc
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(
            f"PostgreSQL at {redact_url(url)} is unavailable: {first} (set DATABASE_URL)"
        ) from exc


@contextlib.contextmanager
def transaction(pool: ConnectionPool[Conn], url: str = "") -> Iterator[Conn]:
    """One transaction on a pooled connection: committed on success, rolled back on error.

    BEGIN, the statements and COMMIT each go out on their own (prepared statements, in the
    extended protocol): measured here, psycopg's pipeline mode, or BEGIN and the statements
    sent as one message, cost more than the round trips they save. COMMIT never goes out
    before the statements have answered, so work held up by a hung server and given up on
    rolls back (an autocommit statement would commit when the server wakes)."""
    with translate_errors(url or str(pool.conninfo)), pool.connection() as conn:
        with conn.transaction():
            yield conn
        _last_used[conn] = time.monotonic()


@contextlib.contextmanager
def read(pool: ConnectionPool[Conn], url: str = "") -> Iterator[Conn]:
    """A pooled connection for single-statement reads, outside a transaction block: one round
    trip per read instead of three (BEGIN, the statement, COMMIT). For the polling route."""
    with translate_errors(url or str(pool.conninfo)), pool.connection() as conn:
        conn.autocommit = True
        try:
            yield conn
            _last_used[conn] = time.monotonic()
        finally:
            with contextlib.suppress(psycopg.Error):  # a broken connection is discarded anyway
                conn.autocommit = False


def connect(url: str, **kwargs: Any) -> Conn:
    """A single connection in UTC (for the CLI's one-off work and migrations)."""
    try:
        return psycopg.connect(
            url,
            row_factory=dict_row,
            connect_timeout=3,
            options="-c TimeZone=UTC",
            **{"application_name": application_name(), **kwargs},
        )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(
            f"PostgreSQL at {redact_url(url)} is unavailable: {first} (set DATABASE_URL)"
        ) from exc


def ensure_database(url: str) -> None:
    """Create the database `url` names when it does not exist yet (first run on a server)."""
    params = conninfo_to_dict(url)
    name = params.get("dbname")
    if not name:
        return
    try:
        psycopg.connect(url, connect_timeout=3, application_name=application_name()).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise UnavailableError(
                f"PostgreSQL at {redact_url(url)} is unavailable: {str(exc).strip()}"
            ) from exc
    admin = make_conninfo(url, dbname="postgres")
    # Another process may create it first.
    with (
        psycopg.connect(
            admin, autocommit=True, connect_timeout=3, application_name=application_name()
        ) as conn,
        contextlib.suppress(psycopg.errors.DuplicateDatabase),
    ):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))


def migrations_dir() -> Path:
    """The SQL migrations: inside the installed package, or the checkout's `migrations/`."""
    packaged = Path(str(resources.files("phase1"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def yoyo_url(url: str) -> str:
    """yoyo needs `postgresql+psycopg://` to use psycopg 3 (plain postgresql:// means psycopg2)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url
    # A libpq key=value string: rebuild as a URL.
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    user = params.pop("user", "")
    netloc = f"{user}@" if user else ""
    netloc += "" if host.startswith("/") else host
    netloc += f":{port}" if port else ""
    query = f"?host={host}" if host.startswith("/") else ""
    return f"postgresql+psycopg://{netloc}/{dbname}{query}"


def migrate(url: str) -> list[str]:
    """Apply pending migrations, each once, under yoyo's lock; returns the ids applied."""
    from yoyo import get_backend, read_migrations

    ensure_database(url)
    try:
        backend = get_backend(yoyo_url(url))
    except psycopg.OperationalError as exc:
        raise UnavailableError(f"PostgreSQL at {redact_url(url)} is unavailable: {exc}") from exc
    migrations = read_migrations(str(migrations_dir()))
    try:
        with backend.lock(timeout=60):
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
            return [m.id for m in pending]
    finally:
        backend.connection.close()
