"""Every name phase1 writes to Redis: the job functions RQ stores, queue names, keys, and the
event types of the stream (settings checks PHASE1_WEBHOOK_EVENTS against them)."""

from __future__ import annotations

JOB_FUNC = "phase1.job.run_phase1_job"
WEBHOOK_FUNC = "phase1.webhooks.deliver"

# Lifecycle event types (DESIGN §3), in the stream and in webhook headers.
ENQUEUED = "job:enqueued"
ACTIVE = "job:active"
PROGRESS = "job:progress"
COMPLETED = "job:completed"
FAILED = "job:failed"
REQUEUED = "job:requeued"
EVENT_TYPES = (ENQUEUED, ACTIVE, PROGRESS, COMPLETED, FAILED, REQUEUED)


def webhook_queue(queue: str) -> str:
    """The RQ queue for webhook deliveries, so a slow receiver never slows jobs."""
    return f"{queue}-webhooks"


def dlq_index(queue: str) -> str:
    """Sorted set of dead-lettered job ids, scored by the time they failed."""
    return f"phase1:{queue}:dlq"


def dlq_entry(queue: str, job_id: str) -> str:
    """String holding one DLQ entry as JSON."""
    return f"phase1:{queue}:dlq:{job_id}"


def event_stream(queue: str) -> str:
    """Capped Redis Stream of lifecycle events."""
    return f"phase1:{queue}:events"


def heartbeats(queue: str) -> str:
    """Sorted set of active job ids scored by their last heartbeat (unix seconds)."""
    return f"phase1:{queue}:heartbeats"


def sweep_lock(queue: str) -> str:
    """Short lock so only one worker sweeps orphans at a time."""
    return f"phase1:{queue}:sweep-lock"


def rq_job(job_id: str) -> str:
    """RQ's own hash for a job."""
    return f"rq:job:{job_id}"


def webhook_failures(queue: str) -> str:
    """Capped list of webhook deliveries given up after their last try, newest first."""
    return f"phase1:{queue}:webhook-failures"


PAUSED_QUEUES = "phase1:paused-queues"
"""Set of the queue names `phase1 pause` paused: phase1 workers take no job from them."""


def dlq_requeue_run(queue: str) -> str:
    """String (JSON) marking a `dlq requeue --all` under way: its cutoff time and filter, so
    a run interrupted and started again resumes it and never requeues a job twice."""
    return f"phase1:{queue}:dlq:requeue-run"
