"""Plans: created with a validated analysis, read, their status set, their tasks listed.
The tasks themselves are created by phase1.domain.phase1_tasks."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import ValidationError

from phase1.errors import InvalidInputError, NotFoundError
from phase1.schemas import Analysis, Plan, Task

if TYPE_CHECKING:  # psycopg loads when PostgreSQL is first used, not with this module
    from phase1.db import Conn

SQL_INSERT_PLAN = """
INSERT INTO marketplace_plans (id, title, status, analysis)
VALUES (%(id)s, %(title)s, 'analyzed', %(analysis)s)
RETURNING *
"""
SQL_GET_PLAN = "SELECT * FROM marketplace_plans WHERE id = %(id)s"
SQL_LOCK_PLAN = "SELECT * FROM marketplace_plans WHERE id = %(id)s FOR UPDATE"
SQL_SET_PLAN_STATUS = """
UPDATE marketplace_plans SET status = %(status)s, updated_at = NOW()
WHERE id = %(id)s RETURNING *
"""
SQL_PLAN_TASKS = """
SELECT * FROM marketplace_tasks WHERE plan_id = %(plan_id)s AND phase = 1
ORDER BY position, created_at
"""


def parse_uuid(value: str, what: str = "plan id") -> UUID:
    """`value` as a UUID, or InvalidInputError saying it is not one."""
    try:
        return UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        shown = str(value)
        shown = shown[:40] + "…" if len(shown) > 40 else shown
        raise InvalidInputError(f"{what} {shown!r} is not a UUID") from None


def parse_job_id(value: str) -> str:
    """`value` as given when it is a UUID (job ids are: one rule and one message for every
    command and route that takes an id), or InvalidInputError saying it is not one."""
    parse_uuid(value, "job id")
    return str(value)


def validate_analysis(analysis: Any) -> Analysis:
    """The analysis as a model, or InvalidInputError naming what is wrong with it."""
    try:
        return Analysis.model_validate(analysis)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "analysis"
        raise InvalidInputError(f"invalid analysis at {where}: {first['msg']}") from None


def create_plan(conn: Conn, title: str, analysis: dict[str, Any]) -> Plan:
    """Insert a plan in status `analyzed` after validating its analysis."""
    title = title.strip()
    if not title:
        raise InvalidInputError("title must not be empty")
    if len(title) > 500:
        raise InvalidInputError("title is longer than 500 characters")
    validate_analysis(analysis)
    from psycopg.types.json import Jsonb

    row = conn.execute(
        SQL_INSERT_PLAN, {"id": uuid.uuid4(), "title": title, "analysis": Jsonb(analysis)}
    ).fetchone()
    assert row is not None
    return Plan.from_row(row)


def get_plan(conn: Conn, plan_id: UUID, *, lock: bool = False) -> Plan:
    row = conn.execute(SQL_LOCK_PLAN if lock else SQL_GET_PLAN, {"id": plan_id}).fetchone()
    if row is None:
        raise NotFoundError(f"plan {plan_id} not found")
    return Plan.from_row(row)


def set_plan_status(conn: Conn, plan_id: UUID, status: str) -> Plan:
    row = conn.execute(SQL_SET_PLAN_STATUS, {"id": plan_id, "status": status}).fetchone()
    if row is None:
        raise NotFoundError(f"plan {plan_id} not found")
    return Plan.from_row(row)


def list_tasks(conn: Conn, plan_id: UUID) -> list[Task]:
    rows = conn.execute(SQL_PLAN_TASKS, {"plan_id": plan_id}).fetchall()
    return [Task.from_row(row) for row in rows]
