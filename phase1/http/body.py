"""Reading a request body: media type, size, strict JSON, one clear message for each fault."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from phase1.errors import InvalidInputError
from phase1.http.errors import HttpError

MAX_BODY = 64 * 1024
Action = Literal["approve", "reject"]
ACTIONS: tuple[Action, ...] = ("approve", "reject")
EXPECTED = 'send {"action": "approve"} or {"action": "reject"}'

# `text/plain` is what `fetch(url, {body: JSON.stringify(...)})` sends when the caller sets no
# header, as the story's own client does; a cross-site page still cannot send it without a
# CORS preflight, because the method is PATCH. Missing means the same as JSON.
ACCEPTED_MEDIA = frozenset({"", "application/json", "text/plain"})


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (1e999) is refused, not infinity."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is too large")
    return number


def _float_sized_int(text: str) -> int:
    """A JSON integer, refused when a float could not hold it (other parsers read infinity)."""
    number = int(text)
    try:
        float(number)
    except OverflowError:
        raise ValueError(f"the number {text[:40]}... is too large") from None
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key appears twice: parsers differ on which one wins."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        document[key] = value
    return document


def read_json_object(environ: dict[str, Any]) -> dict[str, Any]:
    """The request body as a JSON object, or HttpError/InvalidInputError saying what is wrong."""
    media = media_type(environ.get("CONTENT_TYPE", ""))
    if media not in ACCEPTED_MEDIA and not media.endswith("+json"):
        raise HttpError(415, f"Content-Type {media[:80]!r} is not supported; send application/json")
    raw_length = environ.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw_length)
    except ValueError:
        raise InvalidInputError(f"Content-Length {raw_length[:40]!r} is not a number") from None
    if length > MAX_BODY:
        raise HttpError(413, f"request body is {length} bytes; the limit is {MAX_BODY} (64 KiB)")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if not raw.strip():
        raise InvalidInputError(f"request body is empty; {EXPECTED}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("request body is not UTF-8 text") from None
    try:
        document = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_float_sized_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"malformed JSON: {str(exc)[:80] or 'nested too deeply'}") from None
    if not isinstance(document, dict):
        got = _json_type(document)
        raise InvalidInputError(f"JSON body must be an object, got {got}; {EXPECTED}")
    return document


def read_action(environ: dict[str, Any]) -> Action:
    """The `action` of a PATCH on a plan."""
    document = read_json_object(environ)
    if "action" not in document:
        raise InvalidInputError(f'missing "action"; {EXPECTED}')
    action = document["action"]
    if not isinstance(action, str):
        raise InvalidInputError(f'"action" must be a string, got {_json_type(action)}; {EXPECTED}')
    for known in ACTIONS:
        if action == known:
            return known
    raise InvalidInputError(f"unknown action {action[:40]!r}; {EXPECTED}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def read_cancel_reason(environ: dict[str, Any]) -> str | None:
    """The optional `reason` of a cancel: no body, or `{"reason": "..."}` (or null)."""
    raw_length = environ.get("CONTENT_LENGTH") or "0"
    if raw_length.strip() in ("", "0"):
        return None
    document = read_json_object(environ)
    unknown = sorted(set(document) - {"reason"})
    if unknown:
        raise InvalidInputError(f'unknown field {unknown[0][:40]!r}; send {{"reason": "..."}}')
    reason = document.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInputError(f'"reason" must be a string, got {_json_type(reason)}')
    return reason
