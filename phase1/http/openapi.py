"""The API's own OpenAPI 3.1 document, its schemas generated from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from phase1 import __version__
from phase1.http.body import MAX_BODY
from phase1.http.errors import RETRY_AFTER
from phase1.http.models import (
    ApprovalRequest,
    CancelRequest,
    ErrorBody,
    Health,
    NotReady,
    Ready,
    RejectResult,
    SyncApprovalResult,
)
from phase1.schemas import ApprovalAccepted, JobView
from phase1.settings import Settings

REF = "#/components/schemas/{model}"
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ApprovalAccepted,
    RejectResult,
    SyncApprovalResult,
    JobView,
    ErrorBody,
    Health,
    Ready,
    NotReady,
)

ERRORS: dict[str, tuple[str, str]] = {
    # status: (component name, description)
    "400": ("BadRequest", "Malformed JSON, a body that is not an object, a missing or unknown "
            "action, or a plan or job id that is not a UUID."),
    "401": ("Unauthorized", "PHASE1_API_TOKEN is set and the request lacks "
            "`Authorization: Bearer <token>`."),
    "404": ("NotFound", "No such plan or job."),
    "409": ("Conflict", "The plan cannot go this way: approving a rejected plan, rejecting an "
            "approved one, approving a plan whose job failed (it is in the DLQ), or cancelling "
            "a job that completed."),
    "413": ("PayloadTooLarge", f"The body is over {MAX_BODY // 1024} KiB."),
    "415": ("UnsupportedMediaType", "The Content-Type is neither JSON nor text/plain."),
    "503": ("Unavailable", "Redis or PostgreSQL is unreachable or did not answer in time; "
            "retry after `Retry-After` seconds. Nothing was half-written: an approval is "
            "either recorded (and will be enqueued) or not written at all."),
}  # fmt: skip


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(status: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{ERRORS[status][0]}"}


def _responses(errors: list[str], auth: bool) -> dict[str, Any]:
    statuses = sorted(set(errors) | ({"401"} if auth else set()))
    return {status: _error(status) for status in statuses}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for an app with these settings (auth appears when a token is set)."""
    auth = settings.api_token is not None
    models: list[tuple[type[BaseModel], str]] = [
        (ApprovalRequest, "validation"),
        (CancelRequest, "validation"),
    ]
    models += [(m, "serialization") for m in RESPONSE_MODELS]
    _, defs = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    plan_id = {
        "name": "planId",
        "in": "path",
        "required": True,
        "description": "The plan's UUID.",
        "schema": {"type": "string", "format": "uuid"},
    }
    job_id = {
        "name": "jobId",
        "in": "path",
        "required": True,
        "description": "The job id the approval answered (a UUID).",
        "schema": {"type": "string", "format": "uuid"},
    }
    approve: dict[str, Any] = {
        "operationId": "patchPlan",
        "summary": "Approve a plan (enqueue its Phase 1 job) or reject it.",
        "description": (
            "`approve` answers 202 with the job id at once and a `Location` header; approving "
            "again answers the same job id (one job per plan, also under concurrent requests). "
            "With PHASE1_APPROVAL_MODE=sync it creates the tasks inline and answers 200 with "
            "the plan and its tasks. `reject` answers 200 with the plan's new status. A body "
            "sent as text/plain (what `fetch` sends by default) is read as JSON too."
        ),
        "parameters": [plan_id],
        "requestBody": {"required": True, "content": _json(_ref(ApprovalRequest))},
        "responses": {
            "200": {
                "description": "Rejected, or approved in sync mode.",
                "content": _json({"oneOf": [_ref(RejectResult), _ref(SyncApprovalResult)]}),
            },
            "202": {
                "description": "Approved; poll `statusUrl` for the job.",
                "headers": {
                    "Location": {"description": "The statusUrl.", "schema": {"type": "string"}}
                },
                "content": _json(_ref(ApprovalAccepted)),
            },
            **_responses(["400", "404", "409", "413", "415", "503"], auth),
        },
    }
    get_job = {
        "operationId": "getJob",
        "summary": "A job's status, progress, attempts, result and error.",
        "description": "Answered from PostgreSQL, also after Redis has expired the job.",
        "parameters": [job_id],
        "responses": {
            "200": {"description": "The job.", "content": _json(_ref(JobView))},
            **_responses(["400", "404", "503"], auth),
        },
    }
    cancel_job = {
        "operationId": "cancelJob",
        "summary": "Cancel a pending, retrying or running job.",
        "description": (
            "The job ends `failed` with `error.reason` `cancelled` and goes to the dead-letter "
            "queue (`phase1 dlq requeue` brings it back); a running one is interrupted before "
            "its tasks commit. Cancelling again answers the same; a completed job answers 409. "
            "The body is optional."
        ),
        "parameters": [job_id],
        "requestBody": {"required": False, "content": _json(_ref(CancelRequest))},
        "responses": {
            "200": {"description": "The cancelled job.", "content": _json(_ref(JobView))},
            **_responses(["400", "404", "409", "413", "415", "503"], auth),
        },
    }
    if auth:
        approve["security"] = get_job["security"] = cancel_job["security"] = security
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "phase1",
            "version": __version__,
            "description": "Asynchronous Phase 1 task creation for plan approvals, on RQ.",
        },
        "paths": {
            "/api/marketplace/analysis/{planId}": {"patch": approve},
            "/api/marketplace/jobs/{jobId}": {"get": get_job},
            "/api/marketplace/jobs/{jobId}/cancel": {"post": cancel_job},
            "/healthz": {"get": _simple("healthz", "Liveness: the process answers.", Health)},
            "/readyz": {
                "get": {
                    **_simple("readyz", "Readiness: Redis and PostgreSQL answer.", Ready),
                    "responses": {
                        "200": {"description": "Ready.", "content": _json(_ref(Ready))},
                        "503": {
                            "description": "Not ready.",
                            "headers": _retry_after(),
                            "content": _json(_ref(NotReady)),
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: queue depth, DLQ size, jobs by state, job "
                    "durations, HTTP request durations.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}
                    },
                }
            },
        },
        "components": {
            "schemas": defs["$defs"],
            "responses": {
                name: {
                    "description": description,
                    "content": _json(_ref(ErrorBody)),
                    **({"headers": _retry_after()} if status == "503" else {}),
                }
                for status, (name, description) in ERRORS.items()
            },
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _simple(name: str, summary: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "operationId": name,
        "summary": summary,
        "responses": {"200": {"description": "OK.", "content": _json(_ref(model))}},
    }


def _retry_after() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": f"Seconds to wait before retrying ({RETRY_AFTER}).",
            "schema": {"type": "integer"},
        }
    }


def render(settings: Settings) -> bytes:
    return json.dumps(document(settings), indent=1).encode()
