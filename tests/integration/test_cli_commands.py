"""The operator's commands in-process (CliRunner) on real Redis, PostgreSQL and workers."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support import JOB_VIEW_KEYS, Processes, inject_fault, settings_env, wait_until
from typer.testing import CliRunner

from phase1 import keys
from phase1.cli import app
from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval, deadletter
from phase1.redisconn import primary_address
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

INFO_KEYS = {
    "queue",
    "paused",
    "pausedQueues",
    "redis",
    "redisPrimary",
    "at",
    "queued",
    "scheduled",
    "active",
    "dlq",
    "workers",
    "scheduler",
    "lastHour",
    "webhooksQueued",
    "redisSettings",
    "warnings",
}


def cli(settings: Settings, *args: str, **env: str) -> Result:
    environment = {**settings_env(settings), "NO_COLOR": "", **env}
    return CliRunner().invoke(app, list(args), env=environment)


def info_json(settings: Settings) -> dict[str, Any]:
    result = cli(settings, "info", "--json")
    assert result.exit_code == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def approved_job(ctx: Phase1) -> str:
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "CLI plan", SAMPLE_ANALYSIS)
    return approval.approve(ctx, plan.id).job_id


def test_info_json_on_an_empty_queue(settings: Settings, ctx: Phase1) -> None:
    document = info_json(settings)
    assert set(document) == INFO_KEYS
    assert document["queue"] == settings.queue
    assert document["redisPrimary"] == primary_address(ctx.redis)  # the server it read
    assert document["queued"] == 0 and document["active"] == [] and document["workers"] == []
    assert document["scheduled"] == {"count": 0, "nextAt": None}
    assert document["dlq"] == {"size": 0, "oldest": None}
    assert document["scheduler"] == {"running": False, "name": None, "hostname": None, "pid": None}
    assert document["lastHour"] == {"completed": 0, "failed": 0, "failedAttempts": 0}
    assert document["warnings"] == []
    assert document["at"].endswith("Z")
    assert document["redisSettings"]["maxmemoryPolicy"] == "noeviction"  # the test servers'
    assert isinstance(document["redisSettings"]["appendonly"], bool)


def test_info_counts_queued_scheduled_and_dead_lettered_jobs(
    settings: Settings, ctx: Phase1
) -> None:
    approved_job(ctx)
    approved_job(ctx)
    ctx.queue().enqueue_in(timedelta(minutes=5), keys.JOB_FUNC, {"planId": str(uuid.uuid4())})
    deadletter.add(
        ctx.redis,
        settings.queue,
        {
            "jobId": "dead-1",
            "planId": None,
            "reason": "timeout",
            "errorType": "JobTimeout",
            "message": "attempt timed out after 5 s",
        },
    )
    document = info_json(settings)
    assert document["queued"] == 2
    assert document["scheduled"]["count"] == 1 and document["scheduled"]["nextAt"].endswith("Z")
    assert document["dlq"]["size"] == 1
    oldest = document["dlq"]["oldest"]
    assert oldest["jobId"] == "dead-1" and oldest["reason"] == "timeout"
    assert oldest["error"] == "JobTimeout: attempt timed out after 5 s"
    warnings = " ".join(document["warnings"])
    assert "no worker is listening" in warnings and "no scheduler runs" in warnings
    assert "dead-letter queue" in warnings

    text = cli(settings, "info")
    assert text.exit_code == 0
    assert "queued:             2" in text.stdout and "\x1b" not in text.stdout


def test_info_shows_workers_the_scheduler_and_active_jobs(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Slow plan", SAMPLE_ANALYSIS)
    inject_fault(settings.database_url or "", plan.id, fail_times=0, sleep_s=3)
    processes.worker(settings)
    wait_until(lambda: info_json(settings)["scheduler"]["running"], timeout=30, what="scheduler")
    job_id = approval.approve(ctx, plan.id).job_id

    def active() -> dict[str, Any] | None:
        document = info_json(settings)
        return document if document["active"] else None

    document = wait_until(active, timeout=30, what="an active job")
    (job,) = document["active"]
    (worker,) = document["workers"]
    assert job["jobId"] == job_id and job["planId"] == str(plan.id)
    assert job["attempt"] == 1 and job["maxAttempts"] == settings.max_attempts
    assert job["worker"] == worker["name"] and job["ageSeconds"] >= 0
    assert worker["state"] == "busy" and worker["jobId"] == job_id
    assert settings.queue in worker["queues"] and worker["pid"] > 0
    assert document["scheduler"]["hostname"] == worker["hostname"]
    assert document["warnings"] == []
    wait_until(
        lambda: info_json(settings)["lastHour"]["completed"] == 1, timeout=30, what="completed"
    )


def test_status_json_and_watch_to_completed(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    job_id = approved_job(ctx)
    pending = cli(settings, "status", job_id, "--json")
    assert pending.exit_code == 0 and set(json.loads(pending.stdout)) == JOB_VIEW_KEYS
    processes.worker(settings)
    watched = cli(settings, "status", job_id, "--watch", "--interval", "0.1", "--timeout", "60")
    assert watched.exit_code == 0, watched.stderr
    assert "completed attempt 1/" in watched.stderr  # one line per change, no bar off a TTY
    assert "\x1b" not in watched.stderr + watched.stdout
    assert "status:     completed" in watched.stdout


def test_watch_exits_1_on_failed_with_the_error(
    make_settings: Any, ctx: Phase1, processes: Processes
) -> None:
    settings = make_settings(max_retries=1, retry_intervals=[0.2])
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Failing plan", SAMPLE_ANALYSIS)
    inject_fault(settings.database_url, plan.id, fail_times=10)
    with Phase1Context(settings) as phase1:
        job_id = approval.approve(phase1, plan.id).job_id
    processes.worker(settings)
    watched = cli(settings, "status", job_id, "--watch", "--json", "--interval", "0.1")
    assert watched.exit_code == 1, watched.stderr
    lines = watched.stderr.splitlines()
    assert any("retrying" in line and "injected fault" in line for line in lines)
    assert any("failed" in line and "dead-letter queue" in line for line in lines)
    document = json.loads(watched.stdout)
    assert document["status"] == "failed" and document["attempt"] == 2


def test_watch_gives_up_after_its_timeout(settings: Settings, ctx: Phase1) -> None:
    job_id = approved_job(ctx)
    result = cli(settings, "status", job_id, "--watch", "--interval", "0.1", "--timeout", "0.3")
    assert result.exit_code == 1
    assert f"job {job_id} is still pending after 0.3s" in result.stderr


NO_SUCH_JOB = "00000000-0000-4000-8000-000000000000"


def test_unknown_job_is_exit_1(settings: Settings, ctx: Phase1) -> None:
    result = cli(settings, "status", NO_SUCH_JOB, "--watch")
    assert result.exit_code == 1
    assert result.stderr == f"error: job {NO_SUCH_JOB} not found\n"


@pytest.mark.parametrize(
    "args",
    [
        ["status", "not-a-uuid"],
        ["status", "not-a-uuid", "--watch"],
        ["enqueue", "not-a-uuid"],
        ["plans", "show", "not-a-uuid"],
        ["dlq", "inspect", "not-a-uuid"],
        ["dlq", "requeue", NO_SUCH_JOB, "not-a-uuid"],
        ["events", "--job", "not-a-uuid"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_taking_an_id_says_the_same_of_one_that_is_not_a_uuid(
    settings: Settings, args: list[str]
) -> None:
    result = cli(settings, *args)
    assert result.exit_code == 2, result.output
    what = "plan id" if args[0] in ("enqueue", "plans") else "job id"
    assert result.stderr == f"error: {what} 'not-a-uuid' is not a UUID\n"
    assert result.stdout == ""


def test_plans_show_and_migrate(settings: Settings, ctx: Phase1) -> None:
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Shown plan", SAMPLE_ANALYSIS)
    shown = cli(settings, "plans", "show", str(plan.id))
    assert shown.exit_code == 0
    assert "Phase 1 tasks (0)" in shown.stdout and "\x1b" not in shown.stdout
    document = json.loads(cli(settings, "plans", "show", str(plan.id), "--json").stdout)
    assert set(document) == {"plan", "tasks", "job"} and document["job"] is None
    migrated = cli(settings, "migrate")
    assert migrated.exit_code == 0 and migrated.stderr == "database is up to date\n"


def test_embedded_status_and_stop_when_none_runs(settings: Settings, tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    status = cli(settings, "embedded", "status", "--json", PHASE1_HOME=home)
    assert status.exit_code == 0
    assert json.loads(status.stdout) == {
        "home": str(Path(home).resolve()),
        "redis": None,
        "postgres": None,
    }
    table = cli(settings, "embedded", "status", PHASE1_HOME=home)
    assert "redis     stopped" in table.stdout
    stopped = cli(settings, "embedded", "stop", PHASE1_HOME=home)
    assert stopped.exit_code == 0 and "no embedded server was running" in stopped.stderr


def test_unreachable_redis_names_the_url_and_setting(settings: Settings, ctx: Phase1) -> None:
    job_id = approved_job(ctx)
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Plan to approve without Redis", SAMPLE_ANALYSIS)
    broken = settings.model_copy(update={"redis_url": "redis://:hunter2@127.0.0.1:1/0"})
    for args in (["info"], ["info", "--json"], ["enqueue", str(plan.id)]):
        result = cli(broken, *args)
        assert result.exit_code == 1, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Redis at redis://:***@127.0.0.1:1/0 is unavailable" in result.stderr
        assert "(set REDIS_URL)" in result.stderr and "hunter2" not in result.stderr
    # Reads that PostgreSQL answers still work without Redis.
    assert cli(broken, "status", job_id).exit_code == 0


class Phase1Context:
    """A context for other settings than the `ctx` fixture's, closed afterwards."""

    def __init__(self, settings: Settings) -> None:
        from phase1.context import build

        self.ctx = build(settings)

    def __enter__(self) -> Phase1:
        return self.ctx

    def __exit__(self, *_: object) -> None:
        self.ctx.close()
