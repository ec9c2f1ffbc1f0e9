"""Latency: approval → `completed`, at idle and under load, timed from the approval call to
the moment the `job:completed` event reaches a reader of the event stream."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.env import BenchEnv, BenchError, Workers, make_plans, worker_commands
from bench.report import Row, goal
from bench.stats import alternate, median, percentile
from phase1 import keys
from phase1.context import Phase1
from phase1.jobs import approval, events
from phase1.schemas import Event

IDLE_KINDS = ("phase1", "rq_worker", "rq_simple")
# The forking rq worker runs ~2 Phase 1 jobs/s (it imports phase1 in every work horse): below
# any load worth the name, so only the in-process workers are offered it.
LOAD_KINDS = ("phase1", "rq_simple")


class Completions:
    """Follows the queue's event stream; records when each job's `job:completed` arrives."""

    def __init__(self, ctx: Phase1) -> None:
        self.ctx = ctx
        self.done: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        # Start at the stream's end: only what happens from now on.
        last = ctx.redis.xrevrange(keys.event_stream(ctx.settings.queue), count=1)
        self._since = last[0][0].decode() if last else "0-0"
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        # A blocking XREAD (up to 200 ms, so close() is heard): a reader that polled with
        # XRANGE in a loop would spin a core that the workers being measured need.
        stream = keys.event_stream(self.ctx.settings.queue)
        since = self._since
        while not self._stop.is_set():
            answer: Any = self.ctx.redis.xread({stream: since}, count=500, block=200)
            for sid, fields in answer[0][1] if answer else []:
                since = sid.decode() if isinstance(sid, bytes) else str(sid)
                event = Event.model_validate_json(fields.get(b"e") or fields.get("e") or b"")
                if event.type == events.COMPLETED:
                    with self._cond:
                        self.done[event.jobId] = time.perf_counter()
                        self._cond.notify_all()

    def wait(self, job_ids: list[str], timeout: float) -> list[str]:
        """Wait up to `timeout` for the jobs to complete; those that did not."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while missing := [j for j in job_ids if j not in self.done]:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return missing
                self._cond.wait(left)
        return []

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def measure(env: BenchEnv, kind: str, *, samples: int, rate: float | None) -> dict[str, Any]:
    """Approve `samples` plans with running workers of `kind` (one process at idle, two under
    load) — one at a time with a pause (idle), or open-loop at `rate` per second (load).
    Jobs not completed within a bound count at that bound ("censored": the percentiles are
    then lower bounds)."""
    queue = env.queue_name(f"lat-{kind}")
    ctx = env.context(queue, pool_size=2)
    follower = Completions(ctx)
    workers = Workers(
        worker_commands(kind, queue, env.redis_url, 1 if rate is None else 2, burst=False),
        env.process_env(queue),
        env.workdir / "logs",
    )
    try:
        plan_ids = make_plans(ctx, samples + 1)
        # Warm up: the workers are up and have run a job (imports, connections) before timing.
        warm = [approval.approve(ctx, plan_ids[0]).job_id]
        if follower.wait(warm, timeout=90):
            raise BenchError(f"{kind} workers did not complete the warm-up jobs in 90 s")
        sent: dict[str, float] = {}
        approve_ms: list[float] = []
        begin = time.perf_counter()
        for index, plan_id in enumerate(plan_ids[1:]):
            if rate is not None:  # open loop: send on schedule, whatever the backlog
                time.sleep(max(0.0, begin + index / rate - time.perf_counter()))
            t0 = time.perf_counter()
            job_id = approval.approve(ctx, plan_id).job_id
            approve_ms.append((time.perf_counter() - t0) * 1000)
            sent[job_id] = t0
            if rate is None:
                follower.wait([job_id], timeout=30)
                time.sleep(0.02)
        missing = follower.wait(list(sent), timeout=30)
        bound = time.perf_counter()
        latencies = [(follower.done.get(j, bound) - t0) * 1000 for j, t0 in sent.items()]
        return {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "approve_p50": percentile(approve_ms, 50),
            "approve_p95": percentile(approve_ms, 95),
            "samples": len(latencies),
            "censored": len(missing),
        }
    finally:
        workers.stop()
        follower.close()
        ctx.close()


def run(env: BenchEnv, load_rate: float) -> tuple[list[Row], dict[str, Any]]:
    # Fewer repetitions than elsewhere (each is a worker start and a warm-up), and fewer idle
    # samples of the forking worker, which takes ~2 s a job.
    reps = min(env.reps, 3)
    idle_samples = {"phase1": 30, "rq_simple": 30, "rq_worker": 6}
    load_seconds = 5.0
    if env.quick:
        idle_samples = {"phase1": 2, "rq_simple": 2, "rq_worker": 1}
        load_seconds, load_rate = 1.0, min(load_rate, 5.0)
    idle = alternate(
        IDLE_KINDS,
        reps,
        lambda kind, _r: measure(env, kind, samples=idle_samples[kind], rate=None),
    )
    loaded = alternate(
        LOAD_KINDS,
        reps,
        lambda kind, _r: measure(
            env, kind, samples=max(4, int(load_rate * load_seconds)), rate=load_rate
        ),
    )

    def med(results: dict[str, list[dict[str, Any]]], kind: str, key: str) -> float | None:
        if kind not in results:
            return None
        return median([r[key] for r in results[kind] if r[key] is not None])

    rows = []
    for label, results in (("idle", idle), (f"under load ({load_rate:.0f} approvals/s)", loaded)):
        censored = {k: sum(r["censored"] for r in v) for k, v in results.items()}
        for key in ("p50", "p95"):
            row = Row(
                "latency",
                f"approval→completed {key}, {label}",
                "ms",
                med(results, "phase1", key),
                med(results, "rq_worker", key),
                med(results, "rq_simple", key),
                higher_is_better=False,
            )
            if any(censored.values()):
                row.reference = "lower bound, jobs not done in 30 s: " + ", ".join(
                    f"{k} {n}" for k, n in censored.items() if n
                )
            elif results is loaded:
                row.reference = "RQ Worker not offered this load (see real jobs)"
            if label == "idle" and key == "p95":
                goal(row, at_most=20)
            rows.append(row)
    enqueue = Row(
        "latency",
        "approval call (enqueue) p95, idle",
        "ms",
        med(idle, "phase1", "approve_p95"),
        med(idle, "rq_worker", "approve_p95"),
        med(idle, "rq_simple", "approve_p95"),
        higher_is_better=False,
        reference="the same approval service for all",
    )
    rows.append(goal(enqueue, at_most=100))
    return rows, {"reps": reps, "idle": idle, "loaded": loaded, "load_rate": load_rate}
