"""Experiment for bench/PLAN.md: how fast can a worker loop go that keeps RQ's data model but
does its bookkeeping in one round trip per batch of jobs?

One Lua call finishes the previous batch (wip registry → finished registry, job hash
`finished` with `ended_at`, a result entry in `rq:results:<id>`, expiries, the worker's
counters) and takes the next batch (queue → wip registry with an execution id, job hash
`started`, `worker_name`, `started_at`, PERSIST), returning the jobs' hashes. Each job is
rebuilt with RQ's own `Job.restore` and run under RQ's SIGALRM death penalty. A prototype to
measure the ceiling, not the worker: no failure path, retries, callbacks, scheduler or
heartbeat thread here.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import utcformat

STEP = """
local queue, wip, finished, worker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, stamp, name, ttl, take = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local n_done = tonumber(ARGV[6])
local i = 7
for _ = 1, n_done do
  local id, exec, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local job = 'rq:job:' .. id
  redis.call('ZREM', wip, id .. ':' .. exec)
  redis.call('ZADD', finished, now + tonumber(ttl), id)
  redis.call('HSET', job, 'status', 'finished', 'ended_at', stamp, 'last_heartbeat', stamp)
  redis.call('EXPIRE', job, ttl)
  redis.call('XADD', 'rq:results:' .. id, 'MAXLEN', '10', '*', 'type', '1',
             'return_value', value, 'created_at', stamp)
  redis.call('EXPIRE', 'rq:results:' .. id, ttl)
  redis.call('DEL', 'rq:execution:' .. id .. ':' .. exec)
end
if n_done > 0 then
  redis.call('HINCRBY', worker, 'successful_job_count', n_done)
end
local out = {}
for _ = 1, take do
  local id = redis.call('LPOP', queue)
  if not id then break end
  local exec = ARGV[i]
  i = i + 1
  local job = 'rq:job:' .. id
  redis.call('ZADD', wip, now + 70, id .. ':' .. exec)
  redis.call('HSET', job, 'status', 'started', 'started_at', stamp, 'worker_name', name,
             'last_heartbeat', stamp)
  redis.call('PERSIST', job)
  redis.call('HSET', 'rq:execution:' .. id .. ':' .. exec, 'job_id', id, 'created_at', stamp)
  table.insert(out, id)
  table.insert(out, exec)
  table.insert(out, redis.call('HGETALL', job))
end
return out
"""


def run(redis_url: str, queue: str, *, batch: int, seconds: float) -> dict[str, Any]:
    """Drain `queue` for up to `seconds`; jobs done, round trips, jobs/s."""
    redis = Redis.from_url(redis_url)
    step = redis.register_script(STEP)
    name = f"fastloop-{uuid.uuid4().hex[:6]}"
    keys = [f"rq:queue:{queue}", f"rq:wip:{queue}", f"rq:finished:{queue}", f"rq:worker:{name}"]
    done: list[str] = []
    jobs = trips = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        stamp = utcformat(datetime.now(UTC))
        args: list[Any] = [time.time(), stamp, name, 3600, batch, len(done) // 3, *done]
        args += [uuid.uuid4().hex[:8] for _ in range(batch)]
        answer = step(keys=keys, args=args)
        trips += 1
        done = []
        if not answer:
            break
        for index in range(0, len(answer), 3):
            job_id, exec_id, flat = answer[index].decode(), answer[index + 1], answer[index + 2]
            job = Job(job_id, connection=redis, serializer=JSONSerializer)
            job.restore(dict(zip(flat[::2], flat[1::2], strict=True)))
            with UnixSignalDeathPenalty(job.timeout or 180, Exception, job_id=job_id):
                value = job.func(*job.args, **job.kwargs)
            done += [job_id, exec_id, JSONSerializer.dumps(value)]
            jobs += 1
    if done:  # finish the last batch
        stamp = utcformat(datetime.now(UTC))
        step(keys=keys, args=[time.time(), stamp, name, 3600, 0, len(done) // 3, *done])
        trips += 1
    elapsed = time.perf_counter() - began
    redis.close()
    return {"jobs": jobs, "round_trips": trips, "rate": jobs / elapsed, "batch": batch}
