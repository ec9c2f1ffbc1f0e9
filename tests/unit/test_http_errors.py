"""The HTTP error table and the JSON body reader, without a network."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from phase1 import errors
from phase1.http import body
from phase1.http.errors import ERROR_STATUS, HttpError, from_exception, status_for


def test_every_phase1_error_has_a_status() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert set(classes) <= set(ERROR_STATUS)
    assert status_for(errors.UnavailableError("x")) == (503, "unavailable")

    class Unlisted(errors.NotFoundError):
        pass

    assert status_for(Unlisted("x")) == (404, "not_found")  # the most specific listed parent


def test_unexpected_errors_do_not_leak() -> None:
    answer = from_exception(RuntimeError("password=hunter2 at /srv/app.py line 3"))
    assert answer.status_code == 500
    assert b"hunter2" not in answer.body and b"Traceback" not in answer.body
    config = from_exception(errors.ConfigError("DATABASE_URL=postgresql://u:pw@db/x"))
    assert config.status_code == 500 and b"pw@" not in config.body


def test_503_says_when_to_retry() -> None:
    answer = from_exception(errors.UnavailableError("Redis is down"))
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    error = json.loads(answer.body)["error"]
    assert error["code"] == "unavailable"
    assert error["message"].startswith("Redis is unavailable; retry in")


def test_503_names_the_service_but_not_its_address() -> None:
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError

    from phase1 import db
    from phase1.context import redis_unavailable

    redis = redis_unavailable(
        "redis://someone:pw@cache.internal:6380/3", RedisConnectionError("Error 111 connecting")
    )
    try:
        with db.translate_errors("host=pg.internal user=app password=pw dbname=plans"):
            raise PoolTimeout("no connection")
    except errors.UnavailableError as exc:
        postgres = exc
    for exc, service in ((redis, "Redis"), (postgres, "PostgreSQL")):
        assert "pw" not in str(exc)  # the log line: the address, no secret
        message = json.loads(from_exception(exc).body)["error"]["message"]
        assert message.startswith(f"{service} is unavailable"), message
        for detail in ("internal", "someone", "app", "plans", "6380", "pw"):
            assert detail not in message, message


def environ(raw: bytes, content_type: str = "application/json", **extra: Any) -> dict[str, Any]:
    return {
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
        **extra,
    }


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "text/plain;charset=UTF-8", "",
     "application/merge-patch+json"],
)  # fmt: skip
def test_json_media_types_are_read(content_type: str) -> None:
    assert body.read_action(environ(b'{"action": "reject"}', content_type)) == "reject"


def test_size_is_checked_before_reading() -> None:
    class Unreadable(io.BytesIO):
        def read(self, *_: Any) -> bytes:
            raise AssertionError("the body must not be read")

    big = {"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(body.MAX_BODY + 1)}
    with pytest.raises(HttpError) as caught:
        body.read_action({**big, "wsgi.input": Unreadable()})
    assert caught.value.status == 413


def test_a_bad_content_length_is_400() -> None:
    with pytest.raises(errors.InvalidInputError, match="Content-Length"):
        body.read_action(environ(b"{}", CONTENT_LENGTH="lots"))
