"""The real `phase1 serve` and `phase1 worker`, driven over HTTP: DESIGN §4 route by route."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from http_support import (
    JOB_FIELDS,
    Api,
    executions_of,
    make_plan,
    plan_status,
    scalar,
    start_server,
    task_count,
)
from redis import Redis
from support import BIN, Processes

from phase1 import keys
from phase1.context import Phase1, build
from phase1.settings import Settings

HERE = Path(__file__).resolve().parent
SCHEMATHESIS = str(BIN / "schemathesis")  # installed with the test extra


@pytest.fixture(scope="module")
def settings(redis_url: str, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        queue=f"phase1-test-http-{uuid.uuid4().hex[:8]}",
        retry_intervals=[0.2, 0.2, 0.2],
        job_timeout=5,
        shutdown_timeout=5,
    )


@pytest.fixture(scope="module")
def ctx(settings: Settings) -> Iterator[Phase1]:
    phase1 = build(settings)
    try:
        yield phase1
    finally:
        phase1.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    procs = Processes(tmp_path_factory.mktemp("http"))
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def api(module_processes: Processes, settings: Settings) -> Api:
    """One server and one worker for the module (each test uses plans of its own)."""
    server = start_server(module_processes, settings)
    module_processes.worker(settings)
    return server


def poll_until_final(api: Api, job_id: str, timeout: float = 40) -> dict[str, object]:
    """Poll every 500 ms, as the story's client does."""
    deadline = time.monotonic() + timeout
    while True:
        answer = api.job(job_id)
        assert answer.status == 200, answer.body
        job = answer.json
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.5)


def test_story_acceptance_flow(api: Api, ctx: Phase1, settings: Settings) -> None:
    plan_id = make_plan(ctx)
    accepted = api.approve(plan_id)
    assert accepted.status == 202, accepted.body
    body = accepted.json
    assert set(body) == {"jobId", "planId", "status", "statusUrl"}
    assert body["planId"] == str(plan_id) and body["status"] == "pending"
    assert body["statusUrl"] == f"/api/marketplace/jobs/{body['jobId']}"
    assert accepted.header("location") == body["statusUrl"]

    job = poll_until_final(api, body["jobId"])
    assert set(job) == JOB_FIELDS
    assert job["status"] == "completed", job
    assert job["progress"] == 100 and job["attempt"] == 1 and job["error"] is None
    assert job["result"]["tasksCreated"] == 5  # type: ignore[index]
    assert str(job["completedAt"]).endswith("Z")
    assert task_count(settings.database_url or "", plan_id) == 5

    again = api.approve(plan_id)  # idempotent: the same job, now completed
    assert again.status == 202
    assert again.json["jobId"] == body["jobId"] and again.json["status"] == "completed"


def test_fifty_concurrent_approvals_make_one_job(api: Api, ctx: Phase1, settings: Settings) -> None:
    plan_id = make_plan(ctx)
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: api.approve(plan_id), range(50)))
    assert {a.status for a in answers} == {202}, {a.status for a in answers}
    assert len({a.json["jobId"] for a in answers}) == 1
    assert executions_of(settings.database_url or "", plan_id) == 1
    job = poll_until_final(api, answers[0].json["jobId"])
    assert job["status"] == "completed"
    query = "SELECT count(*) FROM marketplace_job_attempts WHERE job_id = %s"
    assert scalar(settings.database_url or "", query, job["jobId"]) == 1  # one job, run once
    assert task_count(settings.database_url or "", plan_id) == 5


def test_job_answers_after_redis_expired_it(api: Api, ctx: Phase1, settings: Settings) -> None:
    plan_id = make_plan(ctx)
    job_id = api.approve(plan_id).json["jobId"]
    assert poll_until_final(api, job_id)["status"] == "completed"
    redis = Redis.from_url(settings.redis_url or "")
    try:
        assert redis.delete(keys.rq_job(job_id)) == 1  # what result_ttl does, in our own db
    finally:
        redis.close()
    answer = api.job(job_id)
    assert answer.status == 200
    assert answer.json["status"] == "completed" and answer.json["result"]["tasksCreated"] == 5


def test_unknown_job_is_404(api: Api) -> None:
    api.request("GET", f"/api/marketplace/jobs/{uuid.uuid4()}").assert_error(404, "not_found")


@pytest.mark.parametrize(
    "job_id", ["no-such-job", "x" * 300, "%00", "..%2F..%2Fetc", "'%20OR%201=1"]
)
def test_a_job_id_that_is_not_a_uuid_is_400(api: Api, job_id: str) -> None:
    """One rule for ids: as for a plan id, and as the CLI says it (exit 2)."""
    answer = api.request("GET", f"/api/marketplace/jobs/{job_id}")
    answer.assert_error(400, "invalid_input")
    assert "is not a UUID" in answer.json["error"]["message"]


