"""The README runs as written: its "Using it" block, pasted into one terminal, against the
installed `phase1` (the test's own Redis and PostgreSQL through REDIS_URL / DATABASE_URL, as
the block must not name them); and the demo ends by saying what it leaves running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from support import PHASE1, settings_env

from phase1.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def using_it_block() -> str:
    section = README.read_text().split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README: the Using it section has a sh block"
    return match.group(1)


def test_the_readme_using_it_block_runs_as_written(settings: Settings, tmp_path: Path) -> None:
    block = using_it_block()
    assert "REDIS_URL" not in block and "DATABASE_URL" not in block
    assert "--burst" in block, "one terminal: the worker must exit by itself"
    # The folder of the README's first command: its .venv, this test's installation.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {k: v for k, v in settings_env(settings).items() if k != "VIRTUAL_ENV"}
    env["PHASE1_HOME"] = str(tmp_path / ".phase1")
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no phase1 on it until the block activates
    env["NO_COLOR"] = "1"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block + '\necho "plan=$plan job=$job"\n'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    ids = dict(part.split("=", 1) for part in done.stdout.strip().splitlines()[-1].split())
    # `phase1 status --json` is the first document on stdout (the rest is tables).
    status, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{") :])
    assert status["jobId"] == ids["job"] and status["planId"] == ids["plan"]
    assert status["status"] == "completed" and status["result"]["tasksCreated"] == 5
    assert "Traceback" not in done.stderr


def test_the_demo_ends_saying_what_is_left_running(settings: Settings, tmp_path: Path) -> None:
    env = {**settings_env(settings), "PHASE1_HOME": str(tmp_path / ".phase1"), "NO_COLOR": "1"}
    done = subprocess.run(
        [PHASE1, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    # Servers of its own were named: nothing embedded runs, and it says so.
    assert last.startswith("nothing is left running"), done.stderr
    assert not (tmp_path / ".phase1" / "redis").exists()
    assert os.path.isdir(tmp_path / ".phase1")  # the worker's log
