"""The installed `phase1` command, end to end: plans create → enqueue → worker → status."""

from __future__ import annotations

import json
import subprocess

from support import JOB_VIEW_KEYS, PHASE1, settings_env

from phase1.settings import Settings


def run(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PHASE1, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_enqueue_burst_worker_and_status(settings: Settings) -> None:
    plan = run(settings, "plans", "create", "--title", "CLI plan")
    assert plan.returncode == 0, plan.stderr
    plan_id = plan.stdout.strip()
    assert len(plan_id) == 36 and "\n" not in plan_id

    enqueued = run(settings, "enqueue", plan_id)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    again = run(settings, "enqueue", plan_id)
    assert again.stdout.strip() == job_id  # idempotent

    pending = json.loads(run(settings, "status", job_id, "--json").stdout)
    assert pending["status"] == "pending"

    worker = run(settings, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr

    status = run(settings, "status", job_id, "--json")
    assert status.returncode == 0
    view = json.loads(status.stdout)
    assert set(view) == JOB_VIEW_KEYS
    assert view["status"] == "completed"
    assert view["result"]["tasksCreated"] == 5
    assert view["completedAt"].endswith("Z")

    shown = json.loads(run(settings, "plans", "show", plan_id, "--json").stdout)
    assert len(shown["tasks"]) == 5
    assert shown["job"] == {"jobId": job_id, "status": "completed"}


def test_unknown_job_is_exit_1_with_one_line(settings: Settings) -> None:
    result = run(settings, "status", "00000000-0000-4000-8000-000000000000")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "00000000-0000-4000-8000-000000000000 not found" in result.stderr


def test_bad_plan_id_is_exit_2(settings: Settings) -> None:
    result = run(settings, "enqueue", "test-plan-123")
    assert result.returncode == 2
    assert "'test-plan-123' is not a UUID" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_postgres_names_the_url_and_setting(settings: Settings) -> None:
    broken = settings.model_copy(update={"database_url": "postgresql://u:pw@127.0.0.1:1/x"})
    result = run(broken, "status", "00000000-0000-4000-8000-000000000000")
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr and "pw" not in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
