"""The lane: a busy FastWorker's bookkeeping for a plain job in one Lua call per job.

One call (STEP) records the success of the job just run and starts the next: it takes the
next waiting job off the worker's queues and marks it started, with exactly the keys, fields,
registry entries and expiries RQ's own worker writes for those two steps (execution record,
`wip` registry, worker heartbeat and state, job hash; result stream, `finished` registry,
expiries, worker counters). Only the Python changes: no RQ Job save, Result or Execution
objects per job, one EVALSHA packed instead of about 40 commands.

The job STEP starts for next is started a moment before it runs, as RQ's own prepare step
starts a job a moment before its horse runs it. A worker told to stop in that moment puts
it back (UNSTART: as it was, at the front of its queue); a worker killed in it leaves a
started job that RQ's abandoned-job cleanup (and phase1's orphan sweep) deal with, as for
a worker killed right after RQ's prepare step.
"""

from __future__ import annotations

import hashlib
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

from rq.defaults import RQ_KEY_PREFIX, UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

# Key prefixes, from RQ's own templates.
WIP = StartedJobRegistry.key_template.format("")
FINISHED = FinishedJobRegistry.key_template.format("")
EXECUTIONS = ExecutionRegistry.key_template.format("")
EXECUTION = f"{RQ_KEY_PREFIX}:execution:"
RESULTS = Result.get_key("")  # type: ignore[no-untyped-call]
CONSTANTS = [WIP, FINISHED, EXECUTIONS, EXECUTION, RESULTS]
assert WORKER_EXECUTIONS_KEY_TEMPLATE.format("w") == f"{RQ_KEY_PREFIX}:worker:w:executions"

STEP = """
local WIP, FINISHED, EXECUTIONS, EXECUTION, RESULTS = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, now_f, stamp = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local wkey, name, wexec = ARGV[9], ARGV[10], ARGV[11]
local i = 12

-- The execution and `started` writes of RQ's prepare_execution and prepare_job_execution.
local function start(id, job, origin, ttl, intermediate, exec)
  local ekey = EXECUTION .. id .. ':' .. exec
  redis.call('HSET', ekey, 'id', exec, 'job_id', id, 'created_at', now_f,
             'last_heartbeat', now_f, 'worker_name', name)
  redis.call('EXPIRE', ekey, ttl)
  redis.call('ZADD', EXECUTIONS .. id, now + ttl + 60, exec)
  redis.call('EXPIRE', EXECUTIONS .. id, ttl + 60)
  redis.call('ZADD', WIP .. origin, now + ttl, id .. ':' .. exec)
  redis.call('SADD', wexec, id .. ':' .. exec)
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', stamp)
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', wexec, ttl)
  redis.call('HSET', job, 'last_heartbeat', stamp, 'status', 'started', 'started_at', stamp,
             'worker_name', name)
  redis.call('PERSIST', job)
  redis.call('LREM', intermediate, 1, id)
end

local dependents = -1
if ARGV[i] == '1' then
  -- RQ's success bookkeeping (handle_job_success, Result, cleanup_execution).
  local id, job, origin, exec = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local ttl, ended, began_f, ended_f = tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local value, working = ARGV[i + 9], ARGV[i + 10]
  local dependents_key, dependencies_key = ARGV[i + 11], ARGV[i + 12]
  i = i + 13
  dependents = redis.call('SCARD', dependents_key)
  redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', working)
  redis.call('HSET', job, 'status', 'finished', 'ended_at', ended, 'last_heartbeat', ended)
  local rkey = RESULTS .. id
  if value == '' then
    redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', name,
               'execution_id', exec, 'execution_started_at', began_f, 'execution_ended_at', ended_f)
  else
    redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', name,
               'return_value', value, 'execution_id', exec, 'execution_started_at', began_f,
               'execution_ended_at', ended_f)
  end
  redis.call('EXPIRE', rkey, ttl)
  redis.call('ZADD', FINISHED .. origin, now + ttl, id)
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', dependents_key, ttl)
  redis.call('EXPIRE', dependencies_key, ttl)
  redis.call('DEL', EXECUTION .. id .. ':' .. exec)
  redis.call('ZREM', WIP .. origin, id .. ':' .. exec)
  redis.call('ZREM', EXECUTIONS .. id, exec)
  redis.call('SREM', wexec, id .. ':' .. exec)
  redis.call('HSET', wkey, 'state', 'idle')
else
  i = i + 1
end

local mode = ARGV[i]
if mode == 'given' then
  -- Start a job the worker already holds.
  local id, job, origin, ttl = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  start(id, job, origin, ttl, ARGV[i + 5], ARGV[i + 6])
  return {dependents}
elseif mode == 'take' then
  -- Take the first waiting job of the queues (RQ's LMOVE to the intermediate list) and start it.
  local exec, job_prefix = ARGV[i + 1], ARGV[i + 2]
  local default_t, mult, extra, add, forever = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]),
    tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
  local n = tonumber(ARGV[i + 8])
  i = i + 9
  for q = 0, n - 1 do
    local key, intermediate = ARGV[i + 2 * q], ARGV[i + 2 * q + 1]
    while true do
      local id = redis.call('LMOVE', key, intermediate, 'LEFT', 'RIGHT')
      if not id then
        break
      end
      local job = job_prefix .. id
      local hash = redis.call('HGETALL', job)
      if #hash > 0 then
        local fields = {}
        for f = 1, #hash, 2 do
          fields[hash[f]] = hash[f + 1]
        end
        local t = tonumber(fields['timeout'])
        if t == nil or t == 0 then
          t = default_t
        end
        local ttl = forever
        if t >= 0 then
          ttl = t + math.max(extra, t * mult) + add
        end
        local pttl = redis.call('PTTL', job)
        start(id, job, fields['origin'] or '', ttl, intermediate, exec)
        return {dependents, key, id, hash, ttl, pttl}
      end
      redis.call('LREM', intermediate, 1, id)
    end
  end
end
return {dependents}
"""
STEP_SHA = hashlib.sha1(STEP.encode()).hexdigest()

