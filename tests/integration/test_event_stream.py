"""Lifecycle events on real Redis, PostgreSQL and RQ workers: the sequence of a job that
completes, one that fails twice then completes, one that ends in the DLQ; subscribers; and the
installed `phase1 events` command following a job live."""

from __future__ import annotations

import json
import os
import queue as queue_module
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import IO

import pytest
from support import PHASE1, Processes, inject_fault, settings_env, wait_until

from phase1 import context
from phase1.context import Phase1, build
from phase1.domain import plans
from phase1.jobs import approval, deadletter, events
from phase1.jobs import queue as jobs
from phase1.runtime.worker import Phase1Worker
from phase1.schemas import SAMPLE_ANALYSIS, Event
from phase1.settings import Settings


def make_plan(ctx: Phase1) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "Events plan", SAMPLE_ANALYSIS).id


def settled(ctx: Phase1, *job_ids: str) -> bool:
    """Each job ended in PostgreSQL and its last event is written (a failure's event goes
    out just after its PostgreSQL commit and the dead-letter entry)."""
    ended = all(jobs.view(ctx, j).status in ("completed", "failed") for j in job_ids)
    return ended and all(
        (evs := job_events(ctx, j))
        and evs[-1].type in (events.COMPLETED, events.FAILED)
        and (evs[-1].type == events.COMPLETED or evs[-1].data.get("final"))
        for j in job_ids
    )


def job_events(ctx: Phase1, job_id: str) -> list[Event]:
    return [e for _, e in events.read(ctx.redis, ctx.settings.queue, job_id=job_id)]


def label(event: Event) -> str:
    """A compact name for a step of the lifecycle: `failed#2`, `progress90#1`, `failed!#3`."""
    name = event.type.removeprefix("job:")
    if event.type == events.PROGRESS:
        name += str(event.data["progress"])
    if event.type == events.FAILED and event.data["final"]:
        name += "!"
    return name if event.attempt is None else f"{name}#{event.attempt}"


def attempt(n: int, outcome: str) -> list[str]:
    if outcome == "completed":
        return [f"active#{n}", f"progress90#{n}", f"completed#{n}"]
    return [f"active#{n}", f"{outcome}#{n}"]


@pytest.mark.parametrize("worker", ["phase1 worker", "rq worker"])
def test_event_sequences_of_completed_retried_and_dead_lettered_jobs(
    make_settings: Callable[..., Settings], processes: Processes, worker: str
) -> None:
    settings = make_settings(max_retries=2)
    ctx = build(settings)
    try:
        clean, flaky, doomed = make_plan(ctx), make_plan(ctx), make_plan(ctx)
        inject_fault(ctx.database_url, flaky, fail_times=2)
        inject_fault(ctx.database_url, doomed, fail_times=99)
        ids = [approval.approve(ctx, plan).job_id for plan in (clean, flaky, doomed)]
        if worker == "rq worker":
            processes.rq_worker(settings)
        else:
            processes.worker(settings)
        wait_until(lambda: settled(ctx, *ids), timeout=60, what="all three jobs settled")
        clean_events, flaky_events, doomed_events = (job_events(ctx, j) for j in ids)

        assert [label(e) for e in clean_events] == ["enqueued", *attempt(1, "completed")]
        assert [label(e) for e in flaky_events] == [
            "enqueued",
            *attempt(1, "failed"),
            *attempt(2, "failed"),
            *attempt(3, "completed"),
        ]
        assert [label(e) for e in doomed_events] == [
            "enqueued",
            *attempt(1, "failed"),
            *attempt(2, "failed"),
            *attempt(3, "failed!"),
        ]
        for event in clean_events + flaky_events + doomed_events:
            assert event.jobId in ids and event.planId in {str(clean), str(flaky), str(doomed)}
        # In lifecycle order in time as well as in the stream.
        for sequence in (clean_events, flaky_events, doomed_events):
            assert [e.at for e in sequence] == sorted(e.at for e in sequence)

        retry = flaky_events[2].data
        assert retry["final"] is False and retry["reason"] == "exception"
        assert "injected fault" in retry["error"]["message"]
        assert retry["nextRetryAt"].endswith("Z") and retry["nextRetryAt"] > flaky_events[2].at
        result = flaky_events[-1].data["result"]
        assert result["tasksCreated"] == 5 and len(result["taskIds"]) == 5
        final = doomed_events[-1].data
        assert final["final"] is True and "nextRetryAt" not in final
        assert "injected fault" in final["error"]["message"]
        entry = deadletter.get(ctx.redis, settings.queue, ids[2])
        assert entry is not None and entry["reason"] == "exception"
    finally:
        ctx.close()


