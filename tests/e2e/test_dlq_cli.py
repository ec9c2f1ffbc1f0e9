"""`phase1 dlq list | inspect | requeue` as an operator runs them: the installed command."""

from __future__ import annotations

import json
import subprocess

import psycopg
from psycopg.types.json import Jsonb
from support import PHASE1, settings_env

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval, deadletter
from phase1.jobs import queue as jobs
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings


def phase1(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PHASE1, *args],
        env={**settings_env(settings), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=90,
    )


def set_analysis(settings: Settings, plan_id: object, analysis: object) -> None:
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE marketplace_plans SET analysis = %s WHERE id = %s",
            (Jsonb(analysis), str(plan_id)),
        )


def one_error_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert any(text in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr


def test_list_inspect_and_requeue_dead_lettered_jobs(settings: Settings, ctx: Phase1) -> None:
    plan_ids, job_ids = [], []
    for title in ("First", "Second"):
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, title, SAMPLE_ANALYSIS).id
        job_ids.append(approval.approve(ctx, plan_id).job_id)
        set_analysis(settings, plan_id, {})  # an invalid analysis: a permanent error
        plan_ids.append(plan_id)
    first, second = job_ids
    assert phase1(settings, "worker", "--burst").returncode == 0

    listed = json.loads(phase1(settings, "dlq", "list", "--json").stdout)
    assert listed["queue"] == settings.queue and listed["total"] == 2
    assert [e["jobId"] for e in listed["entries"]] == [second, first]  # newest first
    assert {e["reason"] for e in listed["entries"]} == {"permanent"}
    assert [e["attempts"] for e in listed["entries"]] == [1, 1]
    assert listed["entries"][0]["planId"] == str(plan_ids[1])
    table = phase1(settings, "dlq", "list")
    assert table.returncode == 0 and first in table.stdout and "PermanentJobError" in table.stdout

    entry = json.loads(phase1(settings, "dlq", "inspect", first, "--json").stdout)
    assert entry["reason"] == "permanent"
    assert entry["payload"] == {"planId": str(plan_ids[0]), "v": 1}
    assert entry["attempts"][0]["attempt"] == 1 and entry["attempts"][0]["startedAt"]
    assert "Traceback" in entry["traceback"]
    shown = phase1(settings, "dlq", "inspect", first)
    assert shown.returncode == 0
    assert "attempts" in shown.stdout and "invalid analysis" in shown.stdout

    missing = phase1(settings, "dlq", "inspect", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().count("\n") == 0
    one_error_line(
        missing, "job 00000000-0000-4000-8000-000000000000 is not in the dead-letter queue"
    )

    dry = phase1(settings, "dlq", "requeue", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.split() == [first, second]  # --all goes oldest failure first
    assert "would send back 2 job(s)" in dry.stderr
    assert deadletter.size(ctx.redis, settings.queue) == 2

    set_analysis(settings, plan_ids[0], SAMPLE_ANALYSIS)  # the operator fixes the first plan
    some = phase1(settings, "dlq", "requeue", first, "00000000-0000-4000-8000-000000000000")
    assert some.returncode == 1
    assert some.stdout.split() == [first]  # the good id still moved
    one_error_line(some, "job 00000000-0000-4000-8000-000000000000 is not in the dead-letter queue")
    assert "sent back 1 job(s)" in some.stderr and "1 not in the dead-letter queue" in some.stderr
    assert deadletter.job_ids(ctx.redis, settings.queue) == [second]
    view = jobs.view(ctx, first)
    assert view.status == "pending" and view.maxAttempts == 1 + settings.max_attempts

    alone = phase1(settings, "dlq", "requeue", "00000000-0000-4000-8000-000000000000")
    assert alone.returncode == 1 and alone.stdout == ""
    assert (
        alone.stderr.strip()
        == "error: job 00000000-0000-4000-8000-000000000000 is not in the dead-letter queue"
    )

    usage = phase1(settings, "dlq", "requeue")
    assert usage.returncode == 2
    one_error_line(usage, "give one or more job ids, or --all")

    set_analysis(settings, plan_ids[1], SAMPLE_ANALYSIS)
    rest = json.loads(phase1(settings, "dlq", "requeue", "--all", "--json").stdout)
    assert [r["jobId"] for r in rest["requeued"]] == [second] and rest["missing"] == []
    assert rest["requeued"][0]["attemptsSoFar"] == 1 and not rest["dryRun"]
    assert deadletter.size(ctx.redis, settings.queue) == 0
    assert ctx.queue().job_ids == [first, second]  # both back on the queue, once each
