"""The `phase1` Typer app: one sub-app per file, joined here (`phase1.cli.main` runs it)."""

from __future__ import annotations

import typer

from phase1 import __version__, appname
from phase1.cli import audit, control, demo, dlq, embedded, info, jobs, ops, plans
from phase1.cli import serve as serving
from phase1.cli.common import Phase1Group
from phase1.cli.events import events_command
from phase1.cli.state import TRACEBACKS, State, setup_logging

app = typer.Typer(
    cls=Phase1Group,
    name="phase1",
    help="Asynchronous, reliable Phase 1 task creation for plan approvals, on RQ.\n\n"
    "Reads REDIS_URL, DATABASE_URL and PHASE1_* from the environment and .env; with neither "
    "URL set and nothing on the default addresses, runs embedded Redis and PostgreSQL "
    "(data in PHASE1_HOME, default ./.phase1).",
    no_args_is_help=True,
    add_completion=True,
    **TRACEBACKS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"phase1 {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Log verbosely and show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Settings are read and validated here, once, before any command runs."""
    setup_logging(debug, ctx.invoked_subcommand)
    sub = ctx.invoked_subcommand or ""
    appname.set_role({"worker": "worker", "serve": "http", "up": "up"}.get(sub, f"cli {sub}"))
    st = State(debug=debug)
    ctx.obj = st
    _ = st.settings  # a bad setting stops every command with one line


app.command("migrate")(jobs.migrate)
app.command("enqueue")(jobs.enqueue)
app.command("status")(jobs.status)
app.command("worker")(jobs.worker)
app.command("demo")(demo.demo)
app.command("events")(events_command)
app.command("reconcile")(ops.reconcile)
app.command("cancel")(control.cancel)
app.command("pause")(control.pause)
app.command("resume")(control.resume)
app.command("audit")(audit.audit)
app.add_typer(plans.app, name="plans")
app.command("info")(info.info)
app.add_typer(embedded.app, name="embedded")
app.add_typer(dlq.app, name="dlq")
app.command("serve")(serving.serve)
app.command("up")(serving.up)
