"""A per-request deadline on PostgreSQL work, kept even when the server hangs mid-query.

The statement timeout is enforced by the server: one that hangs (a frozen disk, a paused VM,
SIGSTOP) never enforces it, and its kernel still acknowledges our packets, so no TCP timeout
fires either; psycopg would wait forever. The watchdog shuts down the socket of a connection
a request still holds past its budget: psycopg then fails with OperationalError, the request
answers 503, and the pool drops the connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from phase1 import db
from phase1.context import Phase1

log = logging.getLogger(__name__)

BUDGET = 2.5  # seconds of a request after which its PostgreSQL connections are cut
TICK = 0.05  # seconds between the watchdog's looks
# A connection a request used successfully this recently is handed out without the pool's
# health check (a round trip): polling then costs one round trip, not two.
FRESH = 2.0


@dataclass
class _Request:
    deadline: float
    conns: set[db.Conn] = field(default_factory=set)


class Watchdog:
    """Tracks, per request thread, the connections it holds and cuts them past the budget."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._requests: dict[int, _Request] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase1-deadline", daemon=True)
        self.fired = 0
        self._fresh: weakref.WeakKeyDictionary[db.Conn, float] = weakref.WeakKeyDictionary()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """The span of one request on this thread."""
        key = threading.get_ident()
        with self._lock:
            self._requests[key] = _Request(time.monotonic() + self.budget)
        try:
            yield
        finally:
            with self._lock:
                self._requests.pop(key, None)

    def check(self, conn: db.Conn) -> None:
        """The pool's `check`: watch the connection from the moment it is handed out (the
        check's own round trip included), then check it as the pool would, unless a request
        used it successfully less than FRESH seconds ago."""
        self.hold(conn)
        with self._lock:
            used = self._fresh.pop(conn, None)
        if used is None or time.monotonic() - used > FRESH:
            ConnectionPool.check_connection(conn)

    def hold(self, conn: db.Conn) -> None:
        with self._lock:
            current = self._requests.get(threading.get_ident())
            if current is not None:
                current.conns.add(conn)

    def release(self, conn: db.Conn, *, ok: bool) -> None:
        """Stop watching `conn`; called before it goes back to the pool, so a connection is
        never cut while another request holds it. `ok`: the request's work on it succeeded;
        a broken connection makes every connection's next use checked."""
        with self._lock:
            current = self._requests.get(threading.get_ident())
            if current is not None:
                current.conns.discard(conn)
            if ok and not conn.closed:
                self._fresh[conn] = time.monotonic()
            elif conn.closed or conn.broken:
                # The server went away (a restart?): the pool's other connections are likely
                # dead too, so each is checked again before its next use.
                self._fresh.clear()

    def _run(self) -> None:
        while not self._stopped.wait(TICK):
            now = time.monotonic()
            with self._lock:  # cut under the lock: release() cannot race a cut
                for current in self._requests.values():
                    if current.deadline <= now and current.conns:
                        for conn in current.conns:
                            _cut(conn)
                        self.fired += len(current.conns)
                        current.conns.clear()


def _cut(conn: db.Conn) -> None:
    """Shut the connection's socket down (not close: the fd stays psycopg's to close)."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # closed already
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    log.warning("PostgreSQL did not answer within the request's %.1f s: connection cut", BUDGET)


@dataclass
class GuardedPhase1(Phase1):
    """The HTTP app's context: its transactions and reads stay under the request's deadline."""

    watchdog: Watchdog = field(default_factory=Watchdog)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[db.Conn]:
        with db.translate_errors(self.database_url), self.pool.connection() as conn:
            ok = False
            try:
                with conn.transaction():
                    yield conn
                ok = True
            finally:
                self.watchdog.release(conn, ok=ok)

    @contextlib.contextmanager
    def read(self) -> Iterator[db.Conn]:
        with db.read(self.pool, self.database_url) as conn:
            ok = False
            try:
                yield conn
                ok = True
            finally:
                self.watchdog.release(conn, ok=ok)

    def close(self) -> None:
        self.watchdog.stop()
        super().close()
