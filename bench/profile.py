"""Profile phase1's worker: `python -m bench.profile` (needs the `bench` extra).

- steady state: py-spy samples one `phase1 worker` process (wall clock, waits included) while
  it drains no-op jobs, then Phase 1 jobs; the raw stacks and a summary of where the time of
  a job goes (by RQ phase × what the process was doing) land in bench/profiles/;
- start-up: pyinstrument runs `phase1 worker --burst` with one job queued (imports, connects,
  registers, runs the job, exits) and writes its call tree.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from redis import Redis

from bench.env import BIN, BenchEnv, Workers, bench_env, finished_count, phase1_worker
from bench.overhead import enqueue_noops
from bench.realjobs import approve_plans

PROFILES = Path(__file__).resolve().parent / "profiles"

# What a sample was doing, judged from its innermost frames first (first rule that matches).
ACTIVITIES = (
    ("PostgreSQL: wait and psycopg", ("(psycopg",)),
    ("Redis: waiting for answers (round trips)", ("(redis/_parsers/socket.py", "(socket.py:")),
    ("Redis: sending (a syscall per round trip)", ("send_packed_command", "sendall")),
    ("Redis: redis-py building and parsing commands", ("(redis/",)),
    ("logging", ("(logging/",)),
    ("(de)serialization: pydantic, json", ("(pydantic", "(json/", "serializers.py")),
    ("timestamps (utcformat, now)", ("utcformat", "(rq/utils.py:33")),
    ("SIGALRM timeout, signals, procline", ("(rq/timeouts.py", "setproctitle", "(signal")),
)
# Which part of RQ's loop a sample belongs to: the first of these found, outermost first.
PHASES = (
    ("dequeue (BLMOVE, fetch job hash, heartbeat)", "dequeue_job_and_maintain_ttl"),
    ("prepare execution (pipeline: started registry, job hash)", "prepare_job_execution"),
    ("prepare execution (pipeline: started registry, job hash)", "prepare_execution"),
    ("job function (phase1.jobs.phase1_job.run_phase1_job / no-op)", "Job.perform"),
    ("success bookkeeping (finished registry, result, job hash)", "handle_job_success"),
    ("success bookkeeping (finished registry, result, job hash)", "_finalize_success"),
    ("failure bookkeeping", "handle_job_failure"),
    ("maintenance, scheduler, suspension checks", "check_for_suspension"),
    ("maintenance, scheduler, suspension checks", "run_maintenance_tasks"),
    ("heartbeats, worker state", "heartbeat"),
    ("heartbeats, worker state", "set_state"),
)


def _activity(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, needles in ACTIVITIES:
            if any(n in frame for n in needles):
                return label
    return "other Python in RQ and phase1"


def _phase(frames: list[str]) -> str:
    for label, needle in PHASES:
        if any(needle in f for f in frames):
            return label
    return "rest of the work loop"


def summarise(raw: Path, jobs: int, seconds: float, title: str) -> str:
    """Where one job's wall time goes, from py-spy's raw (collapsed) stacks of the main thread."""
    cells: defaultdict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not frames[0].startswith("<module>"):
            continue  # other threads: psycopg's pool workers, RQ's pubsub listener
        cells[_phase(frames)][_activity(frames)] += int(count)
        total += int(count)
    per_job_ms = seconds * 1000 / jobs if jobs else 0.0
    out = [
        f"# {title}",
        "",
        f"{jobs} jobs in {seconds:.1f} s of sampling: {jobs / seconds:.0f} jobs/s, "
        f"{per_job_ms:.2f} ms per job (wall clock, main thread, {total} samples).",
        "",
        "| part of RQ's loop | what the process was doing | share | ms per job |",
        "|---|---|--:|--:|",
    ]
    by_phase = sorted(cells.items(), key=lambda kv: -sum(kv[1].values()))
    for phase, activities in by_phase:
        phase_total = sum(activities.values())
        out.append(
            f"| **{phase}** | (all) | {100 * phase_total / total:.1f}% "
            f"| {per_job_ms * phase_total / total:.2f} |"
        )
        for activity, n in activities.most_common():
            if n / total >= 0.005:
                out.append(
                    f"| | {activity} | {100 * n / total:.1f}% | {per_job_ms * n / total:.2f} |"
                )
    totals: Counter[str] = Counter()
    for activities in cells.values():
        totals.update(activities)
    out += ["", "| what the process was doing, whole loop | share | ms per job |", "|---|--:|--:|"]
    for activity, n in totals.most_common():
        out.append(f"| {activity} | {100 * n / total:.1f}% | {per_job_ms * n / total:.2f} |")
    return "\n".join(out) + "\n"


def steady_state(env: BenchEnv, real: bool, seconds: float) -> str:
    name = "real" if real else "noop"
    queue = env.queue_name(f"profile-{name}")
    redis = Redis.from_url(env.redis_url)
    ctx = env.context(queue, pool_size=4)
    try:
        count = 1500 if real else 6000
        if real:
            approve_plans(ctx, count, threads=4)
        else:
            enqueue_noops(redis, queue, count)
        workers = Workers(phase1_worker(1), env.process_env(queue), env.workdir / "logs")
        done = finished_count(redis, queue)
        while done() < 20:  # started, imported, connected
            time.sleep(0.05)
        before, began = done(), time.monotonic()
        raw = PROFILES / f"{name}.pyspy.txt"
        subprocess.run(
            [
                *(shutil.which("py-spy") or str(BIN / "py-spy"), "record", "--idle", "-r", "250"),
                *("-d", str(int(seconds)), "-f", "raw", "-o", str(raw)),
                *("--pid", str(workers.procs[0].pid)),
            ],
            check=True,
            capture_output=True,
        )
        jobs, elapsed = done() - before, time.monotonic() - began
        workers.stop()
        title = f"phase1 worker, one process, {'Phase 1 jobs' if real else 'no-op jobs'}"
        summary = summarise(raw, jobs, elapsed, title)
        (PROFILES / f"{name}.summary.md").write_text(summary)
        return summary
    finally:
        ctx.close()
        redis.close()


def startup(env: BenchEnv) -> Path:
    queue = env.queue_name("profile-start")
    redis = Redis.from_url(env.redis_url)
    try:
        enqueue_noops(redis, queue, 1)
    finally:
        redis.close()
    out = PROFILES / "startup.pyinstrument.txt"
    subprocess.run(
        [
            *(str(BIN / "pyinstrument"), "-r", "text", "-o", str(out)),
            *(str(BIN / "phase1"), "worker", "--burst"),
        ],
        env=env.process_env(queue),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8, help="sampling time per scenario")
    args = parser.parse_args()
    PROFILES.mkdir(exist_ok=True)
    with bench_env(redis_url=None, database_url=None, quick=False, reps=1) as env:
        for real in (False, True):
            sys.stdout.write(steady_state(env, real, args.seconds) + "\n")
        sys.stdout.write(f"start-up profile: {startup(env)}\n")


if __name__ == "__main__":
    main()
