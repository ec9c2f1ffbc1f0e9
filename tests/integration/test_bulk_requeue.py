"""`phase1 dlq requeue --all`: paced, with progress, interrupted by Ctrl-C and resumed,
never requeueing a job twice (issue 21)."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter

from support import PHASE1, settings_env, wait_until

from phase1 import keys
from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval, cancel, deadletter, events
from phase1.schemas import SAMPLE_ANALYSIS


def dead_letter(ctx: Phase1, count: int) -> list[str]:
    """`count` jobs in the DLQ (cancelled while pending: no worker runs here)."""
    ids = []
    for _ in range(count):
        with ctx.transaction() as conn:
            plan_id: uuid.UUID = plans.create_plan(conn, "Bulk", SAMPLE_ANALYSIS).id
        job_id = approval.approve(ctx, plan_id).job_id
        cancel.cancel(ctx, job_id, "for the bulk test")
        ids.append(job_id)
        time.sleep(0.002)  # distinct failure times: the order is the failure order
    return ids


def requeued_counts(ctx: Phase1) -> Counter[str]:
    return Counter(
        e.jobId for _, e in events.read(ctx.redis, ctx.settings.queue) if e.type == keys.REQUEUED
    )


def test_paced_requeue_is_interrupted_and_resumed_without_doubles(ctx: Phase1) -> None:
    ids = dead_letter(ctx, 12)
    env = settings_env(ctx.settings)
    proc = subprocess.Popen(
        [PHASE1, "dlq", "requeue", "--all", "--rate", "4/s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(requeued_counts(ctx)) >= 3, what="a few requeued")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "requeue: " in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    first = requeued_counts(ctx)
    assert 3 <= len(first) < 12
    assert out.split() == ids[: len(out.split())]  # oldest failure first
    # One already sent back fails again meanwhile: it is in the DLQ again, later.
    again = next(iter(first))
    cancel.cancel(ctx, again, "failed again")
    assert deadletter.get(ctx.redis, ctx.settings.queue, again) is not None

    started = time.monotonic()
    resumed = subprocess.run(
        [PHASE1, "dlq", "requeue", "--all", "--rate", "20/s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the requeue begun before" in resumed.stderr
    left = 12 - len(first)
    assert len(resumed.stdout.split()) == left
    assert time.monotonic() - started >= (left - 1) / 20  # paced
    counts = requeued_counts(ctx)
    assert set(counts) == set(ids) and max(counts.values()) == 1  # never twice
    assert deadletter.job_ids(ctx.redis, ctx.settings.queue) == [again]
    assert not ctx.redis.exists(keys.dlq_requeue_run(ctx.settings.queue))


def test_reason_filter_and_dry_run(ctx: Phase1) -> None:
    ids = dead_letter(ctx, 2)
    env = settings_env(ctx.settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PHASE1, "dlq", "requeue", *args], env=env, capture_output=True, text=True, timeout=60
        )

    assert run("--all", "--reason", "timeout").stdout.split() == []
    dry = run("--all", "--reason", "cancelled", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == ids and "would send back 2" in dry.stderr
    assert deadletter.size(ctx.redis, ctx.settings.queue) == 2
    bad = run("--all", "--rate", "fast")
    assert bad.returncode == 2 and "not a rate" in bad.stderr
    assert run(ids[0], "--rate", "3").returncode == 2
