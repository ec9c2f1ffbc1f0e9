"""Pydantic models: job payload, analysis, plan and task rows, job view, DLQ entry, event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _as_utc(value: datetime | None) -> datetime | None:
    """PostgreSQL's `timestamp` columns hold UTC without saying so: say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

JobStatus = Literal["pending", "active", "retrying", "completed", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed"})
LIVE_STATUSES: frozenset[str] = frozenset({"pending", "active", "retrying"})
PlanStatus = Literal["analyzed", "approved", "rejected"]
FailureReason = Literal[
    "exception", "timeout", "abandoned", "permanent", "interrupted", "cancelled"
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class JobPayload(_Frozen):
    """The JSON arguments of a Phase 1 job. No secrets: they live in Redis as long as the job."""

    planId: UUID
    v: Literal[1] = 1


class AnalysisTask(_Frozen):
    """One Phase 1 task as the analysis lists it."""

    key: str = Field(min_length=1, max_length=200, pattern=r"^[\w.:-]+$")
    title: str = Field(min_length=1, max_length=500)
    description: str = Field(default="", max_length=10_000)


class Analysis(BaseModel):
    """A plan's analysis: its Phase 1 task list (other keys are kept, not read)."""

    model_config = ConfigDict(frozen=True, extra="allow", defer_build=True)

    phase1: list[AnalysisTask] = Field(min_length=1, max_length=1000)

    @field_validator("phase1")
    @classmethod
    def _unique_keys(cls, tasks: list[AnalysisTask]) -> list[AnalysisTask]:
        seen: set[str] = set()
        for task in tasks:
            if task.key in seen:
                raise ValueError(f"task key {task.key!r} appears twice")
            seen.add(task.key)
        return tasks


SAMPLE_ANALYSIS: dict[str, Any] = {
    "phase1": [
        {"key": "kickoff", "title": "Kick-off call", "description": "Agree scope and contacts."},
        {"key": "data-access", "title": "Data access", "description": "Get read access."},
        {"key": "baseline", "title": "Baseline metrics", "description": "Measure today."},
        {"key": "risks", "title": "Risk register", "description": "List the known risks."},
        {"key": "plan-review", "title": "Plan review", "description": "Review with the client."},
    ]
}


class Task(_Frozen):
    id: UUID
    planId: UUID
    phase: int
    key: str
    title: str
    description: str
    status: str
    createdAt: UtcDatetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        return cls(
            id=row["id"],
            planId=row["plan_id"],
            phase=row["phase"],
            key=row["task_key"],
            title=row["title"],
            description=row["description"],
            status=row["status"],
            createdAt=row["created_at"],
        )


class Plan(_Frozen):
    id: UUID
    title: str
    status: PlanStatus
    analysis: dict[str, Any]
    createdAt: UtcDatetime
    updatedAt: UtcDatetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Plan:
        return cls(
            id=row["id"],
            title=row["title"],
            status=row["status"],
            analysis=row["analysis"],
            createdAt=row["created_at"],
            updatedAt=row["updated_at"],
        )


class JobResult(_Frozen):
    planId: UUID
    tasksCreated: int
    taskIds: list[UUID]


class JobError(_Frozen):
    type: str | None
    message: str
    reason: str | None = None  # "cancelled" for a job an operator cancelled


class JobView(_Frozen):
    """What the polling route and `phase1 status` answer (DESIGN §4)."""

    jobId: str
    planId: UUID
    status: JobStatus
    progress: int
    attempt: int
    maxAttempts: int
    result: dict[str, Any] | None
    error: JobError | None
    enqueuedAt: UtcDatetime | None
    startedAt: UtcDatetime | None
    completedAt: UtcDatetime | None
    nextRetryAt: UtcDatetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobView:
        error = None
        if row["error_message"] is not None:
            reason = "cancelled" if row.get("cancelled_at") is not None else None
            error = JobError(
                type=row.get("error_type"), message=row["error_message"], reason=reason
            )
        return cls(
            jobId=row["job_id"],
            planId=row["plan_id"],
            status=row["status"],
            progress=row["progress"],
            attempt=row["attempt_number"] or 1,
            maxAttempts=row["max_attempts"],
            result=row["result"],
            error=error,
            enqueuedAt=row["created_at"],
            startedAt=row["started_at"],
            completedAt=row["completed_at"],
            nextRetryAt=row["next_retry_at"] if row["status"] == "retrying" else None,
        )


class ApprovalAccepted(_Frozen):
    """The 202 answer of an approval in queue mode."""

    jobId: str
    planId: UUID
    status: JobStatus
    statusUrl: str
    created: bool = Field(default=True, exclude=True)


class Event(_Frozen):
    """A lifecycle event envelope (DESIGN §3)."""

    id: str
    type: str
    jobId: str
    planId: str | None
    attempt: int | None
    at: str
    data: dict[str, Any]
