"""The CLI's conventions without a network: help texts, exit codes, one-line errors, output."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from phase1 import __version__
from phase1.cli import app
from phase1.cli import info as info_cli
from phase1.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Phase1Group,
    duration,
    exit_code_for,
    fancy,
    one_line,
    plain_columns,
    print_table,
    progress,
)
from phase1.errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Phase1Error,
    UnavailableError,
)
from phase1.runtime import monitor

runner = CliRunner()


def leaf_commands() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def walk(path: str, command: Any) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(f"{path} {name}", sub)
        else:
            found.append((path, command))

    walk("phase1", get_command(app))
    return found


@pytest.mark.parametrize("path, command", leaf_commands(), ids=lambda v: str(v))
def test_every_command_has_a_summary_and_an_example(path: str, command: Any) -> None:
    text = (command.help or "").strip()
    summary = text.splitlines()[0] if text else ""
    assert summary and len(summary) <= 100, f"{path}: one-line summary"
    assert "\nExample: phase1 " in text or "\nExample: " in text, f"{path}: an Example: line"
    # The first paragraph is what `phase1 --help` lists: one line, or the list shows the
    # docstring's own line breaks in the middle of the table.
    first_paragraph = text.split("\n\n")[0]
    assert "\n" not in first_paragraph, f"{path}: the summary paragraph is one line"
    # An Example: line has a blank line before it, or it runs into the paragraph above.
    assert "\n\nExample: " in text, f"{path}: a blank line before Example:"


def test_the_commands_operators_need_are_there() -> None:
    paths = {path for path, _ in leaf_commands()}
    assert {
        "phase1 info",
        "phase1 status",
        "phase1 migrate",
        "phase1 embedded status",
        "phase1 embedded stop",
    } <= paths


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"phase1 {__version__}\n"


def test_json_is_documented_in_help() -> None:
    result = runner.invoke(app, ["info", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--json" in result.stdout and '"workers"' in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["status"], "Missing argument"),
        (["status", "a", "b"], "unexpected extra argument"),
        (["worker", "--processes", "0"], "--processes"),
        (["info", "--interval", "x"], "--interval"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_are_one_short_line_with_exit_2(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "40"})
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "usage: phase1" in lines[0]
    assert "╭" not in result.stderr and "Traceback" not in result.stderr


def test_a_bad_setting_is_one_line_naming_it_with_exit_2() -> None:
    result = runner.invoke(app, ["info"], env={"PHASE1_MAX_RETRIES": "many"})
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.count("\n") == 1
    assert "PHASE1_MAX_RETRIES" in result.stderr and "'many'" in result.stderr


def test_exit_codes_come_from_one_table() -> None:
    class Gone(NotFoundError):
        pass

    assert exit_code_for(NotFoundError("x")) == EXIT_FAILURE
    assert exit_code_for(Gone("x")) == EXIT_FAILURE
    assert exit_code_for(ConflictError("x")) == EXIT_FAILURE
    assert exit_code_for(UnavailableError("x")) == EXIT_FAILURE
    assert exit_code_for(Phase1Error("x")) == EXIT_FAILURE
    assert exit_code_for(InvalidInputError("x")) == EXIT_USAGE
    assert exit_code_for(ConfigError("x")) == EXIT_USAGE


def small_app(error: BaseException) -> typer.Typer:
    sub = typer.Typer(cls=Phase1Group)

    @sub.command()
    def boom() -> None:
        """Fail."""
        raise error

    @sub.command()
    def fine() -> None:
        """Succeed."""

    return sub


def test_a_raw_redis_connection_error_becomes_one_line_naming_redis_url() -> None:
    result = runner.invoke(small_app(RedisConnectionError("Connection refused")), ["boom"])
    assert result.exit_code == EXIT_FAILURE
    assert result.stderr.count("\n") == 1
    assert "Redis" in result.stderr and "Connection refused" in result.stderr
    assert "(set REDIS_URL)" in result.stderr


def test_phase1_errors_become_one_line_with_their_exit_code() -> None:
    result = runner.invoke(small_app(InvalidInputError("plan id 'x' is not a UUID")), ["boom"])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == "error: plan id 'x' is not a UUID\n"


def test_plain_columns_are_aligned_without_trailing_blanks() -> None:
    text = plain_columns([("a", 1, None), ("long value", 22, "x")], ("NAME", "N", "NOTE"))
    assert text.splitlines() == [
        "NAME        N   NOTE",
        "a           1   -",
        "long value  22  x",
    ]


def test_tables_are_rich_on_a_terminal_and_plain_when_piped() -> None:
    piped = io.StringIO()
    print_table(("job", "state"), [("j1", "active")], title="Jobs", console=Console(file=piped))
    assert piped.getvalue() == "Jobs\nJOB  STATE\nj1   active\n"
    tty = io.StringIO()
    print_table(
        ("job", "state"),
        [("j1", "active")],
        title="Jobs",
        console=Console(file=tty, force_terminal=True, width=60),
    )
    assert "┃" in tty.getvalue() and "\x1b[" in tty.getvalue()


def test_no_color_turns_fancy_output_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert fancy(Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not fancy(Console(file=io.StringIO(), force_terminal=True))


def test_progress_draws_nothing_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(3, "requeueing") as steps:
        for _ in range(3):
            steps.advance()
        steps.update(total=4, description="more")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("total", [None, 3])
def test_progress_draws_a_bar_on_stderr_of_a_terminal(
    total: int | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    with progress(total, "requeueing") as steps:
        steps.advance()
        steps.update(total=3)
        steps.advance(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "requeueing" in captured.err and "3/3" in captured.err


def test_durations_and_one_line() -> None:
    assert [duration(s) for s in (None, 0.4, 59, 125, 3 * 3600 + 720, 2 * 86400 + 4 * 3600)] == [
        "-",
        "0s",
        "59s",
        "2m05s",
        "3h12m",
        "2d04h",
    ]
    assert one_line("boom\nCONTEXT: at line 3") == "boom"
    assert one_line("x" * 300, 10) == "x" * 9 + "…"
    assert one_line(None) == ""


def sample_snapshot(**changes: Any) -> monitor.Snapshot:
    at = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    snap = monitor.Snapshot(
        queue="phase1-tasks",
        redis="redis://:***@redis:6379/0",
        at=at,
        queued=3,
        scheduled=monitor.Scheduled(count=1, nextAt=at + timedelta(seconds=4)),
        active=[
            monitor.ActiveJob(
                jobId="job-1",
                planId="plan-1",
                attempt=2,
                maxAttempts=4,
                progress=0,
                worker="w1",
                startedAt=at - timedelta(seconds=7),
                ageSeconds=7.0,
            )
        ],
        dlq=monitor.Dlq(
            size=2,
            oldest=monitor.DlqOldest(
                jobId="job-0",
                planId="plan-0",
                reason="exception",
                failedAt=at - timedelta(hours=3),
                error="RuntimeError: boom",
            ),
        ),
        workers=[
            monitor.WorkerInfo(
                name="w1",
                hostname="host-a",
                pid=42,
                state="busy",
                queues=["phase1-tasks"],
                jobId="job-1",
                birth=at - timedelta(hours=1),
                lastHeartbeat=at - timedelta(seconds=2),
                successfulJobs=10,
                failedJobs=1,
            )
        ],
        scheduler=monitor.SchedulerInfo(running=True, name="s1", hostname="host-a", pid=43),
        lastHour=monitor.LastHour(completed=10, failed=1, failedAttempts=3),
        webhooksQueued=0,
        redisSettings=monitor.RedisSettings(maxmemoryPolicy="noeviction", appendonly=True),
        warnings=[],
    )
    snap = snap.model_copy(update=changes)
    return snap.model_copy(update={"warnings": monitor.warnings(snap)})


def test_info_plain_text_reads_like_the_terminal_view() -> None:
    text = info_cli.plain(sample_snapshot())
    assert "\x1b" not in text
    assert "scheduled retries:  1  (next in 4s)" in text
    assert "dead-letter queue:  2  (oldest job-0, 3h00m ago, exception: RuntimeError: boom)" in text
    assert "scheduler:          running (host-a pid 43)" in text
    assert "last hour:          10 completed, 1 failed, 3 failed attempts" in text
    assert "w1      host-a  42   busy   job-1  2s ago" in text
    assert "job-1  plan-1  2/4      0%        w1      7s" in text
    assert "redis:              maxmemory-policy noeviction, AOF on" in text
    assert "warning: 2 job(s) in the dead-letter queue" in text


def test_info_on_a_terminal_has_tables() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=140, record=True)
    console.print(info_cli.render(sample_snapshot()))
    screen = console.export_text()
    assert "Workers" in screen and "Active jobs" in screen and "┃ worker" in screen


def test_warnings_say_what_needs_an_operator() -> None:
    idle = sample_snapshot(workers=[], active=[])
    assert any("no worker is listening" in w for w in idle.warnings)
    stuck = sample_snapshot(
        scheduler=monitor.SchedulerInfo(running=False, name=None, hostname=None, pid=None)
    )
    assert any("no scheduler runs" in w for w in stuck.warnings)
    calm = sample_snapshot(
        queued=0,
        scheduled=monitor.Scheduled(count=0, nextAt=None),
        active=[],
        workers=[],
        dlq=monitor.Dlq(size=0, oldest=None),
    )
    assert calm.warnings == []


def test_an_evicting_redis_is_a_warning() -> None:
    evicting = monitor.RedisSettings(maxmemoryPolicy="allkeys-lru", appendonly=False)
    snap = sample_snapshot(redisSettings=evicting)
    assert any("maxmemory-policy is allkeys-lru" in w for w in snap.warnings)
    unknown = monitor.RedisSettings(maxmemoryPolicy=None, appendonly=None)
    assert not any("maxmemory" in w for w in sample_snapshot(redisSettings=unknown).warnings)
