"""Every migration applied to an empty database gives exactly the expected schema."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from support import PHASE1, with_db

from phase1 import db

OPS = "0100_ops_cancel_and_lock_diagnostics"
# Every migration, in the order `phase1 migrate` applies them to an empty database.
APPLIED = [
    "0001_initial",
    "0002_superseded_attempts",
    "0003_console_indexes",
    OPS,
    "0200_dead_letters",
]
EXPECTED_COLUMNS = {
    "marketplace_job_executions": {
        # The story's columns, exactly.
        "id": ("uuid", "NO", None),
        "plan_id": ("uuid", "NO", None),
        "job_id": ("character varying", "NO", 255),
        "status": ("character varying", "NO", 50),
        "error_message": ("text", "YES", None),
        "attempt_number": ("integer", "YES", None),
        "created_at": ("timestamp without time zone", "YES", None),
        "completed_at": ("timestamp without time zone", "YES", None),
        "result": ("jsonb", "YES", None),
        # phase1's additions.
        "queue": ("character varying", "NO", 100),
        "progress": ("integer", "NO", None),
        "max_attempts": ("integer", "NO", None),
        "started_at": ("timestamp without time zone", "YES", None),
        "next_retry_at": ("timestamp without time zone", "YES", None),
        "error_type": ("character varying", "YES", 255),
        "updated_at": ("timestamp without time zone", "NO", None),
        "cancelled_at": ("timestamp without time zone", "YES", None),
        "cancel_reason": ("text", "YES", None),
    },
    "marketplace_plans": {
        "id": ("uuid", "NO", None),
        "title": ("text", "NO", None),
        "status": ("character varying", "NO", 20),
        "analysis": ("jsonb", "NO", None),
        "created_at": ("timestamp without time zone", "NO", None),
        "updated_at": ("timestamp without time zone", "NO", None),
    },
    "marketplace_tasks": {
        "id": ("uuid", "NO", None),
        "plan_id": ("uuid", "NO", None),
        "phase": ("integer", "NO", None),
        "task_key": ("character varying", "NO", 200),
        "title": ("text", "NO", None),
        "description": ("text", "NO", None),
        "status": ("character varying", "NO", 20),
        "position": ("integer", "NO", None),
        "created_at": ("timestamp without time zone", "NO", None),
    },
    "marketplace_job_attempts": {
        "job_id": ("character varying", "NO", 255),
        "attempt": ("integer", "NO", None),
        "status": ("character varying", "NO", 20),
        "worker": ("character varying", "YES", 255),
        "blocked_by": ("jsonb", "YES", None),
        "started_at": ("timestamp without time zone", "NO", None),
        "ended_at": ("timestamp without time zone", "YES", None),
        "error_type": ("character varying", "YES", 255),
        "error_message": ("text", "YES", None),
    },
    "marketplace_dead_letters": {
        "job_id": ("character varying", "NO", 255),
        "plan_id": ("uuid", "YES", None),
        "queue": ("character varying", "NO", 255),
        "reason": ("character varying", "NO", 50),
        "error_type": ("text", "YES", None),
        "error_message": ("text", "YES", None),
        "traceback": ("text", "YES", None),
        "payload": ("jsonb", "YES", None),
        "entry": ("jsonb", "NO", None),
        "failed_at": ("timestamp with time zone", "NO", None),
        "requeued_at": ("timestamp with time zone", "YES", None),
    },
}

EXPECTED_INDEXES = {
    "idx_plan_id_job",
    "idx_status",
    "idx_executions_queue_created",
    "idx_executions_completed",
    "idx_attempts_ended",
    "idx_plans_created",
    "uq_job_executions_plan",
    "uq_task_key_per_plan",
    "marketplace_job_executions_job_id_key",
    "idx_dead_letters_open",
}


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    name = f"phase1_mig_{uuid.uuid4().hex[:8]}"
    admin = with_db(pg_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_db(pg_server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _schema(url: str) -> tuple[dict[str, dict[str, tuple[str, str, int | None]]], set[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, character_maximum_length "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name LIKE 'marketplace_%'"
        ).fetchall()
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                "AND tablename LIKE 'marketplace_%' AND indexname NOT LIKE '%_pkey'"
            ).fetchall()
        }
    tables: dict[str, dict[str, tuple[str, str, int | None]]] = {}
    for table, column, data_type, nullable, length in rows:
        tables.setdefault(table, {})[column] = (data_type, nullable, length)
    return tables, indexes


def test_all_migrations_give_the_expected_schema(empty_database: str) -> None:
    applied = db.migrate(empty_database)
    assert applied == APPLIED
    tables, indexes = _schema(empty_database)
    assert tables == EXPECTED_COLUMNS
    assert indexes == EXPECTED_INDEXES


def test_migrate_twice_applies_nothing_the_second_time(empty_database: str) -> None:
    assert db.migrate(empty_database)
    assert db.migrate(empty_database) == []


def test_two_processes_migrating_at_once_apply_each_migration_once(empty_database: str) -> None:
    env = {"DATABASE_URL": empty_database, "REDIS_URL": "redis://127.0.0.1:1/0"}
    import os

    procs = [
        subprocess.Popen(
            [PHASE1, "migrate"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    messages = sorted(err.decode() for _, err in outputs)
    assert f"applied {len(APPLIED)} migration(s): {', '.join(APPLIED)}" in messages[0]
    assert "up to date" in messages[1]
    with psycopg.connect(empty_database) as conn:
        count = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()
    assert count == (len(APPLIED),)
