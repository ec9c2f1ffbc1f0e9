"""Orphan recovery: a job whose worker died mid-attempt is retried or dead-lettered in seconds.

RQ finds such a job only in its registry cleanup, 7-15 minutes later with defaults (and never
sooner than job timeout + 60 s). Here every phase1 worker runs a sweep every
`orphan_after / 3` seconds (one of them at a time, under a short Redis lock): an execution
RQ still holds as started whose job has not beaten (phase1.jobs.heartbeat) for `orphan_after`
seconds is failed as `abandoned` — its attempt closed in PostgreSQL first, then, in one
MULTI/EXEC on RQ's own keys, its execution dropped from the StartedJobRegistry and the job put
back on the queue (a retry, at once: spotting the death already took longer than the backoff,
and the dead worker's scheduler may hold the queue's scheduler lock for another minute) or
failed into RQ's FailedJobRegistry and our DLQ. rq tools stay correct, and RQ's own late
cleanup then finds nothing to do (or, racing, finds the attempt recorded already).

Also here: the killed-work-horse handler RQ's forking worker calls when a horse dies without
reporting (SIGKILL, OOM, the hard kill at timeout + 60 s), which never reaches `on_failure`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure

from phase1 import keys
from phase1.context import Phase1
from phase1.errors import Phase1Error
from phase1.jobs import failure
from phase1.schemas import FailureReason

log = logging.getLogger(__name__)


def sweep_interval(orphan_after: float) -> float:
    return max(0.2, orphan_after / 3)


@dataclass(frozen=True)
class Orphan:
    """An execution RQ holds as started whose job shows no sign of life."""

    job_id: str
    execution_id: str
    worker_name: str
    silent_for: float  # seconds since the last heartbeat (or since the execution began)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _last_sign_of_life(redis: Redis, job_id: str, execution_id: str) -> tuple[float, str]:
    """The newest of the execution's own timestamps (RQ's), and its worker's name."""
    data: Any = redis.hgetall(Execution(execution_id, job_id, redis).key)
    if data:
        seen = max(float(data.get(b"created_at", 0)), float(data.get(b"last_heartbeat", 0)))
        return seen, _text(data.get(b"worker_name", b""))
    # The execution hash expired (a long-dead worker): fall back on the job's own fields.
    fields: Any = redis.hmget(Job.key_for(job_id), ["started_at", "worker_name"])
    started, worker = fields
    seen = 0.0
    if started:
        seen = datetime.fromisoformat(_text(started).replace("Z", "+00:00")).timestamp()
    return seen, _text(worker or b"")


def find_orphans(ctx: Phase1, *, now: float | None = None) -> list[Orphan]:
    """Executions of the job queue whose job has been silent for `orphan_after` seconds."""
    now = time.time() if now is None else now
    redis = ctx.redis
    queue = ctx.settings.queue
    limit = ctx.settings.orphan_after
    # cleanup=False: RQ's cleanup sets SIGALRM timers, which only the main thread may do.
    started = ctx.queue().started_job_registry.get_job_and_execution_ids(cleanup=False)
    beats: Any = redis.zrange(keys.heartbeats(queue), 0, -1, withscores=True)
    last_beat = {_text(member): float(score) for member, score in beats}
    orphans = []
    for job_id, execution_id in started:
        beat = last_beat.get(job_id, 0.0)
        if now - beat <= limit:
            continue
        seen, worker = _last_sign_of_life(redis, job_id, execution_id)
        silent = now - max(beat, seen)
        if silent > limit:
            orphans.append(Orphan(job_id, execution_id, worker, silent))
    return orphans


def _drop_execution(ctx: Phase1, orphan: Orphan, job: Job | None) -> None:
    """Forget a leftover execution (its job moved on, or is gone)."""
    execution = Execution(orphan.execution_id, orphan.job_id, ctx.redis, orphan.worker_name)
    with ctx.redis.pipeline() as pipe:
        if job is not None:
            execution.delete(job, pipe)
        else:
            pipe.zrem(ctx.queue().started_job_registry.key, execution.composite_key)
        pipe.execute()


def recover(ctx: Phase1, orphan: Orphan) -> str:
    """Fail the orphan's attempt and retry or dead-letter the job; returns what happened:
    `retried`, `dead-lettered`, `left` (it moved on meanwhile) or `gone`."""
    redis = ctx.redis
    queue = ctx.queue()
    try:
        job = Job.fetch(orphan.job_id, connection=redis, serializer=queue.serializer)
    except NoSuchJobError:
        _drop_execution(ctx, orphan, None)
        return "gone"
    current = job.get_status(refresh=False) == JobStatus.STARTED and (
        not orphan.worker_name or not job.worker_name or job.worker_name == orphan.worker_name
    )
    if not current:
        _drop_execution(ctx, orphan, job)
        return "left"
    final = not job.should_retry
    worker = orphan.worker_name or "its worker"
    message = (
        f"{worker} stopped with the attempt running: no heartbeat for "
        f"{orphan.silent_for:.0f} s (PHASE1_ORPHAN_AFTER={ctx.settings.orphan_after:g})"
    )
    # PostgreSQL first: a crash after it leaves the job started, and the next sweep finishes
    # the move (the attempt is recorded once: only an open attempt is closed).
    recorded = failure.record_failure(
        job,
        redis,
        reason="abandoned",
        error_type="AbandonedJobError",
        message=message,
        traceback_text=None,
        final=final,
        next_retry_at=None if final else datetime.now(UTC),
        only_if_active=True,
        ctx=ctx,
    )
    # Its work had committed before the worker died: one more run (a no-op that returns the
    # stored result) lets RQ finish it, rather than fail a completed job.
    rerun = recorded == "completed"
    final = final and not rerun
    execution = Execution(orphan.execution_id, orphan.job_id, redis, orphan.worker_name)
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(job.key)  # type: ignore[no-untyped-call]
            if pipe.hget(job.key, "status") != JobStatus.STARTED.value.encode():
                pipe.unwatch()
                return "left"
            pipe.multi()
            execution.delete(job, pipe)
            if final:
                job.ended_at = datetime.now(UTC)
                record_job_failure(job, f"AbandonedJobError: {message}", pipe)
            else:
                if not rerun:
                    assert job.retries_left is not None
                    job.retries_left -= 1
                queue.enqueue_job(job, pipeline=pipe)
            pipe.zrem(keys.heartbeats(ctx.settings.queue), job.id)
            pipe.execute()
        except WatchError:
            return "left"  # its worker, or RQ's own cleanup, moved it first
    return "dead-lettered" if final else "retried"


