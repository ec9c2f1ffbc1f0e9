"""A quick start: `import phase1` is lazy and `phase1 worker` skips the Typer app. Checked by the
modules a fresh interpreter has loaded, not by timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import phase1
from phase1.cli.workerstart import WorkerArgs, parse

# What a worker never needs: the CLI's libraries and the HTTP server's.
CLI_AND_HTTP = {"typer", "rich", "click", "bottle", "waitress", "prometheus_client", "yoyo"}


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_phase1_loads_none_of_its_modules_or_dependencies() -> None:
    loaded = loaded_after("import phase1")
    assert not {m for m in loaded if m.startswith("phase1.")}
    assert not {m.split(".")[0] for m in loaded} & {"redis", "rq", "psycopg", "pydantic"}


def test_every_public_name_still_imports_from_phase1() -> None:
    for name in phase1.__all__:
        assert getattr(phase1, name) is not None
    from phase1 import Settings, approve, verify_signature

    assert Settings.__module__ == "phase1.settings"
    assert approve.__module__ == "phase1.jobs.approval"
    assert verify_signature.__module__ == "phase1.jobs.webhooks"
    assert set(phase1.__all__) <= set(dir(phase1))
    with pytest.raises(AttributeError):
        _ = phase1.no_such_name  # type: ignore[attr-defined]


def test_phase1_worker_runs_without_the_cli_libraries() -> None:
    # The console script's own dispatch, with the worker's whole import graph loaded but no
    # worker run (that would need Redis).
    loaded = loaded_after(
        """
        import sys
        from phase1.cli import workerstart

        def fake_run(args):
            import phase1.jobs.phase1_job, phase1.runtime.process  # a worker's imports
            return 0

        workerstart.run_command = fake_run
        sys.argv = ["phase1", "worker", "--burst"]
        from phase1.cli import main
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        """
    )
    assert "phase1.runtime.worker" in loaded
    assert {m.split(".")[0] for m in loaded} & CLI_AND_HTTP == set()
    assert "phase1.cli.root" not in loaded and "phase1.cli.common" not in loaded


def test_a_worker_loads_psycopg_only_when_postgresql_is_first_used() -> None:
    # Everything a worker imports and builds before its first job, then the first use of
    # PostgreSQL (the pool's attribute); nothing is sent, so no server is needed.
    loaded = loaded_after(
        """
        import sys
        import phase1.jobs.phase1_job, phase1.runtime.process
        from phase1.context import build
        from phase1.settings import load_settings

        ctx = build(load_settings(redis_url="redis://127.0.0.1:1/0",
                                  database_url="postgresql://127.0.0.1:1/none"))
        before = sorted(m for m in sys.modules if m.split(".")[0].startswith("psycopg"))
        assert not before, before
        assert not ctx.pool.opened
        ctx.pool.max_size  # any attribute opens the pool (its connection attempts fail quietly)
        assert ctx.pool.opened
        ctx.close()
        """
    )
    assert {"psycopg", "psycopg_pool", "phase1.db"} <= loaded


def test_reading_the_settings_loads_neither_psycopg_nor_the_event_modules() -> None:
    loaded = loaded_after(
        """
        from phase1.settings import load_settings
        load_settings(webhook_events="job:completed")
        """
    )
    assert "psycopg" not in loaded
    assert not {"phase1.jobs.events", "phase1.jobs.webhooks", "phase1.schemas"} & loaded


def test_a_worker_start_compiles_no_tokenizer() -> None:
    # pydantic reads a builtin default_factory's signature through tokenize, whose regexes
    # take ~10 ms to compile; a worker's start needs none of it.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import phase1.runtime.worker, tokenize\n"
            "from phase1.settings import load_settings\n"
            "load_settings()\n"
            "print(tokenize._compile.cache_info().misses)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip().splitlines()[-1] == "0"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], WorkerArgs()),
        (["--burst", "--fork"], WorkerArgs(burst=True, fork=True)),
        (["--processes", "4", "--burst"], WorkerArgs(burst=True, processes=4)),
        (["-p", "2", "--skip-checks"], WorkerArgs(processes=2, skip_checks=True)),
        (["-p3"], WorkerArgs(processes=3)),
        (["--processes=64", "--name=w1"], WorkerArgs(processes=64, name="w1")),
        (["--name", "w1", "-p", "1"], WorkerArgs(name="w1")),
    ],
)
def test_plain_worker_options_take_the_lean_path(argv: list[str], expected: WorkerArgs) -> None:
    assert parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--burst", "--help"],
        ["--processes", "0"],
        ["--processes", "65"],
        ["--processes", "x"],
        ["--processes=+2"],
        ["-p=2"],
        ["--processes"],
        ["--name"],
        ["--name", "--burst"],
        ["--name="],
        ["--no-such-option"],
        ["extra"],
        ["--"],
    ],
)
def test_anything_else_goes_to_the_typer_app(argv: list[str]) -> None:
    """Help, usage errors and odd spellings are Typer's, so they read as they always have."""
    assert parse(argv) is None
