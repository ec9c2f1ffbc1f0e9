"""Values as RQ stores them, produced without RQ's slower helpers: a return value as its
Result holds it, and RQ's timestamp format. The engine's STEP writes them."""

from __future__ import annotations

from base64 import b64encode
from datetime import UTC, datetime
from typing import Any

from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD


def encoded(value: Any, serializer: Any) -> str:
    """The return value as RQ's Result stores it ('' for None, which RQ leaves out)."""
    if value is None:
        return ""
    try:
        serialized = serializer.dumps(value)
    except Exception:
        serialized = serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return b64encode(serialized).decode()


def stamp(moment: float) -> str:
    """RQ's utcformat of a unix time (2026-11-28T18:32:10.410070Z), without strftime."""
    return utc(datetime.fromtimestamp(moment, UTC))


def utc(when: datetime) -> str:
    """RQ's utcformat of an aware UTC datetime, without strftime."""
    return when.isoformat(timespec="microseconds")[:-6] + "Z"
