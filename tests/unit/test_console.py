"""The web console's pieces that need no server: sessions and CSRF tokens, the charts, the
templates' escaping."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from phase1.http.console import chart, render, security
from phase1.http.console.queries import Minute, Page
from phase1.settings import Settings

XSS = "<script>alert(1)</script>"


def guard(**overrides: object) -> security.Guard:
    values: dict[str, object] = {"redis_url": "redis://localhost:6379/0", **overrides}
    return security.Guard(Settings(**values))  # type: ignore[arg-type]


def test_sessions_are_signed_and_csrf_tokens_bound_to_them() -> None:
    g = guard(api_token="t0ken")
    cookie, session = g.new_cookie()
    assert g.session(cookie) == session
    assert g.csrf_matches(session, session.csrf)
    other = g.new_cookie()[1]
    assert not g.csrf_matches(session, other.csrf)  # another session's token
    assert not g.csrf_matches(session, "") and not g.csrf_matches(session, None)
    nonce, _, signature = cookie.rpartition(".")
    assert g.session(f"{nonce}.{'0' * len(signature)}") is None  # forged
    assert g.session(f"{nonce}x.{signature}") is None  # altered
    assert g.session(None) is None and g.session("garbage") is None
    # Another token signs other sessions: rotating the token ends every session.
    assert guard(api_token="other").session(cookie) is None


def test_sessions_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    g = guard(api_token="t0ken")
    cookie, _ = g.new_cookie()
    later = time.time() + security.SESSION_SECONDS + 1
    monkeypatch.setattr(security.time, "time", lambda: later)
    assert g.session(cookie) is None


def test_who_may_act() -> None:
    assert guard(api_token="t").can_write and guard(api_token="t").login_required
    assert guard(api_token="t").token_matches("t") and not guard(api_token="t").token_matches("x")
    assert not guard().can_write and not guard().login_required
    assert guard(console_write=True).can_write
    assert not guard().token_matches("")


def test_login_sends_back_to_this_console_only() -> None:
    assert security.safe_next("/console/dlq?reason=x") == "/console/dlq?reason=x"
    for bad in (None, "", "https://evil.example/", "//evil", "/console//evil", "/api/x"):
        assert security.safe_next(bad) == "/console/"


def test_the_policy_allows_nothing_from_outside() -> None:
    policy = security.CSP
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "http" not in policy and "frame-ancestors 'none'" in policy


def minutes(count: int = 60) -> list[Minute]:
    start = datetime(2026, 1, 1, 12, 0)
    return [
        Minute(
            at=start + timedelta(minutes=i),
            completed=i % 7,
            failed=i % 3,
            retried=i % 2,
            p50=0.02 * i if i % 5 else None,
            p95=0.05 * i if i % 5 else None,
        )
        for i in range(count)
    ]


def test_charts_are_plain_svg_with_a_title_and_description() -> None:
    for svg in (chart.outcomes(minutes()), chart.latency(minutes())):
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert "<title" in svg and "<desc" in svg and 'role="img"' in svg
        assert "style=" not in svg and "<script" not in svg  # the CSP allows neither
        assert "<polyline" in svg
    described = chart.outcomes(minutes())
    assert f"{sum(m.completed for m in minutes())} jobs completed" in described
    empty = [Minute(m.at, 0, 0, 0, None, None) for m in minutes()]
    assert "No job completed" in chart.latency(empty)
    assert "<polyline" not in chart.latency(empty)


def test_axis_tops_are_round() -> None:
    assert [chart._nice_max(v) for v in (0, 0.3, 1, 3, 7, 11, 120)] == [1, 0.5, 1, 5, 10, 20, 200]


def test_templates_escape_titles_and_errors() -> None:
    row = {
        "id": uuid.uuid4(),
        "title": XSS,
        "status": "approved",
        "job_id": "j1",
        "job_status": "failed",
        "tasks": 0,
        "created_at": datetime(2026, 1, 1),
    }
    html = render.template(
        "plans_live", found=Page([row], 0, False), page=1, filters={"status": None, "title": None}
    )
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    error = render.template("error", status=400, message=XSS)
    assert XSS not in error and "&lt;script&gt;" in error


def test_time_helpers() -> None:
    assert render.span(0.25) == "250 ms" and render.span(12.34) == "12.3 s"
    assert render.span(243) == "4 min 3 s" and render.span(7500) == "2 h 5 min"
    assert render.when("2026-01-01T10:00:00.5Z") == "2026-01-01 10:00:00Z"
    assert render.when(None) == "-"
    assert render.link("/console/jobs", state="failed", plan="", page=0) == (
        "/console/jobs?state=failed"
    )
    assert re.fullmatch(r"in .+", render.countdown(datetime.now(UTC) + timedelta(hours=1)))
