"""Secrets hidden from messages, in every form psycopg and redis-py accept them."""

from __future__ import annotations

import pytest

from phase1.redact import is_secret_key, redact_url

CASES = [
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://user@host/0", "redis://user@host/0"),
    ("redis://host:6379/0?password=pw&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis://host/0?pass%77ord=pw", "redis://host/0?pass%77ord=***"),
    ("rediss://host/0?ssl_password=pw", "rediss://host/0?ssl_password=***"),
    ("unix:///run/r.sock?password=pw", "unix:///run/r.sock?password=***"),
    ("unix://:pw@/run/r.sock", "unix://:***@/run/r.sock"),
    (
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/0",
        "redis+sentinel://:***@h1:26379,h2:26380/mymaster/0",
    ),
    (
        "redis+sentinel://h1:26379/m?sentinel_password=pw",
        "redis+sentinel://h1:26379/m?sentinel_password=***",
    ),
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    (
        "postgresql://h/db?password=pw&sslmode=require",
        "postgresql://h/db?password=***&sslmode=require",
    ),
    ("postgresql://h/db?sslpassword=pw", "postgresql://h/db?sslpassword=***"),
    # A password with '/', '?' or '#' that libpq and urlsplit cut apart: nothing is shown.
    ("postgresql://u:p/w@h/db", "postgresql://***"),
    ("postgresql://u:p?w@h/db", "postgresql://***"),
    ("postgresql://u:p#w@h/db", "postgresql://***"),
    ("postgresql://[::1/db?password=pw", "postgresql://***"),
    ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
    ("host=h password = pw", "host=h password=***"),
    ("host=h password='p w\\' x' dbname=d", "host=h password=*** dbname=d"),
    ("password='unterminated pw", "password=***"),
    ("host=h broken password=pw", "host=h ***"),
    ("user=o'brien password=pw", "user=o'brien password=***"),
    ("host=h password=a://pw", "host=h password=***"),
    ("", ""),
]


@pytest.mark.parametrize(("given", "shown"), CASES)
def test_secrets_are_hidden(given: str, shown: str) -> None:
    assert redact_url(given) == shown
    assert "pw" not in redact_url(given).replace("password", "")


def test_secret_keys() -> None:
    for key in ("password", "PASSWORD", "sslpassword", "sentinel_password", "pass%77ord"):
        assert is_secret_key(key)
    for key in ("host", "db", "dbname", "user", "sslmode", "application_name"):
        assert not is_secret_key(key)
