"""Connections built in one place: a `Phase1` holds the settings, Redis and the PG pool."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from redis import ConnectionPool as RedisPool
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Queue
from rq.serializers import JSONSerializer

from phase1.errors import ConfigError, UnavailableError
from phase1.redisconn import is_sentinel_url, sentinel_client
from phase1.settings import Settings, redact_url

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used (see LazyPool)
    from psycopg_pool import ConnectionPool

    from phase1 import db


@dataclass
class Phase1:
    """What every service function takes: settings and live connections, passed in."""

    settings: Settings
    redis: Redis
    pool: ConnectionPool[db.Conn]
    _queues: dict[str, Queue] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return _required(self.settings.redis_url, "REDIS_URL")

    @property
    def database_url(self) -> str:
        return _required(self.settings.database_url, "DATABASE_URL")

    def queue(self, name: str | None = None) -> Queue:
        """The RQ queue `name` (the job queue by default), always with the JSON serializer."""
        name = name or self.settings.queue
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis, serializer=JSONSerializer)
        return self._queues[name]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[db.Conn]:
        from phase1 import db

        with db.transaction(self.pool, self.database_url) as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[db.Conn]:
        """A connection for single-statement reads (autocommit: one round trip each)."""
        from phase1 import db

        with db.read(self.pool, self.database_url) as conn:
            yield conn

    def open_pool(self) -> None:
        """Open the PostgreSQL pool now, not at its first use (it connects in the background)."""
        pool: Any = self.pool
        if isinstance(pool, LazyPool):
            pool.get()

    def close(self) -> None:
        self.pool.close()
        self.redis.close()


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ConfigError(f"{name} is not resolved; call phase1.embedded.resolve first")
    return value


def redis_client(url: str, **kwargs: Any) -> Redis:
    """A Redis client with timeouts, so a hung server fails calls instead of hanging them.

    Every Redis client phase1 makes comes from here; a `redis+sentinel://` URL gives one that
    follows the primary through failovers (phase1.redisconn)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    options.update(kwargs)
    if is_sentinel_url(url):  # the primary a Sentinel service names, followed on failover
        client = sentinel_client(url, **options)
    else:
        client = Redis.from_url(url, **options)
    redis_pools.add(client.connection_pool)
    return client


# Every pool of this process's clients (a forked child closes its copies of their sockets).
redis_pools: weakref.WeakSet[RedisPool] = weakref.WeakSet()


# The HTTP shim answers 503 within 3 s when Redis hangs: short waits and a single retry
# (redis-py's default is three, with backoff), enough to replace a connection gone stale.
HTTP_REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 1.0,
    "retry": Retry(NoBackoff(), 1),
}


class LazyPool:
    """A PostgreSQL pool opened at its first use, in whichever thread comes first.

    psycopg and its pool cost a worker about as much start-up time as redis-py and RQ together
    (about 160 ms here), and a worker whose jobs never touch PostgreSQL should not pay it
    before its first job. Any attribute of the pool (`connection()`, `conninfo`,
    `get_stats()`...) opens it; `close()` closes it if it was opened. Like the pool itself, it
    may cross a fork only unopened.
    """

    def __init__(self, open_pool: Callable[[], ConnectionPool[db.Conn]]) -> None:
        self._open_pool = open_pool
        self._pool: ConnectionPool[db.Conn] | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._pool is not None

    def get(self) -> ConnectionPool[db.Conn]:
        """The pool, opened now if this is its first use."""
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._closed:
                    from psycopg_pool import PoolClosed

                    raise PoolClosed("the pool is already closed")
                if self._pool is None:
                    self._pool = self._open_pool()
                pool = self._pool
        return pool

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # its own, not yet set (a copy made without __init__)
            raise AttributeError(name)
        return getattr(self.get(), name)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.close(timeout)


def build(
    settings: Settings, *, pool_size: int = 4, http: bool = False, **pool_options: Any
) -> Phase1:
    """Connect to Redis and PostgreSQL (lazily: nothing is sent until first use, and psycopg
    is not even imported until PostgreSQL is first used; see LazyPool).

    `pool_options` go to `db.open_pool` (the HTTP app's watchdog passes its `check`)."""
    database_url = _required(settings.database_url, "DATABASE_URL")
    redis = redis_client(
        _required(settings.redis_url, "REDIS_URL"), **(HTTP_REDIS_OPTIONS if http else {})
    )
    statement_ms = 2500 if http else settings.db_statement_timeout_ms
    lock_ms = 2000 if http else settings.db_lock_timeout_ms

    def open_pool() -> ConnectionPool[db.Conn]:
        from phase1 import db

        return db.open_pool(
            database_url,
            statement_timeout_ms=statement_ms,
            lock_timeout_ms=lock_ms,
            max_size=pool_size,
            **pool_options,
        )

    lazy = LazyPool(open_pool)
    if http:
        lazy.get()  # a server opens it at once: its first request should not pay for it
    # Typed as the pool it stands for: every use goes through to it.
    return Phase1(settings=settings, redis=redis, pool=cast("ConnectionPool[db.Conn]", lazy))


_process_context: tuple[int, Phase1] | None = None


def for_worker_process() -> Phase1:
    """The context of this worker process, built once per PID (a fork gets its own).

    Job functions are called by RQ with their arguments only; a plain `rq worker` gives them
    no other way to reach PostgreSQL, so they build one from the environment here.
    """
    global _process_context
    pid = os.getpid()
    if _process_context is not None and _process_context[0] == pid:
        return _process_context[1]
    from phase1 import appname
    from phase1.embedded import resolve
    from phase1.settings import load_settings

    if not appname.has_role():
        appname.set_role("worker")  # under plain `rq worker`: no entry point of phase1's
    ctx = build(resolve(load_settings()))
    _process_context = (pid, ctx)
    return ctx


def install_worker_context(ctx: Phase1) -> None:
    """Let `phase1 worker` hand its own context to the jobs it runs."""
    global _process_context
    _process_context = (os.getpid(), ctx)


def redis_unavailable(url: str, exc: BaseException) -> UnavailableError:
    """The one-line error for "Redis is not there": the URL (password hidden) and the setting."""
    return UnavailableError(f"Redis at {redact_url(url)} is unavailable: {exc} (set REDIS_URL)")


@contextlib.contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Turn Redis connection errors and timeouts into UnavailableError (see redis_unavailable)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise redis_unavailable(url, exc) from exc
