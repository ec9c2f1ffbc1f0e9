"""No secret reaches a client, a log line or a CLI message, whatever form the setting takes.

Each form in which psycopg or redis-py accept a password (tests/secret_forms.py) goes through
every place that prints a connection setting: the real `phase1 serve` (its banner, its log,
its 503 bodies, /readyz, /metrics), `phase1 info` and `phase1 status`, and the one-line error
of a setting that failed validation.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from http_support import Api, free_port, make_plan, start_server
from secret_forms import SECRET, SENTINEL_FORM, postgres_forms, redis_forms
from support import PHASE1, Processes, settings_env

from phase1.context import Phase1
from phase1.redact import redact_url
from phase1.settings import Settings

CLOSED = free_port()  # nothing listens there (a fresh free port, not bound again)


def test_every_form_is_redacted_structurally(database_url: str) -> None:
    forms = [
        *redis_forms("127.0.0.1", 6379).values(),
        SENTINEL_FORM,
        *postgres_forms(database_url).values(),
    ]
    for url in forms:
        shown = redact_url(url)
        assert SECRET not in shown, (url, shown)
        assert "***" in shown, (url, shown)
    # What is not secret stays readable.
    assert redact_url(SENTINEL_FORM) == (
        "redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/mymaster/0"
    )
    assert redact_url(f"host=h port=1 password='{SECRET} x' dbname=d") == (
        "host=h port=1 password=*** dbname=d"
    )


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        shown = text.decode(errors="replace") if isinstance(text, bytes) else text
        assert SECRET not in shown, shown[-2000:]
        assert "Traceback" not in shown, shown[-2000:]


def assert_unavailable_body(api: Api, answer_of: Callable[[], object], service: str) -> None:
    answer = answer_of()
    message = answer.assert_error(503, "unavailable")  # type: ignore[attr-defined]
    assert message.startswith(f"{service} is unavailable"), message
    # The service's address, user and database are for the server's log, not for clients.
    for detail in ("127.0.0.1", str(CLOSED), "nonexistent", "someone", "postgresql:", "redis:"):
        assert detail not in message, message
    assert_no_secret(answer.body)  # type: ignore[attr-defined]


@pytest.mark.parametrize("form", list(redis_forms("127.0.0.1", CLOSED)))
def test_redis_password_forms_never_shown(
    processes: Processes, ctx: Phase1, make_settings: Callable[..., Settings], form: str
) -> None:
    url = redis_forms("127.0.0.1", CLOSED)[form]
    settings = make_settings(redis_url=url)
    api = start_server(processes, settings)
    plan_id = make_plan(ctx)
    assert_unavailable_body(api, lambda: api.approve(plan_id, timeout=15), "Redis")
    bodies = [api.request("GET", path, timeout=15).body for path in ("/readyz", "/metrics")]
    cli = [
        run_cli(settings, command)
        for command in (["info"], ["status", "00000000-0000-4000-8000-000000000000"])
    ]
    processes.stop_all()
    log = processes.log(0)
    assert "phase1: serving" in log and "answering 503" in log  # the places were reached
    assert_no_secret(log, *bodies, *cli)


@pytest.mark.parametrize("form", list(postgres_forms("postgresql://127.0.0.1/x")))
def test_postgres_password_forms_never_shown(
    processes: Processes, make_settings: Callable[..., Settings], database_url: str, form: str
) -> None:
    url = postgres_forms(database_url, port=CLOSED)[form]
    settings = make_settings(database_url=url)
    api = start_server(processes, settings)
    assert_unavailable_body(
        api, lambda: api.job("00000000-0000-4000-8000-000000000000", timeout=15), "PostgreSQL"
    )
    bodies = [api.request("GET", path, timeout=15).body for path in ("/readyz", "/metrics")]
    cli = [
        run_cli(settings, command)
        for command in (["info"], ["status", "00000000-0000-4000-8000-000000000000"])
    ]
    processes.stop_all()
    log = processes.log(0)
    assert "phase1: serving" in log and "answering 503" in log
    assert_no_secret(log, *bodies, *cli)


@pytest.mark.parametrize("form", list(postgres_forms("postgresql://127.0.0.1/x")))
def test_a_working_postgres_form_is_not_shown_either(
    processes: Processes, make_settings: Callable[..., Settings], database_url: str, form: str
) -> None:
    settings = make_settings(database_url=postgres_forms(database_url)[form])
    api = start_server(processes, settings)
    api.job("00000000-0000-4000-8000-000000000000").assert_error(404)
    ready = api.request("GET", "/readyz")
    assert ready.status == 200, ready.body
    cli = run_cli(settings, ["info"])
    processes.stop_all()
    assert_no_secret(processes.log(0), ready.body, cli)


BAD_VALUES = [
    ("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:port/0"),
    ("REDIS_URL", f"redis://127.0.0.1:port/0?password={SECRET}"),
    ("REDIS_URL", f"redis://127.0.0.1/0?password={SECRET}&bogus=1"),
    ("REDIS_URL", f"http://:{SECRET}@127.0.0.1/0"),
    ("REDIS_URL", f"redis+sentinel://:{SECRET}@127.0.0.1/mymaster"),
    ("DATABASE_URL", f"postgresql://u:{SECRET}@127.0.0.1:port/db"),
    ("DATABASE_URL", f"mysql://u:{SECRET}@127.0.0.1/db"),
    ("DATABASE_URL", f"host=127.0.0.1 password={SECRET} broken"),
    ("DATABASE_URL", f"host=127.0.0.1 password='{SECRET}"),
    ("PHASE1_WEBHOOK_URLS", f"ftp://u:{SECRET}@hooks.example/x"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_refused_setting_is_one_line_without_its_secret(
    settings: Settings, name: str, value: str
) -> None:
    env = {**settings_env(settings), name: value, "PHASE1_WEBHOOK_SECRET": "w"}
    for command in (["info"], ["serve", "--port", "0"]):
        done = subprocess.run(
            [PHASE1, *command], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and name in lines[0], done.stderr
        assert_no_secret(done.stdout, done.stderr)


def run_cli(settings: Settings, command: list[str]) -> str:
    """A CLI command's whole output (stdout and stderr) with these settings."""
    done = subprocess.run(
        [PHASE1, *command],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert output.strip(), command  # it printed something: the place was reached
    return output
