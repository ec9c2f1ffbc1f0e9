"""phase1's fast worker and a plain `rq worker` on one queue: RQ's data model stays RQ's."""

from __future__ import annotations

from collections import Counter

from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.worker import Worker
from support import Processes, wait_until

from phase1.context import Phase1

JOBS = 300


def test_phase1_worker_and_plain_rq_worker_share_a_queue(ctx: Phase1, processes: Processes) -> None:
    queue = ctx.queue()
    processes.rq_worker(ctx.settings, "--worker-class", "rq.SimpleWorker", "--name", "plain")
    processes.worker(ctx.settings, "--name", "fast")  # two queues: LPOP in its dequeue
    # One queue: RQ's LMOVE through the intermediate queue, in the fast dequeue too.
    processes.rq_worker(
        ctx.settings, "--worker-class", "phase1.worker.Phase1Worker", "--name", "fast-single"
    )
    # Both kinds of worker register as RQ's own do. The jobs come once all three have (in CI,
    # two workers drained them before the third had started).
    wait_until(
        lambda: {"plain", "fast", "fast-single"} <= {w.name for w in Worker.all(queue=queue)},
        timeout=60,
        what="all three workers registered",
    )
    job_ids = [queue.enqueue("bench.jobs.noop", result_ttl=600).id for _ in range(JOBS)]
    finished = FinishedJobRegistry(queue=queue)
    wait_until(lambda: finished.count == JOBS, timeout=120, what=f"{JOBS} jobs finished")
    workers = {w.name: w for w in Worker.all(queue=queue)}

    # Each job ran exactly once (one result each), finished, by one of the two workers.
    ran_by: Counter[str] = Counter()
    for job_id in job_ids:
        job = Job.fetch(job_id, connection=ctx.redis, serializer=queue.serializer)
        assert job.get_status() == JobStatus.FINISHED
        assert len(job.results()) == 1, f"job {job_id} ran {len(job.results())} times"
        assert job.started_at is not None and job.ended_at is not None
        assert job.last_heartbeat is not None
        ran_by[str(job.worker_name)] += 1
    assert sum(ran_by.values()) == JOBS
    assert ran_by["fast"] + ran_by["fast-single"] > 0, ran_by

    # RQ's registries and counters add up (what `rq info` reads).
    assert queue.count == 0
    assert ctx.redis.llen(IntermediateQueue(queue.key, ctx.redis).key) == 0
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []
    assert FailedJobRegistry(queue=queue).count == 0
    assert sorted(finished.get_job_ids()) == sorted(job_ids)
    # Each worker counted its successes in the same transaction that finished the job.
    counts = {w.name: w.successful_job_count for w in Worker.all(queue=queue)}
    assert all(counts[name] == ran_by[name] for name in ("plain", "fast", "fast-single"))
    fast = Worker.find_by_key(workers["fast"].key, connection=ctx.redis)
    assert fast is not None and fast.successful_job_count == ran_by["fast"]
    assert fast.get_state() == "idle"
    assert fast.get_current_job_id() is None
    assert fast.last_heartbeat is not None