# Put a job STEP started but the worker did not run back as it was, at the front of its
# queue (only while its execution is still this worker's).
UNSTART = """
local WIP, EXECUTIONS, EXECUTION = ARGV[1], ARGV[3], ARGV[4]
local id, job, origin, exec, queue = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local wexec, pttl = ARGV[11], tonumber(ARGV[12])
if redis.call('ZREM', WIP .. origin, id .. ':' .. exec) == 0 then
  return 0
end
redis.call('DEL', EXECUTION .. id .. ':' .. exec)
redis.call('ZREM', EXECUTIONS .. id, exec)
redis.call('SREM', wexec, id .. ':' .. exec)
for f = 13, #ARGV, 3 do  -- field, whether it was there, its value
  if ARGV[f + 1] == '1' then
    redis.call('HSET', job, ARGV[f], ARGV[f + 2])
  else
    redis.call('HDEL', job, ARGV[f])
  end
end
if pttl > 0 then
  redis.call('PEXPIRE', job, pttl)
end
redis.call('LPUSH', queue, id)
return 1
"""
# The job hash fields STEP's start changes, restored by UNSTART.
STARTED_FIELDS = (b"status", b"started_at", b"worker_name", b"last_heartbeat")


@dataclass
class Started:
    """A job STEP took and started for next: what UNSTART needs to put it back."""

    job_id: str
    origin: str
    execution: Execution
    queue_key: str
    ttl: int
    pttl: int
    before: dict[bytes, bytes]  # STARTED_FIELDS as they were


def header(now: float, stamp: str, worker_key: str, name: str, worker_executions: str) -> list[Any]:
    return [*CONSTANTS, int(now), repr(now), stamp, worker_key, name, worker_executions]


def encoded(value: Any, serializer: Any) -> str:
    """The return value as RQ's Result stores it ('' for None, which RQ leaves out)."""
    if value is None:
        return ""
    try:
        serialized = serializer.dumps(value)
    except Exception:
        serialized = serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return b64encode(serialized).decode()


def unstart_args(started: Started, job_key: str, worker_executions: str) -> list[Any]:
    args: list[Any] = [*CONSTANTS, started.job_id, job_key, started.origin]
    args += [started.execution.id, started.queue_key, worker_executions, started.pttl]
    for field in STARTED_FIELDS:
        value = started.before.get(field)
        args += [field, "0", ""] if value is None else [field, "1", value]
    return args