def sweep(ctx: Phase1) -> dict[str, str]:
    """One sweep of the job queue, if no other worker swept within the interval.

    Returns job id → outcome for the orphans it handled.
    """
    settings = ctx.settings
    interval = sweep_interval(settings.orphan_after)
    # Taking turns rather than mutual exclusion: the lock simply expires before the next turn.
    token = uuid.uuid4().hex
    if not ctx.redis.set(keys.sweep_lock(settings.queue), token, nx=True, px=int(interval * 900)):
        return {}
    outcomes = {}
    for orphan in find_orphans(ctx):
        try:
            outcomes[orphan.job_id] = recover(ctx, orphan)
        except (Phase1Error, RedisError) as exc:
            log.warning("could not recover orphaned job %s (next sweep retries): %s", orphan, exc)
            continue
        log.warning(
            "job %s was orphaned (%s, silent %.1f s): %s",
            orphan.job_id,
            orphan.worker_name or "unknown worker",
            orphan.silent_for,
            outcomes[orphan.job_id],
        )
    _prune_beats(ctx)
    return outcomes


def _prune_beats(ctx: Phase1) -> None:
    """Drop heartbeats of jobs RQ no longer holds as started (each job's last beat stays)."""
    key = keys.heartbeats(ctx.settings.queue)
    cutoff = time.time() - ctx.settings.orphan_after
    stale: Any = ctx.redis.zrangebyscore(key, "-inf", cutoff)
    if not stale:
        return
    registry = ctx.queue().started_job_registry
    running = {job_id for job_id, _ in registry.get_job_and_execution_ids(cleanup=False)}
    gone = [m for m in (_text(s) for s in stale) if m not in running]
    if gone:
        ctx.redis.zrem(key, *gone)


class Sweeper:
    """Runs `sweep` every interval in a daemon thread until stopped."""

    def __init__(self, ctx: Phase1) -> None:
        self.ctx = ctx
        self.interval = sweep_interval(ctx.settings.orphan_after)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase1-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sweep(self.ctx)
            except Exception:
                log.exception("orphan sweep failed; trying again in %.1f s", self.interval)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start(ctx: Phase1) -> Sweeper:
    """Start sweeping the job queue for orphans in the background."""
    return Sweeper(ctx).start()


def _describe_exit(retpid: int | None, ret_val: int | None) -> str:
    pid = f"pid {retpid}" if retpid else "its process"
    if ret_val is not None and os.WIFSIGNALED(ret_val):
        number = os.WTERMSIG(ret_val)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        return f"work horse ({pid}) was killed by signal {number} ({name})"
    code = os.WEXITSTATUS(ret_val) if ret_val is not None and os.WIFEXITED(ret_val) else ret_val
    return f"work horse ({pid}) exited with status {code} without reporting"


def on_horse_killed(job: Job, retpid: int | None, ret_val: int | None, rusage: Any) -> None:
    """RQ's forking worker calls this, in the worker, when the horse died without reporting.

    RQ retries or fails the job right after; this records the failed attempt (and, when no
    retry is left, the DLQ entry) that `on_failure` would have. Never raises into RQ.
    """
    message = _describe_exit(retpid, ret_val)
    reason: FailureReason = "abandoned"
    started = job.started_at
    if started is not None and job.timeout and job.timeout > 0:
        ran = (datetime.now(UTC) - started.replace(tzinfo=started.tzinfo or UTC)).total_seconds()
        if ran >= job.timeout:
            reason = "timeout"
            message += f" after {ran:.0f} s, past the {job.timeout} s timeout"
    final = not job.should_retry
    next_retry_at = None
    if not final:
        next_retry_at = datetime.now(UTC) + timedelta(seconds=job.get_retry_interval())
    try:
        recorded = failure.record_failure(
            job,
            job.connection,
            reason=reason,
            error_type="WorkHorseKilled",
            message=message,
            traceback_text=None,
            final=final,
            next_retry_at=next_retry_at,
        )
    except Exception:
        log.exception("job %s: could not record the killed work horse", job.id)
        return
    if recorded == "completed" and final:
        # The horse died after its work committed: RQ would fail a completed job. One more
        # run instead (a no-op returning the stored result) lets RQ finish it.
        job.retries_left = 1
