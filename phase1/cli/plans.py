"""`phase1 plans`: make a plan to approve, and look at one."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from phase1.cli.common import (
    Phase1Group,
    json_option,
    print_details,
    print_json,
    print_table,
    state,
)
from phase1.domain import audit, plans
from phase1.errors import InvalidInputError
from phase1.schemas import SAMPLE_ANALYSIS

app = typer.Typer(
    cls=Phase1Group,
    help="Create and show marketplace plans.",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    title: str = typer.Option(..., "--title", "-t", help="The plan's title."),
    analysis: Path | None = typer.Option(
        None,
        "--analysis",
        "-a",
        help='JSON file {"phase1": [{"key","title","description"}, ...]}; '
        "a built-in sample of 5 tasks when omitted.",
        dir_okay=False,
    ),
) -> None:
    """Create a plan (status `analyzed`) and print its id alone.

    Example: plan=$(phase1 plans create --title "Acme rollout")
    """
    document = SAMPLE_ANALYSIS
    if analysis is not None:
        try:
            document = json.loads(analysis.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInputError(f"analysis file {analysis} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read analysis file {analysis}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"analysis file {analysis} is not JSON: {exc}") from None
    plans.validate_analysis(document)
    with state(ctx).connect().transaction() as conn:
        plan = plans.create_plan(conn, title, document)
    typer.echo(str(plan.id))


@app.command("show")
def show(
    ctx: typer.Context,
    plan_id: str = typer.Argument(..., help="The plan's UUID."),
    as_json: bool = json_option(
        '{"plan": {"id", "title", "status", "analysis", "createdAt", "updatedAt"}, '
        '"tasks": [{"id", "planId", "phase", "key", "title", "description", "status", '
        '"createdAt"}], "job": {"jobId", "status"}|null}.'
    ),
) -> None:
    """Show a plan, its job and its Phase 1 tasks.

    Example: phase1 plans show "$plan" --json
    """
    pid = plans.parse_uuid(plan_id)
    with state(ctx).connect().transaction() as conn:
        plan = plans.get_plan(conn, pid)
        tasks = plans.list_tasks(conn, pid)
        execution = audit.for_plan(conn, pid)
    job = None
    if execution is not None:
        job = {"jobId": execution["job_id"], "status": execution["status"]}
    if as_json:
        print_json(
            {
                "plan": plan.model_dump(mode="json"),
                "tasks": [t.model_dump(mode="json") for t in tasks],
                "job": job,
            }
        )
        return
    print_details(
        [
            ("plan", str(plan.id)),
            ("title", plan.title),
            ("status", plan.status),
            ("job", f"{job['jobId']} ({job['status']})" if job else None),
        ]
    )
    print_table(
        ("key", "title", "status", "id"),
        [(task.key, task.title, task.status, str(task.id)) for task in tasks],
        title=f"Phase 1 tasks ({len(tasks)})",
        keep=["key"],
    )
