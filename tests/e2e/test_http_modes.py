"""Bearer auth, the synchronous (pre-queue) approval mode, and `phase1 up`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from http_support import Api, executions_of, free_port, make_plan, plan_status, start_server
from support import PHASE1, Processes, child_pids, settings_env, wait_until

from phase1.context import Phase1
from phase1.settings import Settings


def test_api_token_is_required_on_api_routes(
    processes: Processes, ctx: Phase1, make_settings: Callable[..., Settings]
) -> None:
    token = "s3cret-token-for-tests"
    settings = make_settings(api_token=token)
    api = start_server(processes, settings)
    plan_id = make_plan(ctx)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        answer = api.approve(plan_id, headers=headers)
        message = answer.assert_error(401, "unauthorized")
        assert token not in message
        assert answer.header("www-authenticate") == 'Bearer realm="phase1"'
        api.job("00000000-0000-4000-8000-000000000000", headers=headers).assert_error(
            401, "unauthorized"
        )
        api.request("GET", "/api/nope", headers=headers).assert_error(401)
    assert executions_of(settings.database_url or "", plan_id) == 0

    authorized = Api(api.port, token=token)
    assert authorized.approve(plan_id).status == 202
    authorized.job("00000000-0000-4000-8000-000000000000").assert_error(404)
    # Operational routes stay open for probes and scrapers.
    assert api.request("GET", "/healthz").status == 200
    assert api.request("GET", "/readyz").status == 200
    assert api.request("GET", "/metrics").status == 200
    document = api.request("GET", "/openapi.json").json
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_sync_mode_answers_200_with_the_plan_and_its_tasks(
    processes: Processes, ctx: Phase1, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(approval_mode="sync")
    api = start_server(processes, settings)  # no worker: the request itself creates the tasks
    plan_id = make_plan(ctx)
    answer = api.approve(plan_id)
    assert answer.status == 200, answer.body
    body = answer.json
    assert set(body) == {"plan", "tasks"}
    assert body["plan"]["id"] == str(plan_id) and body["plan"]["status"] == "approved"
    assert [t["key"] for t in body["tasks"]] == [
        "kickoff",
        "data-access",
        "baseline",
        "risks",
        "plan-review",
    ]
    assert api.approve(plan_id).json["tasks"] == body["tasks"]  # idempotent, no duplicates
    assert ctx.queue().count == 0 and executions_of(settings.database_url or "", plan_id) == 0
    other = make_plan(ctx)
    assert api.reject(other).json == {"planId": str(other), "status": "rejected"}
    api.approve(other).assert_error(409, "conflict")
    api.approve("test-plan-123").assert_error(400, "invalid_input")


def _worker_processes(up_pid: int) -> list[int]:
    """`phase1 worker` processes under `up` (the supervisor, or the worker itself)."""
    found = []
    for pid in child_pids(up_pid, zombies=True):
        try:
            if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue  # gone meanwhile
    return found


@pytest.mark.slow
def test_up_serves_http_and_restarts_a_crashed_worker(
    processes: Processes, ctx: Phase1, settings: Settings
) -> None:
    port = free_port()
    up = processes.start([PHASE1, "up", "--processes", "1", "--port", str(port)], settings)
    api = Api(port)
    wait_until(lambda: _healthy(api), timeout=60, what="phase1 up answering")

    plan_id = make_plan(ctx)
    job_id = api.approve(plan_id).json["jobId"]
    wait_until(
        lambda: api.job(job_id).json["status"] == "completed", timeout=40, what="job completed"
    )

    first = wait_until(lambda: _worker_processes(up.pid), timeout=20, what="worker started")
    os.kill(first[0], signal.SIGKILL)  # a crash, as the OOM killer would do it
    wait_until(
        lambda: (w := _worker_processes(up.pid)) and w[0] != first[0],
        timeout=30,
        what="worker restarted",
    )
    second = make_plan(ctx)
    job2 = api.approve(second).json["jobId"]
    wait_until(
        lambda: api.job(job2).json["status"] == "completed",
        timeout=40,
        what="job completed by the restarted worker",
    )
    assert plan_status(settings.database_url or "", second) == "approved"

    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=40) == 0
    log = processes.log(0)
    assert "restarting" in log and "server stopped" in log and "Traceback" not in log
    # Nothing is left running: not the workers, not the scheduler RQ forks off each one.
    wait_until(lambda: not _processes_on(settings.queue), timeout=10, what="workers gone")


def _processes_on(queue: str) -> list[int]:
    """Live processes whose environment names this test's queue."""
    marker = f"PHASE1_QUEUE={queue}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if marker in environ and _state(int(entry.name)) != "Z":
            found.append(int(entry.name))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _healthy(api: Api) -> bool:
    try:
        return api.request("GET", "/healthz", timeout=2).status == 200
    except OSError:
        return False


def test_serve_reports_a_port_in_use_and_a_bad_host_in_one_line(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for args, code, expected in (
            (["--port", str(port)], 1, f"cannot listen on 127.0.0.1:{port}"),
            (["--host", "256.1.1.1"], 2, "invalid --host '256.1.1.1'"),
        ):
            result = subprocess.run(
                [PHASE1, "serve", *args],
                env=settings_env(settings),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == code, result.stderr
            assert expected in result.stderr and "Traceback" not in result.stderr
            assert result.stderr.strip().count("\n") == 0, result.stderr
