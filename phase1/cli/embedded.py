"""`phase1 embedded`: the Redis and PostgreSQL phase1 starts when none is configured."""

from __future__ import annotations

import typer

from phase1 import embedded
from phase1.cli.common import Phase1Group, json_option, note, print_json, print_table, state
from phase1.settings import redact_url

app = typer.Typer(
    cls=Phase1Group,
    help="Show or stop the embedded Redis and PostgreSQL (used when REDIS_URL / DATABASE_URL "
    "are unset and nothing answers on the default addresses).",
    no_args_is_help=True,
)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: bool = json_option('{"home", "redis": URL|null, "postgres": URL|null}.'),
) -> None:
    """Show whether the embedded servers under PHASE1_HOME run, and their URLs.

    Never starts them.

    Example: phase1 embedded status
    """
    home = state(ctx).settings.home.expanduser().resolve()
    running = {
        name: redact_url(url) if url else None for name, url in embedded.status(home).items()
    }
    if as_json:
        print_json({"home": str(home), **running})
        return
    print_table(
        ("server", "state", "url"),
        [(name, "running" if url else "stopped", url) for name, url in running.items()],
        title=f"Embedded servers under {home}",
    )


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the embedded Redis and PostgreSQL under PHASE1_HOME; their data stays on disk.

    The next command that needs them starts them again.

    Example: phase1 embedded stop
    """
    home = state(ctx).settings.home.expanduser().resolve()
    stopped = embedded.stop(home)
    if stopped:
        note(f"stopped embedded {' and '.join(stopped)} under {home}")
    else:
        note(f"no embedded server was running under {home}")