JSON_TYPE = {"Content-Type": "application/json"}
BODY_CASES = [
    ("malformed JSON", b'{"action": "approve"', JSON_TYPE, 400, "malformed JSON"),
    ("empty body", b"", JSON_TYPE, 400, "empty"),
    ("not UTF-8", b'{"action": "\xff"}', JSON_TYPE, 400, "UTF-8"),
    ("array", b'["approve"]', JSON_TYPE, 400, "must be an object, got an array"),
    ("string", b'"approve"', JSON_TYPE, 400, "must be an object, got a string"),
    ("null", b"null", JSON_TYPE, 400, "must be an object, got null"),
    ("number", b"42", JSON_TYPE, 400, "must be an object, got a number"),
    ("NaN", b'{"action": NaN}', JSON_TYPE, 400, "malformed JSON"),
    ("deep nesting", b"[" * 40_000, JSON_TYPE, 400, "malformed JSON"),
    ("missing action", b"{}", JSON_TYPE, 400, 'missing "action"'),
    ("unknown action", b'{"action": "delete"}', JSON_TYPE, 400, "unknown action 'delete'"),
    ("action not a string", b'{"action": 1}', JSON_TYPE, 400, '"action" must be a string'),
    ("action wrong case", b'{"action": "APPROVE"}', JSON_TYPE, 400, "unknown action"),
    (
        "form content type",
        b"action=approve",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "application/x-www-form-urlencoded",
    ),
    (
        "xml content type",
        b"<action>approve</action>",
        {"Content-Type": "application/xml"},
        415,
        "application/xml",
    ),
    (
        "multipart",
        b"--x\r\n\r\napprove\r\n--x--",
        {"Content-Type": "multipart/form-data; boundary=x"},
        415,
        "multipart/form-data",
    ),
    (
        "over 64 KiB",
        b'{"action": "approve", "pad": "' + b"x" * 65_536 + b'"}',
        JSON_TYPE,
        413,
        "64 KiB",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "expected"),
    [case[1:] for case in BODY_CASES],
    ids=[case[0] for case in BODY_CASES],
)
def test_bad_body_is_refused_and_nothing_is_written(
    api: Api,
    ctx: Phase1,
    settings: Settings,
    body: bytes,
    headers: dict[str, str],
    status: int,
    expected: str,
) -> None:
    plan_id = make_plan(ctx)
    answer = api.request("PATCH", f"/api/marketplace/analysis/{plan_id}", body, headers)
    assert expected in answer.assert_error(status)
    assert plan_status(settings.database_url or "", plan_id) == "analyzed"
    assert executions_of(settings.database_url or "", plan_id) == 0


PLAN_ID_CASES = [
    ("story sample", "test-plan-123", "'test-plan-123' is not a UUID"),
    ("quotes", "%27%20OR%20%221%22=%221", "is not a UUID"),
    ("dot-dot raw", "../../../etc/passwd", "is not a UUID"),
    ("dot-dot encoded", "..%2F..%2Fetc%2Fpasswd", "is not a UUID"),
    ("10,000 characters", "a" * 10_000, "…' is not a UUID"),
    ("NUL", "%00", "is not a UUID"),
    ("NUL inside a UUID", str(uuid.uuid4())[:-1] + "%00", "is not a UUID"),
    ("unicode", "%E2%98%83", "is not a UUID"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in PLAN_ID_CASES], ids=[c[0] for c in PLAN_ID_CASES]
)
def test_plan_id_that_is_not_a_uuid_is_400(
    api: Api, settings: Settings, raw: str, expected: str
) -> None:
    before = _total_executions(settings)
    answer = api.request("PATCH", f"/api/marketplace/analysis/{raw}", {"action": "approve"})
    message = answer.assert_error(400, "invalid_input")
    assert expected in message and len(message) < 200
    assert _total_executions(settings) == before


def _total_executions(settings: Settings) -> int:
    query = "SELECT count(*) FROM marketplace_job_executions"
    return int(scalar(settings.database_url or "", query))


def test_unknown_plan_is_404(api: Api, settings: Settings) -> None:
    before = _total_executions(settings)
    message = api.approve(uuid.uuid4()).assert_error(404, "not_found")
    assert "not found" in message
    assert _total_executions(settings) == before


def test_reject_then_approve_is_409(api: Api, ctx: Phase1, settings: Settings) -> None:
    plan_id = make_plan(ctx)
    rejected = api.reject(plan_id)
    assert rejected.status == 200
    assert rejected.json == {"planId": str(plan_id), "status": "rejected"}
    assert "rejected" in api.approve(plan_id).assert_error(409, "conflict")
    assert executions_of(settings.database_url or "", plan_id) == 0
    assert plan_status(settings.database_url or "", plan_id) == "rejected"
    approved = make_plan(ctx)
    assert api.approve(approved).status == 202
    assert "already approved" in api.reject(approved).assert_error(409, "conflict")


def test_unknown_route_and_wrong_method(api: Api) -> None:
    api.request("GET", "/nope").assert_error(404, "not_found")
    api.request("GET", "/api/marketplace/plans").assert_error(404, "not_found")
    wrong = api.request("GET", f"/api/marketplace/analysis/{uuid.uuid4()}")
    assert "GET" in wrong.assert_error(405, "method_not_allowed")
    assert wrong.header("allow") == "PATCH"
    deleted = api.request("DELETE", f"/api/marketplace/jobs/{uuid.uuid4()}")
    deleted.assert_error(405, "method_not_allowed")
    api.request("POST", "/healthz", b"{}").assert_error(405)


