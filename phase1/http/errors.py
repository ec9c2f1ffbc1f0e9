"""One table: which error becomes which HTTP status and error code; JSON error bodies only."""

from __future__ import annotations

import json
import logging
from typing import Any

import bottle

from phase1.errors import (
    AttemptSuperseded,
    ConfigError,
    ConflictError,
    InvalidInputError,
    JobCancelled,
    NotFoundError,
    PermanentJobError,
    Phase1Error,
    UnavailableError,
)

log = logging.getLogger(__name__)

JSON = "application/json"
# Seconds a client should wait before retrying when Redis or PostgreSQL is unavailable.
RETRY_AFTER = 2

# Phase1Error subclass → (status, code); the most specific class in an error's MRO wins.
ERROR_STATUS: dict[type[Phase1Error], tuple[int, str]] = {
    InvalidInputError: (400, "invalid_input"),
    NotFoundError: (404, "not_found"),
    ConflictError: (409, "conflict"),
    UnavailableError: (503, "unavailable"),
    PermanentJobError: (409, "conflict"),
    AttemptSuperseded: (409, "conflict"),
    JobCancelled: (409, "conflict"),
    ConfigError: (500, "internal_error"),
    Phase1Error: (500, "internal_error"),
}

# Codes for the statuses Bottle or the request layer answer themselves.
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "header_too_large",
    500: "internal_error",
    503: "unavailable",
}

# What a client is told about a failure it cannot act on (the details go to the log).
INTERNAL_MESSAGE = "internal server error; the details are in the server's log"


class HttpError(Exception):
    """Raised by the request layer for failures that only HTTP has (auth, size, media type)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = STATUS_CODES.get(status, f"http_{status}")
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """`{"error": {"code", "message"}}` (plus any `extra` top-level keys) as JSON bytes."""
    return json.dumps({"error": {"code": code, "message": message}, **extra}).encode()


def json_response(
    status: int, body: bytes | str, headers: dict[str, str] | None = None
) -> bottle.HTTPResponse:
    """A JSON answer; `body` is already encoded JSON."""
    return bottle.HTTPResponse(body, status, headers, Content_Type=JSON)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> bottle.HTTPResponse:
    extra = dict(headers or {})
    if status == 503:
        extra.setdefault("Retry-After", str(RETRY_AFTER))
    return json_response(status, error_body(code, message), extra)


def status_for(exc: Phase1Error) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500, "internal_error"


def from_exception(exc: Exception) -> bottle.HTTPResponse:
    """The JSON answer for an exception a route raised; unexpected ones are logged, not shown."""
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, Phase1Error):
        status, code = status_for(exc)
        if status >= 500 and status != 503:
            log.error("request failed: %s", exc, exc_info=exc)
            return error_response(status, code, INTERNAL_MESSAGE)
        if status == 503:
            log.warning("answering 503: %s", exc)  # the address is for the operator alone
            return error_response(status, code, unavailable_message(exc))
        return error_response(status, code, str(exc))
    log.error("unexpected error in a request", exc_info=exc)
    return error_response(500, "internal_error", INTERNAL_MESSAGE)


def unavailable_message(exc: BaseException) -> str:
    """What a client is told about an outage: the service and what to do, never its address,
    user or database (those are in the server's log)."""
    return (
        f"{service_of(exc)} is unavailable; retry in {RETRY_AFTER} s (see Retry-After); "
        "the details are in the server's log"
    )


def service_of(exc: BaseException) -> str:
    """ "Redis" or "PostgreSQL": the service whose driver raised `exc` or one of its causes."""
    seen: BaseException | None = exc
    while seen is not None:
        package = type(seen).__module__.split(".")[0]
        if package in ("redis", "rq"):
            return "Redis"
        if package in ("psycopg", "psycopg_pool"):
            return "PostgreSQL"
        seen = seen.__cause__ or seen.__context__
    named = [(str(exc).find(name), name) for name in ("PostgreSQL", "Redis") if name in str(exc)]
    return min(named)[1] if named else "A service this server needs"


def bottle_error(res: bottle.HTTPError) -> bytes:
    """Bottle's default error handler replaced: its own errors (unknown route 404, wrong
    method 405, an escaped exception 500) get the JSON body too, never HTML."""
    status = int(res.status_code)
    bottle.response.content_type = JSON
    if status == 405:
        allowed = bottle.response.headers.get("Allow", "")
        method = bottle.request.environ.get("REQUEST_METHOD", "")[:20]
        message = f"method {method} is not allowed here; allowed: {allowed}"
    elif status == 404:
        message = "no such route; see /openapi.json for the routes"
    elif status >= 500:
        if res.exception is not None:
            log.error("unexpected error in a request: %s", res.traceback or res.exception)
        message = INTERNAL_MESSAGE
    else:
        message = str(res.body) if isinstance(res.body, str) and res.body else res.status_line
    if status == 503:
        bottle.response.set_header("Retry-After", str(RETRY_AFTER))
    return error_body(STATUS_CODES.get(status, f"http_{status}"), message)


def catch_errors(callback: Any) -> Any:
    """Route plugin: every exception a handler raises becomes its JSON error answer."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except Exception as exc:
            return from_exception(exc)

    return wrapper
