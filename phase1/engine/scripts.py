"""Every Lua script of the engine (TAKE, HAND_BACK, STEP, UNSTART, PUT_BACK) and the values
they read and write, in RQ's own formats. Kept in one module so that what the engine runs in
Redis can be read (and listed: ALL) in one place."""

from __future__ import annotations

import hashlib
from base64 import b64encode
from datetime import UTC, datetime
from typing import Any

from rq.defaults import RQ_KEY_PREFIX, UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.executions import ExecutionRegistry
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

# Key prefixes, from RQ's own templates.
WIP = StartedJobRegistry.key_template.format("")
FINISHED = FinishedJobRegistry.key_template.format("")
EXECUTIONS = ExecutionRegistry.key_template.format("")
EXECUTION = f"{RQ_KEY_PREFIX}:execution:"
RESULTS = Result.get_key("")  # type: ignore[no-untyped-call]
assert not any(c in k for k in (WIP, FINISHED, EXECUTIONS, EXECUTION, RESULTS) for c in "'\\")
_PREFIXES = (
    f"local WIP, FINISHED, EXECUTIONS, EXECUTION, RESULTS = '{WIP}', '{FINISHED}', "
    f"'{EXECUTIONS}', '{EXECUTION}', '{RESULTS}'\n"
)

STEP = (
    _PREFIXES
    + """
local now, now_f, stamp = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local wkey, name, wexec = ARGV[4], ARGV[5], ARGV[6]
local i = 7

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

-- 1. 'finish': RQ's success bookkeeping (handle_job_success, Result, cleanup_execution).
-- 'refinish' (a STEP run again after its answer was lost): only if it did not run, i.e.
-- while the job's execution is still in the started registry.
local dependents = -1
local again = ARGV[i] == 'refinish'
if ARGV[i] == 'finish' or (again and redis.call('ZSCORE', WIP .. ARGV[i + 3],
                                                 ARGV[i + 1] .. ':' .. ARGV[i + 4])) then
  local id, job, origin, exec = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local ttl, ended, began_f, ended_f = tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local value, working = ARGV[i + 9], ARGV[i + 10]
  local dependents_key, dependencies_key = ARGV[i + 11], ARGV[i + 12]
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
  if dependents > 0 then  -- a set with no members does not exist: nothing to expire
    redis.call('EXPIRE', dependents_key, ttl)
  end
  if dependencies_key ~= '' then  -- '': the job has no dependencies (no such set)
    redis.call('EXPIRE', dependencies_key, ttl)
  end
  redis.call('DEL', EXECUTION .. id .. ':' .. exec)
  redis.call('ZREM', WIP .. origin, id .. ':' .. exec)
  redis.call('ZREM', EXECUTIONS .. id, exec)
  redis.call('SREM', wexec, id .. ':' .. exec)
end
if ARGV[i] == 'finish' or again then
  i = i + 12
end
local finished = dependents >= 0
i = i + 1

-- 2. 'given': start a job the worker holds. 'regiven' (run again): only if it is still in
-- its intermediate list (else the lost STEP started it).
local started = false
if ARGV[i] == 'given' or ARGV[i] == 'regiven' then
  if ARGV[i] == 'given' or redis.call('LPOS', ARGV[i + 5], ARGV[i + 1]) then
    start(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6])
  end
  started = true
  i = i + 6
end
i = i + 1

-- 3. 'next': take the first waiting job of the queues (RQ's LMOVE to the intermediate list)
-- and start it (`take`, unless one was given); then take up to `peeks` jobs after it without
-- starting them (only while a job known to be quick runs, so they wait for no more than that).
local taken, peeked = false, {}
if ARGV[i] == 'next' then
  local exec, take, peeks, job_prefix = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
  local default_t, mult, extra, add, forever = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]),
    tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9])
  local n, base, q = tonumber(ARGV[i + 10]), i + 11, 0
  local function waiting()
    while q < n do
      local key, intermediate = ARGV[base + 2 * q], ARGV[base + 2 * q + 1]
      local id = redis.call('LMOVE', key, intermediate, 'LEFT', 'RIGHT')
      if id then
        local hash = redis.call('HGETALL', job_prefix .. id)
        if #hash > 0 then
          return key, intermediate, id, hash
        end
        redis.call('LREM', intermediate, 1, id)  -- its hash is gone: skipped, as RQ does
      else
        q = q + 1
      end
    end
    return nil
  end
  if take == '1' and not started then
    local key, intermediate, id, hash = waiting()
    if key then
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
      local pttl = redis.call('PTTL', job_prefix .. id)
      start(id, job_prefix .. id, fields['origin'] or '', ttl, intermediate, exec)
      taken = {key, id, hash, pttl}
      started = true
    end
  end
  if started or take == '0' then
    for _ = 1, peeks do
      local key, intermediate, id, hash = waiting()
      if not key then
        break
      end
      peeked[#peeked + 1] = {key, id, hash, redis.call('PTTL', job_prefix .. id)}
    end
  end
end
if finished and not started then  -- a job started after it leaves the worker busy
  redis.call('HSET', wkey, 'state', 'idle')
end
return {dependents, taken, peeked}
"""
)
STEP_SHA = hashlib.sha1(STEP.encode()).hexdigest()