def test_operational_routes(api: Api, ctx: Phase1, settings: Settings) -> None:
    health = api.request("GET", "/healthz")
    assert health.status == 200 and health.json == {"status": "ok"}
    ready = api.request("GET", "/readyz")
    assert ready.status == 200
    assert ready.json == {
        "status": "ready",
        "checks": {"redis": "ok", "postgres": "ok"},
        "paused": [],
    }

    job_id = api.approve(make_plan(ctx)).json["jobId"]
    poll_until_final(api, job_id)
    metrics = api.request("GET", "/metrics")
    assert metrics.status == 200 and str(metrics.header("content-type")).startswith("text/plain")
    text = metrics.body.decode()
    queue = settings.queue
    for line in (
        f'phase1_queue_depth{{queue="{queue}"}}',
        f'phase1_dlq_size{{queue="{queue}"}} 0.0',
        f'phase1_jobs{{queue="{queue}",status="failed"}} 0.0',
        f'phase1_job_duration_seconds_bucket{{le="+Inf",queue="{queue}",status="completed"}}',
        'phase1_http_request_duration_seconds_count{method="PATCH",'
        'route="/api/marketplace/analysis/{planId}",status="202"}',
        'phase1_dependency_up{dependency="redis"} 1.0',
        'phase1_dependency_up{dependency="postgres"} 1.0',
    ):
        assert line in text, line
    prefix = f'phase1_jobs{{queue="{queue}",status="completed"}} '
    completed = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert float(completed[0].removeprefix(prefix)) >= 1

    document = api.request("GET", "/openapi.json").json
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/marketplace/analysis/{planId}",
        "/api/marketplace/jobs/{jobId}",
        "/api/marketplace/jobs/{jobId}/cancel",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    assert set(document["components"]["schemas"]["JobView"]["required"]) == JOB_FIELDS


def test_schemathesis_finds_no_server_error_or_schema_violation(
    api: Api, ctx: Phase1, tmp_path: Path
) -> None:
    """Property-based requests from the OpenAPI document, also with plan and job ids that
    exist, so approvals, rejections and conflicts are reached, not only 404s."""
    plan_ids = [str(make_plan(ctx)) for _ in range(4)]
    job_ids = [api.approve(p).json["jobId"] for p in plan_ids[:2]]
    quoted = ", ".join(f'"{p}"' for p in plan_ids)
    jobs_quoted = ", ".join(f'"{j}"' for j in job_ids)
    (tmp_path / "schemathesis.toml").write_text(
        f"[dictionaries.plans]\nvalues = [{quoted}]\n"
        f"[dictionaries.jobs]\nvalues = [{jobs_quoted}]\n"
        "[parameters]\n"
        '"path.planId" = { dictionary = "plans", probability = 0.5 }\n'
        '"path.jobId" = { dictionary = "jobs", probability = 0.5 }\n'
    )
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{api.base}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "10",
            "--workers",
            "2",
            "--seed",
            "4242",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Schemathesis's one heuristic warning for the cancel route (its random ids 404; the
    # dictionary's real ones are cancelled by then or not drawn) is no failure: that route's
    # answers are checked in tests/integration/test_operator_control.py and here against
    # the schema all the same.
    cancel_404s_only = (
        "1 warning" in result.stdout
        and "Missing test data" in result.stdout
        and "POST /api/marketplace/jobs/{jobId}/cancel" in result.stdout
    )
    assert "No issues found" in result.stdout or cancel_404s_only, result.stdout[-4000:]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_story_acceptance_test_in_javascript(api: Api, ctx: Phase1, settings: Settings) -> None:
    """The story's own `fetch` test, as written: it sends no Content-Type (fetch then says
    text/plain), gets 202, polls every 500 ms until completed."""
    plan_id = make_plan(ctx)
    env = {"BASE_URL": api.base, "PLAN_ID": str(plan_id), "PATH": "/usr/bin:/bin"}
    node = shutil.which("node") or "node"
    result = subprocess.run(
        [node, str(HERE / "acceptance.mjs")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"status":"completed"' in result.stdout and '"tasksCreated":5' in result.stdout
    assert task_count(settings.database_url or "", plan_id) == 5

    # With the story's sample id it stops at the first expectation: a 400 that says why.
    env["PLAN_ID"] = "test-plan-123"
    sample = subprocess.run(
        [node, str(HERE / "acceptance.mjs")], env=env, capture_output=True, text=True, timeout=60
    )
    assert sample.returncode == 1
    assert "expected 202, got 400" in sample.stdout and "is not a UUID" in sample.stdout


def test_server_logged_no_unexpected_error(api: Api, module_processes: Processes) -> None:
    """Run last in the module: nothing above made the server log a traceback."""
    log = module_processes.log(0)
    assert "Traceback" not in log, log[-3000:]
    assert "unexpected error" not in log
