"""The web console over HTTP against the real `phase1 serve`: headers, escaping, sessions,
CSRF and read-only mode, without a browser (the browser tests are test_console_browser.py)."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from http_support import Api, Response, start_server
from support import Processes

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

PAGES = ["/console/", "/console/jobs", "/console/dlq", "/console/plans", "/console/workers"]
XSS = "<script>alert(1)</script>"


def cookie_of(answer: Response) -> str:
    raw = answer.header("set-cookie") or ""
    match = re.search(r"phase1_console=([^;]+)", raw)
    assert match, raw
    return match.group(1)


def csrf_of(answer: Response) -> str:
    match = re.search(rb'name="phase1-csrf" content="([0-9a-f]+)"', answer.body)
    assert match, answer.body[:2000]
    return match.group(1).decode()


def post(api: Api, path: str, cookie: str | None, fields: dict[str, str]) -> Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = f"phase1_console={cookie}"
    return api.request("POST", path, urlencode(fields), headers)


def test_every_page_is_html_with_a_strict_policy_and_escapes_titles(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    with ctx.transaction() as conn:
        plan_id = plans.create_plan(conn, XSS, SAMPLE_ANALYSIS).id
    job_id = approval.approve(ctx, plan_id).job_id
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    meta = {"planId": str(plan_id), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    ctx.redis.hset(f"rq:job:{job_id}", "meta", json.dumps(meta))
    api = start_server(processes, settings)
    assert trace.encode() in api.request("GET", f"/console/jobs/{job_id}").body
    for path in [*PAGES, f"/console/jobs/{job_id}", f"/console/plans/{plan_id}"]:
        answer = api.request("GET", path)
        assert answer.status == 200, (path, answer.body[:500])
        assert answer.header("content-type") == "text/html; charset=utf-8"
        policy = answer.header("content-security-policy") or ""
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert b"<script>alert" not in answer.body, path
        # Nothing from outside: the only URL is the SVG namespace, which loads nothing.
        local = answer.body.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")
        assert b"http://" not in local and b"https://" not in local and b"//cdn" not in local
    for path in ("/console/plans", f"/console/jobs/{job_id}", f"/console/plans/{plan_id}"):
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in api.request("GET", path).body
    # The jobs page's filters: state, plan (part of its title, or its id) and time.
    for query, shown in (
        ("state=pending", True),
        ("state=completed", False),
        ("plan=%3Cscript", True),
        (f"plan={plan_id}", True),
        ("plan=no+such+title", False),
        ("since=15m&state=pending", True),
    ):
        listed = api.request("GET", f"/console/jobs?{query}")
        assert listed.status == 200 and (job_id.encode() in listed.body) == shown, query
    fragment = api.request("GET", "/console/", headers={"X-Console-Fragment": "1"})
    assert fragment.status == 200 and b"<html" not in fragment.body and b"Queued" in fragment.body
    for name in ("console.js", "console.css"):
        assert api.request("GET", f"/console/static/{name}").status == 200
    assert api.request("GET", "/console/static/..%2fsecurity.py").status == 404
    assert api.request("GET", "/console/jobs/no-such-job").status == 404
    bad = api.request("GET", "/console/jobs?state=bogus")
    assert bad.status == 400 and b"is not one of" in bad.body and b"Traceback" not in bad.body


def test_without_a_token_the_console_is_read_only(settings: Settings, processes: Processes) -> None:
    api = start_server(processes, settings)
    page = api.request("GET", "/console/dlq")
    cookie = cookie_of(page)
    assert "httponly" in (page.header("set-cookie") or "").lower()
    assert "samesite=strict" in (page.header("set-cookie") or "").lower()
    assert b"read-only" in page.body
    assert b"Requeue" not in page.body  # no action offered
    refused = post(api, "/console/actions/requeue", cookie, {"csrf": "x", "all": "yes"})
    assert refused.status == 403 and b"read-only" in refused.body


def test_with_a_token_login_is_needed_and_actions_need_the_csrf_token(
    make_settings: object, processes: Processes
) -> None:
    settings = make_settings(api_token="console-sécret")  # type: ignore[operator]
    api = start_server(processes, settings)
    first = api.request("GET", "/console/dlq")
    assert first.status == 303 and "/console/login" in (first.header("location") or "")
    assert api.request("GET", "/console/", headers={"X-Console-Fragment": "1"}).status == 401
    wrong = post(api, "/console/login", None, {"token": "nope", "next": "/console/dlq"})
    assert wrong.status == 401 and b"not the token" in wrong.body
    good = post(api, "/console/login", None, {"token": "console-sécret", "next": "/console/dlq"})
    assert good.status == 303 and good.header("location") == "/console/dlq"
    raw = (good.header("set-cookie") or "").lower()
    assert "httponly" in raw and "samesite=strict" in raw and "path=/console" in raw
    cookie = cookie_of(good)
    offsite = post(api, "/console/login", None, {"token": "console-sécret", "next": "//evil"})
    assert offsite.header("location") == "/console/"
    page = api.request("GET", "/console/", headers={"Cookie": f"phase1_console={cookie}"})
    assert page.status == 200 and b"Log out" in page.body
    for fields in ({"queue": settings.queue}, {"queue": settings.queue, "csrf": "0" * 64}):
        refused = post(api, "/console/actions/pause", cookie, fields)
        assert refused.status == 403 and b"CSRF" in refused.body
    asks = post(api, "/console/actions/requeue", cookie, {"csrf": csrf_of(page), "job": "x"})
    assert asks.status == 200 and b'name="confirm" value="yes"' in asks.body
    forged = post(api, "/console/actions/requeue", "1-abc.0000", {"csrf": csrf_of(page)})
    assert forged.status == 401


def test_console_write_lets_the_console_act_without_a_token(
    make_settings: object, processes: Processes
) -> None:
    settings = make_settings(console_write=True)  # type: ignore[operator]
    api = start_server(processes, settings)
    page = api.request("GET", "/console/")
    assert b"actions allowed" in page.body
    asked = post(
        api, "/console/actions/requeue", cookie_of(page), {"csrf": csrf_of(page), "job": "nope"}
    )
    assert asked.status == 200 and b"Requeue the chosen job (1 job)" in asked.body
    done = post(
        api,
        "/console/actions/requeue",
        cookie_of(page),
        {"csrf": csrf_of(page), "job": "nope", "confirm": "yes"},
    )
    assert done.status == 303  # the outcome (not in the DLQ) is told on the next page
    assert "not%20in%20the%20dead-letter%20queue" in (done.header("set-cookie") or "")
