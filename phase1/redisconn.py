"""Redis behind Sentinel: `redis+sentinel://` URLs parsed, and clients that follow the primary.

`REDIS_URL=redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`
names a primary by its Sentinel service. The client is redis-py's own
`Sentinel(...).master_for(...)`: its SentinelConnectionPool asks the sentinels for the primary
on every new connection, drops connections to a server that answers READONLY (a demoted
primary) and reconnects. phase1 adds no failover logic of its own.

The credentials in the URL are the primary's (and its replicas'). Sentinels that require a
password of their own take it from the `sentinel_password` query parameter (and
`sentinel_username`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEMES = ("redis+sentinel", "rediss+sentinel")
# How long a sentinel gets to answer "where is the primary?" (each one, in turn).
SENTINEL_TIMEOUT = 1.0


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: the sentinels, the service and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a `redis+sentinel://` URL; ValueError saying what is wrong (no secret)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel://")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    sentinels = []
    for address in netloc.split(","):
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                "each sentinel must be host:port (redis+sentinel://host:port,.../service)"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /service_name or /service_name/db")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"the database must be a number, not {path[1]!r}")
        db = int(path[1])
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service_name=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
        ssl=parts.scheme.lower() == "rediss+sentinel",
    )


def sentinel_client(url: str, **options: Any) -> Redis:
    """A client of the primary `url` names, through redis-py's Sentinel; `options` are the
    connection options of a plain client (timeouts, retry...)."""
    target = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
    }
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
        sentinel_kwargs["username"] = target.sentinel_username
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    if target.ssl:
        options.setdefault("ssl", True)
    client: Redis = sentinel.master_for(
        target.service_name,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    return client


def primary_address(client: Redis) -> str | None:
    """`host:port` of the primary the client works with now: the one the sentinels name, or a
    plain client's own server. None when the sentinels name none."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        try:
            host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
        except Exception:  # MasterNotFoundError, or no sentinel answering
            return None
        return f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
