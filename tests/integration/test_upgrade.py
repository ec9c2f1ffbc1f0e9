"""A job enqueued by an earlier phase1 still runs after an upgrade.

RQ stores a job's function and callbacks by dotted name; phase1 keeps those names as a wire
contract (phase1.job, phase1.webhooks, phase1.worker) while the code lives in its layers. The
job hash below is the one the version before the layered layout wrote (commit 111e84d),
field for field, with its arguments as that version serialized them.
"""

from __future__ import annotations

import json
import uuid
import zlib
from datetime import UTC, datetime

from rq.utils import import_attribute
from support import Processes, wait_until

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import approval, plans
from phase1.jobs import failure, phase1_job, webhooks
from phase1.runtime.worker import Phase1Worker
from phase1.schemas import SAMPLE_ANALYSIS


def old_job_hash(job_id: str, plan_id: uuid.UUID, queue: str) -> dict[str, bytes | str]:
    """The job hash of a Phase 1 job as the pre-layers version enqueued it."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = ["phase1.job.run_phase1_job", None, [{"planId": str(plan_id), "v": 1}], {}]
    return {
        "data": zlib.compress(json.dumps(data).encode()),
        "ended_at": "",
        "group_id": "",
        "retry_intervals": "[1.0, 5.0, 30.0]",
        "retries_left": "3",
        "failure_callback_name": "phase1.job.on_failure",
        "status": "queued",
        "worker_name": "",
        "stopped_callback_name": "",
        "started_at": "",
        "timeout": "10",
        "last_heartbeat": "",
        "meta": json.dumps({"planId": str(plan_id)}),
        "origin": queue,
        "enqueued_at": now,
        "success_callback_name": "",
        "result_ttl": "3600",
        "created_at": now,
        "description": f"Phase 1 tasks for plan {plan_id}",
        "failure_ttl": "31536000",
        "failure_callback_timeout": "10",
    }


def test_the_dotted_names_rq_stores_still_resolve() -> None:
    """Every name an earlier version wrote into Redis, or the README documents, still imports
    to the code that now lives in the layers."""
    assert keys.JOB_FUNC == "phase1.job.run_phase1_job"
    assert keys.WEBHOOK_FUNC == "phase1.webhooks.deliver"
    assert import_attribute(keys.JOB_FUNC) is phase1_job.run_phase1_job
    assert import_attribute("phase1.job.on_failure") is failure.on_failure
    assert import_attribute(keys.WEBHOOK_FUNC) is webhooks.deliver
    assert import_attribute("phase1.webhooks.on_delivery_failure") is webhooks.on_delivery_failure
    assert import_attribute("phase1.worker.Phase1Worker") is Phase1Worker


def test_a_job_enqueued_by_the_earlier_version_runs_after_the_upgrade(
    ctx: Phase1, processes: Processes
) -> None:
    with ctx.transaction() as conn:
        plan_id = plans.create_plan(conn, "enqueued before the upgrade", SAMPLE_ANALYSIS).id
    job_id = str(uuid.uuid4())
    with ctx.transaction() as conn:
        row = approval.record(conn, plan_id, job_id, ctx.settings.queue, 4)
    assert row is not None and row["created"]
    queue = ctx.settings.queue
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.hset(keys.rq_job(job_id), mapping=old_job_hash(job_id, plan_id, queue))
    pipe.sadd("rq:queues", f"rq:queue:{queue}")
    pipe.rpush(f"rq:queue:{queue}", job_id)
    pipe.execute()

    processes.worker(ctx.settings, "--burst")

    def completed() -> bool:
        with ctx.read() as conn:
            execution = conn.execute(
                "SELECT status FROM marketplace_job_executions WHERE job_id = %s", (job_id,)
            ).fetchone()
        return execution is not None and execution["status"] == "completed"

    wait_until(completed, timeout=60, what=f"the old-format job {job_id} to complete")
    with ctx.read() as conn:
        tasks = plans.list_tasks(conn, plan_id)
    assert [t.key for t in tasks] == [t["key"] for t in SAMPLE_ANALYSIS["phase1"]]
