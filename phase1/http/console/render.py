"""Templates and answers: Bottle's SimpleTemplate (HTML-escaped unless asked otherwise) from
the package's `templates/`, wrapped in the layout, sent with the console's headers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bottle

from phase1.http.console.security import HEADERS

TEMPLATES = Path(__file__).parent / "templates"
HTML = "text/html; charset=utf-8"

NAV = (
    ("/console/", "Overview"),
    ("/console/jobs", "Jobs"),
    ("/console/dlq", "DLQ"),
    ("/console/plans", "Plans"),
    ("/console/workers", "Workers"),
)

_templates: dict[str, Any] = {}


def template(name: str, **values: Any) -> str:
    """Render `templates/<name>.tpl` with `values` and the helpers below."""
    tpl = _templates.get(name)
    if tpl is None:
        source = (TEMPLATES / f"{name}.tpl").read_text(encoding="utf-8")
        tpl = _templates[name] = bottle.SimpleTemplate(source, lookup=[str(TEMPLATES)])
    return str(tpl.render(**HELPERS, **values))


def response(
    body: str | bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> bottle.HTTPResponse:
    """An HTML answer with the console's security headers."""
    out = bottle.HTTPResponse(body, status, dict(HEADERS), Content_Type=HTML)
    for name, value in (headers or {}).items():
        out.set_header(name, value)
    return out


# Helpers every template can use.


def when(moment: datetime | str | None) -> str:
    """A time as `YYYY-MM-DD HH:MM:SSZ` (UTC), or a dash."""
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return str(moment)
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float | None) -> str:
    """A duration in words: `850 ms`, `12.3 s`, `4 min 3 s`, `2 h 5 min`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago `moment` was (`-` when unknown)."""
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return span(max(0.0, ((now or datetime.now(UTC)) - aware).total_seconds()))


def countdown(moment: datetime | None, now: datetime | None = None) -> str:
    """`in 4.0 s`, or `due` once the time has come."""
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    left = (aware - (now or datetime.now(UTC))).total_seconds()
    return f"in {span(left)}" if left > 0 else "due"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return span(max(0.0, (end - start).total_seconds()))


def link(path: str, **query: Any) -> str:
    """`path` with the query parameters that have a value."""
    kept = {k: v for k, v in query.items() if v not in (None, "", 0)}
    return f"{path}?{urlencode(kept)}" if kept else path


HELPERS: dict[str, Any] = {
    "when": when,
    "span": span,
    "age": age,
    "countdown": countdown,
    "duration": duration,
    "link": link,
}
