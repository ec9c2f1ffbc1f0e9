"""Settings: the story's defaults, parsing, and one clear line for a bad value."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from phase1.cli import app
from phase1.errors import ConfigError
from phase1.settings import Settings, load_settings, redact_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PHASE1_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_defaults_are_exactly_the_storys() -> None:
    settings = load_settings()
    assert settings.queue == "phase1-tasks"
    assert settings.max_retries == 3
    assert settings.retry_intervals == [1, 5, 30]
    assert settings.retry_schedule() == [1, 5, 30]
    assert settings.max_attempts == 4
    assert settings.job_timeout == 10
    assert settings.shutdown_timeout == 30
    assert settings.approval_mode == "queue"
    assert settings.api_token is None
    assert settings.webhook_urls == []
    assert settings.redis_url is None and settings.database_url is None


def test_environment_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASE1_RETRY_INTERVALS", "2, 4,8")
    monkeypatch.setenv("PHASE1_MAX_RETRIES", "5")
    monkeypatch.setenv("PHASE1_WEBHOOK_URLS", "http://a.example/x,https://b.example/y")
    monkeypatch.setenv("PHASE1_WEBHOOK_SECRET", "s")  # webhooks are always signed
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/3")
    settings = load_settings()
    assert settings.retry_intervals == [2, 4, 8]
    assert settings.webhook_urls == ["http://a.example/x", "https://b.example/y"]
    assert settings.redis_url == "redis://r:6379/3"
    # More retries than intervals: the *last* interval repeats (RQ would repeat the first).
    assert settings.retry_schedule() == [2, 4, 8, 8, 8]


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    Path(str(tmp_path), ".env").write_text("PHASE1_JOB_TIMEOUT=7\n")
    assert load_settings().job_timeout == 7


def test_fewer_retries_than_intervals_uses_the_first_ones() -> None:
    assert Settings(max_retries=2).retry_schedule() == [1, 5]
    assert Settings(max_retries=0).retry_schedule() == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PHASE1_MAX_RETRIES", "-1", "PHASE1_MAX_RETRIES"),
        ("PHASE1_MAX_RETRIES", "three", "PHASE1_MAX_RETRIES"),
        ("PHASE1_RETRY_INTERVALS", "a,b", "PHASE1_RETRY_INTERVALS: 'a' is not a number"),
        ("PHASE1_RETRY_INTERVALS", "1,-5", "PHASE1_RETRY_INTERVALS: '-5' is negative"),
        ("PHASE1_JOB_TIMEOUT", "0", "PHASE1_JOB_TIMEOUT"),
        ("PHASE1_APPROVAL_MODE", "later", "PHASE1_APPROVAL_MODE"),
        ("REDIS_URL", "http://nope", "REDIS_URL: must start with redis://"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL: must start with postgresql://"),
        ("DATABASE_URL", "not a dsn", "DATABASE_URL: is neither"),
        ("PHASE1_WEBHOOK_URLS", "ftp://x", "PHASE1_WEBHOOK_URLS"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_cli_stops_on_a_bad_setting_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASE1_MAX_RETRIES", "-1")
    result = CliRunner().invoke(app, ["status", "00000000-0000-4000-8000-000000000000"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "PHASE1_MAX_RETRIES" in lines[0]
    assert "Traceback" not in result.output


def test_redact_url_hides_the_password() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
