"""`phase1 worker` without Typer and rich: a worker should start in a fraction of a second, and
importing the whole CLI (Typer, click, rich and every command's modules) would cost as much
as everything the worker itself needs.

`phase1.cli.main` sends `phase1 worker ...` here when its options are plain ones this module
reads exactly as click would; anything else (`--help`, a value click would reject or convert,
an unknown option, shell completion) goes to the Typer app, which then prints the same help
and the same errors as ever. Errors raised while the worker starts are printed by the same
function the Typer app uses (phase1.cli.common, imported only then).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from phase1.cli.state import TRACEBACKS, State, setup_logging
from phase1.errors import Phase1Error
from phase1.telemetry import tracing

MAX_PROCESSES = 64
_FLAGS = {"--burst": "burst", "--fork": "fork", "--skip-checks": "skip_checks"}
_VALUED = {"--processes": "processes", "-p": "processes", "--name": "name"}


@dataclass
class WorkerArgs:
    """`phase1 worker`'s options (see phase1.cli.jobs.worker for their help)."""

    burst: bool = False
    processes: int = 1
    fork: bool = False
    name: str | None = None
    skip_checks: bool = False


def parse(argv: list[str]) -> WorkerArgs | None:
    """The options after `worker`, or None when the Typer app should read them instead."""
    if any(key.endswith("_COMPLETE") and key.startswith("_PHASE1") for key in os.environ):
        return None  # shell completion is Typer's
    args, rest = WorkerArgs(), list(argv)
    while rest:
        token = rest.pop(0)
        if token in _FLAGS:
            setattr(args, _FLAGS[token], True)
            continue
        if token.startswith("--") and "=" in token:
            option, value = token.split("=", 1)  # --processes=4
        elif token.startswith("-p") and not token.startswith("--") and len(token) > 2:
            option, value = "-p", token[2:]  # -p4
        elif token in _VALUED and rest:
            option, value = token, rest.pop(0)
        else:
            return None
        if option not in _VALUED or not value or value.startswith("-"):
            return None
        if _VALUED[option] == "name":
            args.name = value
        elif value.isdigit() and value.isascii() and 1 <= int(value) <= MAX_PROCESSES:
            args.processes = int(value)
        else:
            return None  # click's own error message, or its reading of "+2", " 2", "2_0"
    return args


def start_worker(st: State, args: WorkerArgs, *, supervised: bool = False) -> int:
    """Run `phase1 worker` (one worker here, or a supervisor of several); its exit code.

    A worker started on its own imports psycopg when a job first needs PostgreSQL; a
    supervisor imports it before it forks its workers, which open their pools at once."""
    if args.processes > 1:
        import phase1.db  # noqa: F401 -- every worker forked from here has psycopg loaded
        from phase1.runtime.startup_checks import run_startup_checks
        from phase1.runtime.supervisor import supervise

        # Resolves the embedded default once, before the children start; checks run once.
        run_startup_checks(st.connect(), expect_scheduler=False)
        st.close()  # each child opens its own connections: none may cross a fork
        argv = ["--processes", "1", "--skip-checks"]
        argv += (["--burst"] if args.burst else []) + (["--fork"] if args.fork else [])
        return supervise(
            argv,
            args.processes,
            burst=args.burst,
            shutdown_timeout=st.settings.shutdown_timeout,
            run_child=run_supervised,
        )
    from phase1.runtime.process import run

    if not args.fork:
        tracing.batch_across_jobs()  # issue 24: jobs run in this process; export in batches
    ctx = st.connect(pool_size=4)
    if supervised:
        ctx.open_pool()  # psycopg came with the fork: connect in the background now
    run(
        ctx,
        burst=args.burst,
        fork=args.fork,
        name=args.name,
        checks=not args.skip_checks,
    )
    return 0


def run_supervised(argv: list[str]) -> int:
    """A supervised worker, forked from its supervisor with all it needs imported already;
    options this module does not read go to the Typer app in a fresh interpreter."""
    args = parse(argv)
    if args is None:
        os.execv(sys.executable, [sys.executable, "-m", "phase1", "worker", *argv])
    return run_command(args, supervised=True)


def run_command(args: WorkerArgs, *, supervised: bool = False) -> int:
    """What the Typer app does around the worker command, without it: logging set up, settings
    read and checked, errors as one stderr line with their exit code, connections closed."""
    setup_logging(False, "worker")
    st = State()
    try:
        _ = st.settings  # a bad setting stops the command with one line
        return start_worker(st, args, supervised=supervised)
    except (RedisConnectionError, RedisTimeoutError, Phase1Error) as exc:
        from phase1.cli.common import error_exit

        return error_exit(exc, st.redis_url_for_errors()).exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)  # click's newline before its Abort (exit 1)
        return 1
    except Exception as exc:
        _as_typer_would_show(exc)
        raise
    finally:
        st.close()


def _as_typer_would_show(exc: Exception) -> None:
    """Mark an unexpected error the way Typer does, so its traceback looks the same either way
    (a plain one if Typer's internals ever change)."""
    try:
        from typer import main as typer_main
        from typer.models import DeveloperExceptionConfig

        config = DeveloperExceptionConfig(**TRACEBACKS)
        setattr(exc, typer_main._typer_developer_exception_attr_name, config)
        sys.excepthook = typer_main.except_hook
    except (ImportError, AttributeError):  # pragma: no cover - another Typer
        pass