# STEP's arguments, in parts: a header of 6; 'finish' (or 'refinish') and 12 more, or 'none';
# 'given' (or 'regiven') and 6 more (id, key, origin, ttl, intermediate list, execution id),
# or 'none'; 'next' and its fields (execution id, take, peeks, ...), or '-'.
_HEADER_ARGS, _FINISH_ARGS, GIVEN_ARGS = 6, 13, 7


def given_at(args: list[Any]) -> int:
    """Where the 'given' part (or its 'none') starts in STEP's arguments."""
    finish = args[_HEADER_ARGS] in ("finish", "refinish")
    return _HEADER_ARGS + (_FINISH_ARGS if finish else 1)


def next_at(args: list[Any]) -> int:
    """Where the 'next' part (or its '-') starts in STEP's arguments."""
    at = given_at(args)
    return at + (GIVEN_ARGS if args[at] in ("given", "regiven") else 1)


def given_of(args: list[Any]) -> tuple[str, str] | None:
    """The job a STEP with these arguments starts, and its intermediate list; None if none."""
    at = given_at(args)  # 'given', id, key, origin, ttl, intermediate list, execution id
    return (args[at + 1], args[at + 5]) if args[at] in ("given", "regiven") else None


def replayed(args: list[Any]) -> list[Any]:
    """A STEP's arguments to run it again when its answer was lost with its connection: its
    finish and its start each only where the lost one did not do them ('refinish',
    'regiven'), and no jobs taken (which ones the lost one took is unknown: they stay in
    their intermediate list, for the maintenance pass)."""
    again = list(args)
    if again[_HEADER_ARGS] == "finish":
        again[_HEADER_ARGS] = "refinish"
    at = given_at(again)
    if again[at] == "given":
        again[at] = "regiven"
    return [*again[: next_at(again)], "-"]


def peeks_of(args: list[Any]) -> int:
    """How many jobs a STEP with these arguments takes without starting them."""
    at = next_at(args)
    return int(args[at + 3]) if args[at] == "next" else 0


# Put a job STEP started but the worker did not run back as it was, at the front of its
# queue (only while its execution is still this worker's).
UNSTART = (
    _PREFIXES
    + """
local id, job, origin, exec, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local wexec, pttl = ARGV[6], tonumber(ARGV[7])
if redis.call('ZREM', WIP .. origin, id .. ':' .. exec) == 0 then
  return 0
end
redis.call('DEL', EXECUTION .. id .. ':' .. exec)
redis.call('ZREM', EXECUTIONS .. id, exec)
redis.call('SREM', wexec, id .. ':' .. exec)
for f = 8, #ARGV, 3 do  -- field, whether it was there, its value
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
)
# The job hash fields STEP's start changes, restored by UNSTART.
STARTED_FIELDS = (b"status", b"started_at", b"worker_name", b"last_heartbeat")

# Take the first waiting job of the queues (in order) and read its hash, in one call. The id
# moves to its queue's intermediate list (RQ's LMOVE, for every queue, not only when there is
# one): a worker that dies before it marks the job started leaves it where the maintenance
# pass finds it and puts it back (phase1.engine.leftbehind), instead of nowhere. Ids whose hash
# is gone are dropped, as RQ skips them.
TAKE = """
-- KEYS: queue keys, in order; ARGV[1]: job key prefix; ARGV[1 + i]: KEYS[i]'s intermediate list
for i, key in ipairs(KEYS) do
  local intermediate = ARGV[i + 1]
  while true do
    local id = redis.call('LMOVE', key, intermediate, 'LEFT', 'RIGHT')
    if not id then
      break
    end
    local hash = redis.call('HGETALL', ARGV[1] .. id)
    if #hash > 0 then
      return {key, id, hash}
    end
    redis.call('LREM', intermediate, 1, id)
  end
end
return false
"""
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()

# Put a job taken but not started back at the front of its queue.
HAND_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


# Put a left-behind job back, if it is still in the list and still waiting to run; a job
# already back on its queue (put there by someone else) is only taken off the list. A job in
# any other state is taken off the list too: it is not waiting to run, and RQ's registries
# (or the orphan sweep) look after it.
# KEYS: intermediate list, queue, job hash, sightings hash, RQ's first-seen key; ARGV: job id
PUT_BACK = """
local id = ARGV[1]
redis.call('HDEL', KEYS[4], id)
redis.call('DEL', KEYS[5])
if redis.call('LREM', KEYS[1], 1, id) == 0 then
  return 0
end
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' or redis.call('LPOS', KEYS[2], id) then
  return -1
end
redis.call('LPUSH', KEYS[2], id)
return 1
"""

# Every script the engine runs, by name (a server the engine never ran on holds none of them).
ALL = {"TAKE": TAKE, "HAND_BACK": HAND_BACK, "STEP": STEP, "UNSTART": UNSTART, "PUT_BACK": PUT_BACK}


def encoded(value: Any, serializer: Any) -> str:
    """The return value as RQ's Result stores it ('' for None, which RQ leaves out)."""
    if value is None:
        return ""
    try:
        serialized = serializer.dumps(value)
    except Exception:
        serialized = serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return b64encode(serialized).decode()


def stamp(moment: float) -> str:
    """RQ's utcformat of a unix time (2026-11-28T18:32:10.410070Z), without strftime."""
    return utc(datetime.fromtimestamp(moment, UTC))


def utc(when: datetime) -> str:
    """RQ's utcformat of an aware UTC datetime, without strftime."""
    return when.isoformat(timespec="microseconds")[:-6] + "Z"
