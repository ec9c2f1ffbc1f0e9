"""The installed `phase1` command as an operator sees it: on a terminal, and piped."""

from __future__ import annotations

import re
import subprocess

from support import PHASE1, Processes, inject_fault, run_in_terminal, settings_env

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

ESCAPE = b"\x1b"


def piped(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {**settings_env(settings), **env}
    environment.pop("FORCE_COLOR", None)
    return subprocess.run(
        [PHASE1, *args], env=environment, capture_output=True, timeout=60, check=False
    )


def tty_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The settings' environment for a terminal, whatever NO_COLOR the test run has."""
    env = settings_env(settings)
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    return {**env, **extra}


def test_status_watch_on_a_terminal_shows_the_bar_and_the_final_state(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Watched plan", SAMPLE_ANALYSIS)
    inject_fault(settings.database_url or "", plan.id, fail_times=1, sleep_s=0.5)
    job_id = approval.approve(ctx, plan.id).job_id
    processes.worker(settings)
    code, screen, raw = run_in_terminal(
        [PHASE1, "status", job_id, "--watch", "--interval", "0.1"],
        tty_env(settings),
        columns=120,
        lines=40,
        timeout=60,
    )
    print(screen)  # shown by pytest when the test fails
    assert code == 0
    assert re.search(r"retrying +attempt 1/4 failed: .*injected fault", screen)
    assert re.search(r"completed attempt 2/4: 5 task\(s\) created", screen)
    bar = next(line for line in screen.splitlines() if line.startswith(job_id[:8]))
    assert "━" in bar and "100%" in bar and "completed · attempt 2/4" in bar
    assert re.search(r"^status +completed$", screen, re.MULTILINE)
    assert ESCAPE + b"[" in raw  # colours and cursor movement: a live display


def test_info_on_a_terminal_draws_tables(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    processes.worker(settings)
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Queued plan", SAMPLE_ANALYSIS)
    inject_fault(settings.database_url or "", plan.id, fail_times=0, sleep_s=2)
    approval.approve(ctx, plan.id)
    _, screen, _ = run_in_terminal(
        [PHASE1, "info", "--watch", "--interval", "0.2"],
        tty_env(settings),
        columns=140,
        until=lambda text: "Active jobs" in text,
        timeout=40,
    )
    print(screen)
    assert "Active jobs" in screen and "┃ worker" in screen
    assert re.search(r"scheduler +running", screen)


def test_piped_output_has_no_escape_codes(
    settings: Settings, ctx: Phase1, processes: Processes
) -> None:
    with ctx.transaction() as conn:
        plan = plans.create_plan(conn, "Piped plan", SAMPLE_ANALYSIS)
    job_id = approval.approve(ctx, plan.id).job_id
    processes.worker(settings)
    watched = piped(settings, "status", job_id, "--watch")  # waits for the job
    assert watched.returncode == 0
    assert ESCAPE not in watched.stdout + watched.stderr
    for args in (["info"], ["plans", "show", str(plan.id)], ["enqueue", "not-a-uuid"]):
        result = piped(settings, *args)
        assert ESCAPE not in result.stdout + result.stderr, args
    shown = piped(settings, "plans", "show", str(plan.id)).stdout.decode()
    assert re.search(r"^KEY +TITLE +STATUS +ID$", shown, re.MULTILINE), shown
    assert "│" not in shown and "━" not in shown


def test_no_color_on_a_terminal_means_plain_output(settings: Settings, ctx: Phase1) -> None:
    code, screen, raw = run_in_terminal(
        [PHASE1, "info"], tty_env(settings, NO_COLOR="1"), columns=100
    )
    assert code == 0 and "queued:" in screen
    assert ESCAPE not in raw


def test_unreachable_redis_is_one_line_naming_url_and_setting(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://:hunter2@127.0.0.1:1/0"})
    result = piped(broken, "info")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "Redis at redis://:***@127.0.0.1:1/0 is unavailable" in err
    assert "(set REDIS_URL)" in err and "hunter2" not in err


def test_usage_errors_stay_short_on_a_narrow_terminal(settings: Settings) -> None:
    code, screen, _ = run_in_terminal([PHASE1, "status"], tty_env(settings), columns=40)
    assert code == 2
    assert "╭" not in screen
    assert screen.startswith("error: Missing argument")
