"""redis+sentinel:// URLs: parsed in one place, validated at start, never printed with secrets."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from phase1.context import redis_client
from phase1.errors import ConfigError
from phase1.redisconn import SentinelTarget, is_sentinel_url, parse_sentinel_url, primary_address
from phase1.settings import load_settings, redact_url

URL = "redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380,sentinel-3:26381/phase1/2"


def test_a_sentinel_url_names_its_sentinels_service_and_db() -> None:
    target = parse_sentinel_url(URL)
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26381)),
        service_name="phase1",
        db=2,
        username="app",
        password="s@cret",
    )
    assert "s@cret" not in repr(target)
    bare = parse_sentinel_url("redis+sentinel://h:26379/mymaster")
    assert (bare.db, bare.username, bare.password) == (0, None, None)
    only_password = parse_sentinel_url("redis+sentinel://:pw@h:26379/mymaster?sentinel_password=sp")
    assert (only_password.username, only_password.password) == (None, "pw")
    assert only_password.sentinel_password == "sp"
    assert parse_sentinel_url("rediss+sentinel://h:1/s").ssl
    assert is_sentinel_url(URL) and not is_sentinel_url("redis://localhost:6379/0")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h/svc", "host:port"),
        ("redis+sentinel://h:port/svc", "host:port"),
        ("redis+sentinel://h:1,h2/svc", "host:port"),
        ("redis+sentinel://h:1", "/service_name"),
        ("redis+sentinel://h:1/svc/db/x", "/service_name"),
        ("redis+sentinel://h:1/svc/x", "must be a number"),
    ],
)
def test_a_bad_sentinel_url_stops_the_start_saying_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(REDIS_URL=url)
    assert "REDIS_URL" in str(caught.value) and why in str(caught.value)


def test_settings_accept_a_sentinel_url() -> None:
    assert load_settings(REDIS_URL=URL).redis_url == URL


def test_secrets_are_redacted() -> None:
    shown = redact_url(URL + "?sentinel_password=topsecret")
    assert "s%40cret" not in shown and "topsecret" not in shown
    assert shown.startswith("redis+sentinel://app:***@10.0.0.1:26379,")


def test_the_client_is_redis_pys_sentinel_master_client() -> None:
    client = redis_client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/phase1/3")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "phase1" and pool.is_master
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["socket_timeout"] == 5  # phase1's timeouts still apply
    assert primary_address(client) is None  # no sentinel answers on those ports
    client.close()


def test_a_plain_client_names_its_own_server() -> None:
    client = redis_client("redis://10.1.2.3:6390/0")
    assert primary_address(client) == "10.1.2.3:6390"
    client.close()
