"""Start: worker process start to its first job done, with the job already queued.

Two starts: a cold one (a new `phase1 worker` / `rq worker` process: interpreter, imports,
connections, registration), and a supervised one, the start a crashed worker's replacement
pays: `phase1 worker --processes 2` forks its children from the supervisor, which has every
module imported already; RQ's own `rq worker-pool -n 2` (of RQ's forking or simple worker)
forks them likewise. Both children are killed, a job is queued, and the time runs from the
supervisor's fork of the first replacement (seen in /proc) to that job done."""

from __future__ import annotations

import compileall
import contextlib
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue, Worker

import phase1
from bench.env import (
    JSON,
    PHASE1,
    RQ,
    BenchEnv,
    BenchError,
    Workers,
    end_times,
    make_plans,
    worker_commands,
)
from bench.overhead import enqueue_noops
from bench.realjobs import approve_plans
from bench.report import Row, goal
from bench.stats import alternate, median
from phase1.jobs import approval

KINDS = ("phase1", "rq_worker", "rq_simple")
CHILDREN = 2  # `phase1 worker --processes 1` runs its one worker without a supervisor


def first_job(env: BenchEnv, kind: str, real: bool) -> float:
    """Milliseconds from starting a burst worker of `kind` to its (only) job being done."""
    queue = env.queue_name(f"start-{kind}")
    if real:
        ctx = env.context(queue, pool_size=1)
        try:
            job_ids = approve_plans(ctx, 1)
        finally:
            ctx.close()
    redis = Redis.from_url(env.redis_url)
    try:
        if not real:
            job_ids = enqueue_noops(redis, queue, 1)
        started = datetime.now(UTC).timestamp()
        Workers(
            worker_commands(kind, queue, env.redis_url, 1),
            env.process_env(queue),
            env.workdir / "logs",
        ).wait(timeout=60)
        return (end_times(redis, job_ids)[0] - started) * 1000
    finally:
        redis.close()


def supervisor_command(kind: str, queue: str, redis_url: str) -> list[str]:
    """A supervisor of CHILDREN worker processes that restarts the ones that die."""
    if kind == "phase1":
        return [PHASE1, "worker", "--processes", str(CHILDREN)]
    argv = [RQ, "worker-pool", queue, "-n", str(CHILDREN), "--serializer", JSON, "-u", redis_url]
    return argv + (["-w", "rq.worker.SimpleWorker"] if kind == "rq_simple" else [])


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


class ForkWatch:
    """The moment the supervisor `pid` forks a child not in `known` (polled every ms)."""

    def __init__(self, pid: int, known: set[int]) -> None:
        self.pid, self.known = pid, known
        self.forked_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.forked_at is None:
            if children(self.pid) - self.known:
                self.forked_at = time.time()
            time.sleep(0.001)

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        if self.forked_at is None:
            raise BenchError("the supervisor started no new worker process")
        return self.forked_at


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not reaped, has closed its files already)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for(what: str, condition: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def supervised_first_job(env: BenchEnv, kind: str, real: bool) -> float:
    """Milliseconds from a supervisor forking a replacement for its killed workers to the
    replacement's first job done (the job was queued before the fork; a try where the
    supervisor was quicker than the enqueue, or a killed worker's socket still open was served
    the job, is made again)."""
    for _ in range(5):
        with contextlib.suppress(_TooEarly):
            return _supervised_try(env, kind, real)
    raise BenchError(f"{kind}: the supervisor restarted its workers before every enqueue")


class _TooEarly(Exception):
    pass


def _supervised_try(env: BenchEnv, kind: str, real: bool) -> float:
    queue = env.queue_name(f"restart-{kind}")
    redis = Redis.from_url(env.redis_url)
    ctx = env.context(queue, pool_size=1)
    plan_ids = make_plans(ctx, 1) if real else []  # made now: only the approval after the kill
    workers = Workers(
        [supervisor_command(kind, queue, env.redis_url)],
        env.process_env(queue),
        env.workdir / "logs",
    )
    supervisor = workers.procs[0].pid
    try:

        def ready() -> set[int] | None:
            pids = children(supervisor)
            registered = Worker.all(queue=Queue(queue, connection=redis))
            return pids if len(pids) == CHILDREN and len(registered) >= CHILDREN else None

        old = _wait_for("the workers to start", ready)
        # RQ's pool looks at its workers once a second, in step with their start; a kill at a
        # random moment of that second leaves it time to notice only after the enqueue.
        time.sleep(random.uniform(0.2, 1.2))
        # With their own children (RQ's schedulers): a scheduler holding a copy of its dead
        # worker's Redis socket would have plain RQ's dead worker served the job.
        killed = [p for child in old for p in (child, *children(child))]
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Until they are gone (their sockets closed), Redis could still serve them the job.
        _wait_for("the workers to die", lambda: not any(map(_alive, killed)), timeout=10)
        watch = ForkWatch(supervisor, old)
        if real:
            job_ids = [approval.approve(ctx, plan_ids[0]).job_id]
        else:
            job_ids = enqueue_noops(redis, queue, 1)
        # Before the fork no live worker can take the job; if it left the queue, a killed
        # worker's connection, not closed yet, was served it: try again.
        gone = redis.lpos(f"rq:queue:{queue}", job_ids[0]) is None
        if watch.forked_at is not None or gone:
            watch.cancel()
            raise _TooEarly
        _wait_for("the job", lambda: end_times(redis, job_ids, all_done=False))
        return (end_times(redis, job_ids)[0] - watch.stop()) * 1000
    finally:
        workers.stop()
        ctx.close()
        redis.close()


def compile_phase1() -> None:
    """Byte-compile phase1's modules, as `pip install` does for an installed package: an
    editable checkout run with PYTHONDONTWRITEBYTECODE (as here) would compile them from
    source at every start (~70 ms), which no deployed worker pays. RQ's are compiled."""
    compileall.compile_dir(str(Path(phase1.__file__).parent), quiet=1)


def run(env: BenchEnv) -> tuple[list[Row], dict[str, Any]]:
    compile_phase1()
    rows, raw = [], {}
    measures = (
        ("", "process start", first_job),
        ("supervised, ", "supervised restart: fork", supervised_first_job),
    )
    for prefix, label, measure in measures:
        for real in (False, True):
            job = "Phase 1 job" if real else "no-op job"
            results = alternate(
                KINDS, env.reps, lambda kind, _r, real=real, m=measure: m(env, kind, real)
            )
            raw[prefix + ("phase1 job" if real else "no-op job")] = results
            ms = {kind: median(values) for kind, values in results.items()}
            row = Row(
                "start",
                f"{label} → first job done ({job})",
                "ms",
                ms["phase1"],
                ms["rq_worker"],
                ms["rq_simple"],
                higher_is_better=False,
            )
            rows.append(goal(row, at_most=250))
    return rows, raw
