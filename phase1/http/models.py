"""The HTTP-only bodies (request, reject and sync answers, errors, health), as pydantic models
so the OpenAPI document and the answers come from one definition."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from phase1.schemas import Plan, PlanStatus, Task


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class ApprovalRequest(_Body):
    """The PATCH body: approve (enqueue the plan's Phase 1 job) or reject the plan."""

    action: Literal["approve", "reject"]


class RejectResult(_Body):
    """The answer to `{"action": "reject"}`: the plan's new status."""

    planId: UUID
    status: PlanStatus


class SyncApprovalResult(_Body):
    """The answer to an approval with PHASE1_APPROVAL_MODE=sync: the plan and its tasks."""

    plan: Plan
    tasks: list[Task]


class ErrorDetail(_Body):
    code: str
    message: str


class ErrorBody(_Body):
    """Every error answer."""

    error: ErrorDetail


class Health(_Body):
    status: Literal["ok"]


class Ready(_Body):
    """Redis and PostgreSQL both answered."""

    status: Literal["ready"]
    checks: dict[str, str]
    paused: list[str] = []  # queues paused by `phase1 pause`: their jobs wait


class NotReady(_Body):
    """Redis or PostgreSQL did not answer; `checks` says which."""

    error: ErrorDetail
    checks: dict[str, str]


class CancelRequest(_Body):
    """The optional body of a cancel: why (kept with the job and in its DLQ entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str | None = None
