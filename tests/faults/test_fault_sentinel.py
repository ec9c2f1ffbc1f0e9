"""Redis behind Sentinel: the primary `kill -9`'d under load over HTTP, two workers, and every
approval answered 202 still ends completed, once; PostgreSQL puts back what the replica lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from http_support import Api, start_server
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.scheduler import RQScheduler
from support import PHASE1, Processes, inject_fault, settings_env, wait_until

from faults.faultkit import FINAL, check_invariants, make_plans, start_worker, statuses
from faults.sentinelkit import SentinelSet
from phase1.context import Phase1, build
from phase1.jobs import events
from phase1.runtime.process import build_worker
from phase1.settings import Settings

Record = Callable[[str, str, str, float | None], None]

# Every approval answered 202 must be completed this long after the kill (the bound the
# README states): failover (~1-3 s) + a worker's reconnect backoff + the reconciler's grace
# and interval + the orphan sweep for jobs the lost writes left `started`.
COMPLETION_BOUND = 45.0
PLANS = 120
RATE = 12.0  # approvals a second, from a steady client
KILL_AFTER = 3.0  # seconds into the load
JOB_SECONDS = 0.2  # each job's time in PostgreSQL
UNREPLICATED = 5  # approvals accepted after the replica stopped hearing from the primary


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    sset = SentinelSet(tmp_path)
    try:
        yield sset
    finally:
        sset.close()


@dataclass
class Load:
    """Approvals sent one by one at a steady rate over HTTP, each answer noted with its time."""

    api: Api
    plan_ids: list[uuid.UUID]
    answers: list[tuple[float, uuid.UUID, int, str | None, str | None]] = field(
        default_factory=list
    )

    def run(self) -> None:
        started = time.monotonic()
        for i, plan_id in enumerate(self.plan_ids):
            time.sleep(max(0.0, started + i / RATE - time.monotonic()))
            try:
                answer = self.api.approve(plan_id, timeout=10)
            except OSError:
                self.answers.append((time.monotonic(), plan_id, 0, None, None))
                continue
            job_id = answer.json.get("jobId") if answer.status == 202 else None
            self.answers.append(
                (time.monotonic(), plan_id, answer.status, job_id, answer.header("retry-after"))
            )


FAULTS = {
    "kill": "kill -9 of the primary",
    "pause": "primary SIGSTOPped until the failover, then SIGCONTed (clients still on it)",
}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_primary_lost_under_load(
    sentinels: SentinelSet,  # first: torn down last, after the processes that use it
    make_settings: Callable[..., Settings],
    processes: Processes,
    record: Record,
    fault: str,
) -> None:
    """`kill`: the primary dies. `pause`: it stops answering, the sentinels promote the
    replica, then it comes back believing it is the primary, with clients still connected
    to it, until the sentinels demote it (its clients then get READONLY and move on)."""
    settings = make_settings(redis_url=sentinels.url, job_timeout=5, orphan_after=4)
    ctx = build(settings, pool_size=4)
    plan_ids = make_plans(ctx, PLANS)
    for plan_id in plan_ids:  # jobs a little slower than approvals come: a queue builds up
        inject_fault(settings.database_url or "", plan_id, fail_times=0, sleep_s=JOB_SECONDS)
    workers = [start_worker(processes, settings, reconcile_interval=1, grace=1) for _ in "ab"]
    api = start_server(processes, settings)
    wait_until(
        lambda: len(ctx.redis.smembers(f"rq:workers:{settings.queue}")) >= 2,
        timeout=30,
        what="two workers registered",
    )
    old_port = sentinels.primary.port
    load = Load(api, plan_ids)
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    time.sleep(KILL_AFTER)  # a fault injected at a point in the load, not a wait on a state
    # The replica stops hearing from the primary; approvals go on being accepted on the
    # primary alone; then it dies, and what the replica never got is lost with it. The
    # workers are held meanwhile, so those jobs are still queued when it dies.
    sentinels.link.freeze()
    for worker in workers:
        os.killpg(worker.pid, signal.SIGSTOP)
    frozen_at = len(load.answers)
    wait_until(
        lambda: sum(a[2] == 202 for a in load.answers[frozen_at:]) >= UNREPLICATED,
        timeout=30,
        what="approvals accepted that the replica never sees",
    )
    unreplicated = [a[3] for a in load.answers[frozen_at:] if a[2] == 202 and a[3]]
    if fault == "kill":
        sentinels.primary.kill()
    else:
        sentinels.primary.pause()
    sentinels.link.sever()
    killed, killed_wall = time.monotonic(), datetime.now(UTC)
    for worker in workers:
        os.killpg(worker.pid, signal.SIGCONT)
    if fault == "pause":
        wait_until(lambda: sentinels.primary_port() not in (None, old_port), timeout=30)
        sentinels.primary.resume()
        wait_until(
            lambda: role(sentinels.primary.client()) == "slave",
            timeout=30,
            what="the old primary demoted",
        )
    sender.join(timeout=PLANS / RATE + 60)
    assert not sender.is_alive()

    codes = Counter(str(status) for _, _, status, _, _ in load.answers)
    assert set(codes) <= {"202", "503"}, codes
    accepted = {job_id for _, _, status, job_id, _ in load.answers if status == 202 and job_id}
    refused = [plan_id for _, plan_id, status, _, _ in load.answers if status == 503]
    assert all(ra for _, _, status, _, ra in load.answers if status == 503), "no Retry-After"
    back = [t for t, _, status, _, _ in load.answers if status == 202 and t > killed]
    assert back, "no approval succeeded after the failover"
    approvals_back = min(back) - killed
    wait_until(lambda: sentinels.primary_port() not in (None, old_port), timeout=30)
    new_port = sentinels.primary_port()

    # Every 202 ends completed within the bound.
    def all_final() -> bool:
        counts = statuses(ctx, sorted(accepted))
        return sum(counts.get(s, 0) for s in FINAL) == len(accepted)

    wait_until(all_final, timeout=COMPLETION_BOUND, interval=0.2, what="accepted jobs final")
    last_done = time.monotonic() - killed
    # The failover lost those approvals' jobs from Redis; PostgreSQL had them, and the
    # reconciler put them back (their attempts ran on the new primary).
    # Jobs the switch lost from Redis (accepted by the old primary alone, before or after it
    # stopped answering the sentinels) were put back from PostgreSQL by the reconciler.
    put_back = sum(
        int(n) for i in (0, 1) for n in re.findall(r"re-enqueued (\d+) job", processes.log(i))
    )
    if fault == "kill":  # the approvals the replica never heard of were among them
        assert put_back, "no accepted job was lost with the primary: the scenario did not happen"
        assert any(enqueued_after(ctx, j, killed_wall) for j in unreplicated)
    # (A paused primary comes back with its queue: workers still connected to it may run
    # those jobs before the sentinels demote it, and then nothing is left to put back.)

    # `phase1 info` reads the new primary, and says which it is.
    shown = subprocess.run(
        [PHASE1, "info", "--json"],
        env=settings_env(settings),
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert json.loads(shown.stdout)["redisPrimary"] == f"127.0.0.1:{new_port}"
    approved_202 = [plan_id for _, plan_id, status, _, _ in load.answers if status == 202]
    outcome = check_invariants(ctx, approved_202)
    assert outcome.completed == len(approved_202)

    # A 503 wrote nothing, or wrote the approval and its job completes all the same.
    with ctx.transaction() as conn:
        rows = conn.execute(
            "SELECT p.id, p.status, e.job_id FROM marketplace_plans p "
            "LEFT JOIN marketplace_job_executions e ON e.plan_id = p.id WHERE p.id = ANY(%s)",
            (refused,),
        ).fetchall()
    recorded = [r["plan_id"] if "plan_id" in r else r["id"] for r in rows if r["job_id"]]
    untouched = [r for r in rows if not r["job_id"]]
    assert all(r["status"] != "approved" for r in untouched)
    if recorded:
        wait_until(
            lambda: statuses_of_plans(ctx, recorded) == {"completed": len(recorded)},
            timeout=COMPLETION_BOUND,
            what="approvals recorded during the switch completed",
        )
        check_invariants(ctx, recorded)

    record(
        f"Sentinel failover under load ({fault})",
        f"{FAULTS[fault]} {KILL_AFTER:.0f} s into {PLANS} approvals at {RATE:.0f}/s, "
        f"2 workers; sent {len(load.answers)}, 202 {codes.get('202', 0)}, "
        f"503 {codes.get('503', 0)} ({len(recorded)} recorded)",
        f"{outcome.completed} completed, 0 doubled, 0 stuck; {put_back} re-enqueues by the "
        f"reconciler of jobs Redis lost; approvals back after "
        f"{approvals_back:.1f} s",
        last_done,
    )
    ctx.close()


def role(client: Redis) -> str:
    try:
        info: Any = client.info("replication")
        return str(info.get("role", ""))
    except RedisError:
        return ""
    finally:
        client.close()


def enqueued_after(ctx: Phase1, job_id: str, moment: datetime) -> bool:
    """Whether the job, as the (new) primary holds it, was enqueued after `moment`: not by
    its approval, which answered before, but by the reconciler, from PostgreSQL."""
    try:
        job = Job.fetch(job_id, connection=ctx.redis, serializer=ctx.queue().serializer)
    except NoSuchJobError:  # it completed on the old primary, which took its record along
        return False
    enqueued = job.enqueued_at
    return enqueued is not None and enqueued.replace(tzinfo=enqueued.tzinfo or UTC) > moment


def statuses_of_plans(ctx: Phase1, plan_ids: list[uuid.UUID]) -> dict[str, int]:
    with ctx.transaction() as conn:
        rows = conn.execute(
            "SELECT status, count(*) AS n FROM marketplace_job_executions "
            "WHERE plan_id = ANY(%s) GROUP BY status",
            (plan_ids,),
        ).fetchall()
    return {r["status"]: int(r["n"]) for r in rows}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_scheduler_and_an_event_follower_follow_the_primary(
    sentinels: SentinelSet, make_settings: Callable[..., Settings], processes: Processes
) -> None:
    """RQ's scheduler (forked by the worker) builds its own connection from the worker's pool
    class and kwargs: it must still ask the sentinels for the primary, then and after a
    failover. `phase1 events --follow` keeps following through the failover."""
    ctx = build(make_settings(redis_url=sentinels.url))
    events.emit(ctx.redis, ctx.settings, events.make(events.ENQUEUED, "job-before", None, None))
    follower = processes.start([PHASE1, "events", "--follow", "--json"], ctx.settings)
    wait_until(lambda: "job-before" in processes.log(0), timeout=30, what="the follower")
    worker = build_worker(ctx)
    scheduler = RQScheduler([ctx.settings.queue], connection=worker.connection)
    connection = scheduler.connection
    assert connection.ping()
    assert connection.connection_pool.connection_kwargs["connection_pool"].is_master
    connection.set("phase1:test:before", 1)
    old_port = sentinels.primary.port
    sentinels.primary.kill()
    wait_until(lambda: sentinels.primary_port() not in (None, old_port), timeout=30)

    def written() -> bool:
        try:
            return bool(connection.set("phase1:test:after", 1))
        except RedisError:
            return False

    wait_until(written, timeout=20, what="the scheduler's connection on the new primary")
    assert sentinels.replica.client().get("phase1:test:after") == b"1"
    events.emit(ctx.redis, ctx.settings, events.make(events.ENQUEUED, "job-after", None, None))
    wait_until(lambda: "job-after" in processes.log(0), timeout=30, what="followed on")
    assert follower.poll() is None
    worker.connection.close()
    ctx.close()