def test_subscribers_see_the_lifecycle_and_a_raising_one_changes_nothing(
    ctx: Phase1, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-process RQ worker (the class `phase1 worker` runs), so the handlers registered
    here run inside the worker, as application code's would."""
    seen: list[Event] = []
    written_first: list[bool] = []

    def record(event: Event) -> None:
        seen.append(event)
        written = [e.id for e in job_events(ctx, event.jobId)]
        written_first.append(event.id in written)

    def broken(_event: Event) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = [events.subscribe("*", record), events.subscribe(events.ACTIVE, broken)]
    unsubscribe.append(events.subscribe(events.COMPLETED, broken))
    monkeypatch.setattr(context, "_process_context", (os.getpid(), ctx))
    try:
        job_id = approval.approve(ctx, make_plan(ctx)).job_id
        Phase1Worker([ctx.queue()], connection=ctx.redis).work(burst=True)
    finally:
        for stop in unsubscribe:
            stop()
    assert jobs.view(ctx, job_id).status == "completed"
    assert [label(e) for e in seen] == ["enqueued", *attempt(1, "completed")]
    assert written_first == [True] * len(seen)  # subscribers hear only of written events
    logged = [r for r in caplog.records if r.name == "phase1.jobs.events" and r.exc_info]
    assert [r.getMessage().rsplit(" ", 1)[1] for r in logged] == ["job:active", "job:completed"]


class Lines:
    """Lines of a subprocess's stdout, read by a thread so a test can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue_module.Queue[str] = queue_module.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)

    def next(self, timeout: float = 30) -> str:
        try:
            return self.queue.get(timeout=timeout)
        except queue_module.Empty:
            pytest.fail(f"no line from the subprocess within {timeout}s")


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PHASE1, *args], env=settings_env(settings), capture_output=True, text=True, timeout=60
    )


def test_phase1_events_follows_a_job_live_and_replays_it(ctx: Phase1, processes: Processes) -> None:
    settings = ctx.settings
    job_id = approval.approve(ctx, make_plan(ctx)).job_id
    other = approval.approve(ctx, make_plan(ctx)).job_id
    follower = subprocess.Popen(
        [PHASE1, "events", "--follow", "--json", "--job", job_id],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(follower.stdout)  # type: ignore[arg-type]
        first = json.loads(lines.next())
        assert first["type"] == "job:enqueued" and first["jobId"] == job_id
        # Only now does a worker start: what follows is printed live.
        processes.worker(settings)
        seen = [first]
        while seen[-1]["type"] != "job:completed":
            seen.append(json.loads(lines.next()))
        assert [e["type"] for e in seen] == [
            "job:enqueued",
            "job:active",
            "job:progress",
            "job:completed",
        ]
        assert all(set(e) == {"streamId", *Event.model_fields} for e in seen)
        assert follower.poll() is None  # still following
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0
    assert "Traceback" not in err and err.strip() == ""

    wait_until(lambda: settled(ctx, other), what="the other job completed")
    people = run_cli(settings, "events", "--job", job_id)
    assert people.returncode == 0, people.stderr
    rows = people.stdout.strip().splitlines()
    assert len(rows) == 4 and all(job_id in row for row in rows)
    assert "job:completed" in rows[-1] and "5 task(s) created" in rows[-1]
    everything = run_cli(settings, "events", "--json")
    documents = [json.loads(line) for line in everything.stdout.splitlines()]
    assert {d["jobId"] for d in documents} == {job_id, other} and len(documents) == 8
    after = run_cli(settings, "events", "--json", "--since", seen[-1]["streamId"])
    assert {json.loads(line)["jobId"] for line in after.stdout.splitlines()} <= {other}


def test_phase1_events_against_an_unreachable_redis_is_one_line(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    result = run_cli(broken, "events")
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr and "REDIS_URL" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
