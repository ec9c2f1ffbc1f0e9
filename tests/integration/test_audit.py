"""`phase1 audit` on a record broken on purpose in each way it checks (issue 21), in a
PostgreSQL database of its own (the plan checks read every plan)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from rq.job import Job
from support import PHASE1, Processes, settings_env, wait_until, with_db

from phase1 import db, keys
from phase1.context import Phase1, build
from phase1.domain import plans
from phase1.jobs import approval, deadletter, events
from phase1.jobs import queue as jobs
from phase1.runtime import consistency
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def own_database(pg_server_url: str) -> Iterator[str]:
    name = f"phase1_audit_{uuid.uuid4().hex[:8]}"
    admin = with_db(pg_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_db(pg_server_url, name)
    db.migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def audit_settings(make_settings: Callable[..., Settings], own_database: str) -> Settings:
    return make_settings(database_url=own_database, webhook_urls=[HOOK], webhook_secret="s3")


@pytest.fixture
def actx(audit_settings: Settings) -> Iterator[Phase1]:
    phase1 = build(audit_settings)
    try:
        yield phase1
    finally:
        phase1.close()


def make_plan(ctx: Phase1) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "Audit plan", SAMPLE_ANALYSIS).id


def sql_run(ctx: Phase1, statement: str, params: dict[str, Any] | None = None) -> None:
    with ctx.transaction() as conn:
        conn.execute(statement, params or {})


def run_audit(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PHASE1, "audit", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_clean_record_is_clean(actx: Phase1, processes: Processes) -> None:
    job_id = approval.approve(actx, make_plan(actx)).job_id
    processes.worker(actx.settings)
    wait_until(lambda: jobs.view(actx, job_id).status == "completed", what="job completed")
    wait_until(
        lambda: not consistency.check(actx), what="webhook given up or delivered", timeout=60
    )
    out = run_audit(actx.settings)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "clean" in out.stderr


def test_audit_finds_each_kind_of_break_and_fix_mends_what_it_can(
    actx: Phase1, processes: Processes
) -> None:
    queue = actx.settings.queue
    # Completed jobs to break afterwards (a worker, then stopped: nothing runs meanwhile).
    done = [approval.approve(actx, make_plan(actx)) for _ in range(2)]
    processes.worker(actx.settings, "--burst")
    wait_until(
        lambda: all(jobs.view(actx, d.job_id).status == "completed" for d in done),
        what="jobs completed",
        timeout=60,
    )
    processes.stop_all()
    lacking, silent = done
    # 1. an approved plan with no execution
    orphan_plan = make_plan(actx)
    sql_run(
        actx,
        "UPDATE marketplace_plans SET status = 'approved' WHERE id = %(id)s",
        {"id": orphan_plan},
    )
    # (a second execution for a plan cannot be written: uq_job_executions_plan)
    # 2. a completed job whose plan lost a task
    sql_run(
        actx,
        "DELETE FROM marketplace_tasks WHERE plan_id = %(plan)s AND task_key = %(key)s",
        {"plan": lacking.plan_id, "key": SAMPLE_ANALYSIS["phase1"][0]["key"]},  # type: ignore[index]
    )
    # 3. a job active for ten minutes (its worker long gone, Redis without it)
    stuck = approval.approve(actx, make_plan(actx))
    actx.redis.delete(keys.rq_job(stuck.job_id))
    actx.redis.lrem(actx.queue().key, 0, stuck.job_id)
    sql_run(
        actx,
        "UPDATE marketplace_job_executions SET status = 'active', "
        "started_at = NOW() - INTERVAL '10 minutes', updated_at = NOW() - INTERVAL '10 minutes' "
        "WHERE job_id = %(job)s",
        {"job": stuck.job_id},
    )
    # 4. an RQ job and a DLQ entry with no execution row
    stray = f"stray-{uuid.uuid4()}"
    actx.queue().enqueue(keys.JOB_FUNC, {"planId": str(uuid.uuid4())}, job_id=stray)
    ghost = f"ghost-{uuid.uuid4()}"
    deadletter.add(actx.redis, queue, {"jobId": ghost, "reason": "exception"})
    # 5. a completed job whose final event is gone from the stream
    for sid, event in list(events.read(actx.redis, queue, job_id=silent.job_id)):
        if event.type == keys.COMPLETED:
            actx.redis.xdel(keys.event_stream(queue), sid)
    # 6. a webhook delivery that failed without being recorded as given up
    completed = [
        e
        for _, e in events.read(actx.redis, queue, job_id=lacking.job_id)
        if e.type == keys.COMPLETED
    ]
    delivery = f"webhook-{completed[0].id}-0"
    hooks = actx.queue(keys.webhook_queue(queue))
    job = Job.fetch(delivery, connection=actx.redis, serializer=hooks.serializer)
    hooks.remove(job)
    hooks.failed_job_registry.add(job, ttl=3600)
    job.set_status("failed")

    found = consistency.check(actx)
    kinds = {(v.kind, v.id) for v in found}
    expected = {
        ("plan-without-execution", str(orphan_plan)),
        ("tasks-missing", lacking.job_id),
        ("stuck", stuck.job_id),
        ("redis-without-row", stray),
        ("redis-without-row", ghost),
        ("final-event-missing", silent.job_id),
        ("webhook-lost", delivery),
    }
    assert kinds == expected, found
    assert all(v.fix_command for v in found)

    out = run_audit(actx.settings, "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert not report["clean"] and len(report["violations"]) == len(expected)
    assert "violation(s)" in out.stderr and "Traceback" not in out.stderr

    fixed = run_audit(actx.settings, "--fix")
    assert fixed.returncode == 1  # what needs a person stays
    assert "fixed: created 1 missing task(s)" in fixed.stderr
    assert f"fixed: emitted job:completed for job {silent.job_id}" in fixed.stderr
    assert "fixed: reconciler: re-enqueued 1" in fixed.stderr
    assert f"fixed: enqueued webhook delivery {delivery} again" in fixed.stderr
    left = {(v.kind, v.id) for v in consistency.check(actx)}
    assert left == {
        ("plan-without-execution", str(orphan_plan)),
        ("redis-without-row", stray),
        ("redis-without-row", ghost),
    }
    with actx.read() as conn:
        assert len(plans.list_tasks(conn, lacking.plan_id)) == 5


def test_since_and_bad_durations(actx: Phase1) -> None:
    out = run_audit(actx.settings, "--since", "yesterday")
    assert out.returncode == 2 and "not a duration" in out.stderr
    assert run_audit(actx.settings, "--since", "1h").returncode == 0
