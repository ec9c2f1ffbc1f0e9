"""The routes of DESIGN §4: approval, job polling, and the operational ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import bottle
from redis.exceptions import RedisError

from phase1.context import Phase1
from phase1.domain import plans
from phase1.errors import Phase1Error
from phase1.http.body import read_action, read_cancel_reason
from phase1.http.errors import error_body, json_response
from phase1.http.models import Ready, RejectResult, SyncApprovalResult
from phase1.jobs import approval, cancel, pause
from phase1.jobs import queue as jobs
from phase1.schemas import ApprovalAccepted, JobStatus

if TYPE_CHECKING:
    from phase1.http.app import Phase1App

PLAN_ROUTE = "/api/marketplace/analysis/<plan_id:path>"
# Any id, slashes and all, reaches the handler (one that is not a UUID is a 400, as for plans),
# but for a path ending in /cancel: that is the cancel route's alone (a GET of it is a 405).
JOB_ROUTE = "/api/marketplace/jobs/<job_id:re:.+(?<!/cancel)>"
JOBS_PREFIX = "/api/marketplace/jobs/"
CANCEL_ROUTE = "/api/marketplace/jobs/<job_id:path>/cancel"
# API answers describe live state: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def status_url(job_id: str) -> str:
    return JOBS_PREFIX + job_id


def install(app: Phase1App) -> None:
    """Add every route to `app`; each handler reads the shared context from the app."""
    ctx = app.ctx
    sync_mode = ctx.settings.approval_mode == "sync"

    def patch_plan(plan_id: str) -> bottle.HTTPResponse:
        pid = plans.parse_uuid(plan_id)
        action = read_action(bottle.request.environ)
        if action == "reject":
            plan = approval.reject(ctx, pid)
            rejected = RejectResult(planId=plan.id, status=plan.status)
            return json_response(200, rejected.model_dump_json(), NO_STORE)
        if sync_mode:
            done = approval.approve_sync(ctx, pid)
            result = SyncApprovalResult(plan=done.plan, tasks=done.tasks)
            return json_response(200, result.model_dump_json(), NO_STORE)
        approved = approval.approve(ctx, pid)
        url = status_url(approved.job_id)
        accepted = ApprovalAccepted(
            jobId=approved.job_id,
            planId=approved.plan_id,
            status=cast(JobStatus, approved.status),
            statusUrl=url,
        )
        return json_response(202, accepted.model_dump_json(), {"Location": url, **NO_STORE})

    def get_job(job_id: str) -> bottle.HTTPResponse:
        view = jobs.view(ctx, plans.parse_job_id(job_id))  # not a UUID: 400, as for plans
        return json_response(200, view.model_dump_json(), NO_STORE)

    def cancel_job(job_id: str) -> bottle.HTTPResponse:
        job_id = plans.parse_job_id(job_id)  # not a UUID: 400, the one rule for ids
        reason = read_cancel_reason(bottle.request.environ)
        view = cancel.cancel(ctx, job_id, reason)
        return json_response(200, view.model_dump_json(), NO_STORE)

    def healthz() -> bottle.HTTPResponse:
        return json_response(200, b'{"status":"ok"}')

    def readyz() -> bottle.HTTPResponse:
        checks = readiness(ctx)
        if all(v == "ok" for v in checks.values()):
            ready = Ready(status="ready", checks=checks, paused=paused_queues(ctx))
            return json_response(200, ready.model_dump_json())
        failing = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        body = error_body("unavailable", f"not ready: {failing}", checks=checks)
        return json_response(503, body, {"Retry-After": "2"})

    def metrics() -> bottle.HTTPResponse:
        payload, content_type = app.metrics.render()
        return bottle.HTTPResponse(payload, 200, Content_Type=content_type)

    def openapi() -> bottle.HTTPResponse:
        return json_response(200, app.openapi_json)

    # Each route is named by its OpenAPI path, which the request metrics use as their label.
    app.route(PLAN_ROUTE, "PATCH", patch_plan, name="/api/marketplace/analysis/{planId}")
    app.route(JOB_ROUTE, "GET", get_job, name="/api/marketplace/jobs/{jobId}")
    app.route(CANCEL_ROUTE, "POST", cancel_job, name="/api/marketplace/jobs/{jobId}/cancel")
    for path, handler in (
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics),
        ("/openapi.json", openapi),
    ):
        app.route(path, "GET", handler, name=path)


def paused_queues(ctx: Phase1) -> list[str]:
    """The queues `phase1 pause` paused (the service is up all the same: /readyz stays 200)."""
    try:
        return sorted(pause.paused(ctx))
    except Phase1Error:
        return []


def readiness(ctx: Phase1) -> dict[str, str]:
    """ "ok", or why not, for Redis and PostgreSQL (each bounded by the HTTP timeouts)."""
    checks: dict[str, str] = {}
    try:
        ctx.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"unavailable ({type(exc).__name__})"
    try:
        with ctx.transaction() as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Phase1Error as exc:
        checks["postgres"] = f"unavailable ({type(exc.__cause__ or exc).__name__})"
    return checks
