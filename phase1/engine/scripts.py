"""Every Lua script of the engine (TAKE, HAND_BACK, STEP, UNSTART, PUT_BACK), writing RQ's
keys in RQ's own formats, in one module so that what the engine runs in Redis can be read
(and listed: ALL) in one place. STEP's arguments are typed in phase1.engine.stepargs."""

from __future__ import annotations

import hashlib

from rq.defaults import RQ_KEY_PREFIX
from rq.executions import ExecutionRegistry
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

from phase1.engine.stepargs import FINISH, GIVEN, HEADER, NEXT

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


def _lua_names(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(f"'{n}'" for n in names) + "}"


# STEP's arguments are sections, each a tag and its fields ('-': absent), built and named by
# phase1.engine.stepargs: Header (always), then Finish, Given and Next.
STEP = (
    _PREFIXES
    + f"""
local HEADER, FINISH, GIVEN, NEXT = {_lua_names(HEADER)}, {_lua_names(FINISH)},
  {_lua_names(GIVEN)}, {_lua_names(NEXT)}
"""
    + """
-- The sections of ARGV, in order: a tag ('-': absent) and its fields, by name.
local i = 1
local function section(names)
  local tag = ARGV[i]
  if tag == '-' then
    i = i + 1
    return nil
  end
  local s = {tag = tag}
  for k = 1, #names do
    s[names[k]] = ARGV[i + k]
  end
  i = i + 1 + #names
  return s
end
local H = section(HEADER)
local F = section(FINISH)
local G = section(GIVEN)
local N = section(NEXT)
local now, now_f, stamp = tonumber(H.now), H.now_f, H.stamp
local wkey, name, wexec = H.wkey, H.name, H.wexec

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

-- 1. Finish: RQ's success bookkeeping (handle_job_success, Result, cleanup_execution).
-- 'refinish' (a STEP run again after its answer was lost): only if it did not run, i.e.
-- while the job's execution is still in the started registry.
local dependents = -1
if F and (F.tag == 'finish' or redis.call('ZSCORE', WIP .. F.origin, F.id .. ':' .. F.exec)) then
  local id, job, origin, exec = F.id, F.job, F.origin, F.exec
  local ttl = tonumber(F.ttl)
  dependents = redis.call('SCARD', F.dependents_key)
  redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', F.working)
  redis.call('HSET', job, 'status', 'finished', 'ended_at', F.ended, 'last_heartbeat', F.ended)
  local rkey = RESULTS .. id
  if F.value == '' then
    redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', name,
               'execution_id', exec, 'execution_started_at', F.began_f,
               'execution_ended_at', F.ended_f)
  else
    redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', name,
               'return_value', F.value, 'execution_id', exec,
               'execution_started_at', F.began_f, 'execution_ended_at', F.ended_f)
  end
  redis.call('EXPIRE', rkey, ttl)
  redis.call('ZADD', FINISHED .. origin, now + ttl, id)
  redis.call('EXPIRE', job, ttl)
  if dependents > 0 then  -- a set with no members does not exist: nothing to expire
    redis.call('EXPIRE', F.dependents_key, ttl)
  end
  if F.dependencies_key ~= '' then  -- '': the job has no dependencies (no such set)
    redis.call('EXPIRE', F.dependencies_key, ttl)
  end
  redis.call('DEL', EXECUTION .. id .. ':' .. exec)
  redis.call('ZREM', WIP .. origin, id .. ':' .. exec)
  redis.call('ZREM', EXECUTIONS .. id, exec)
  redis.call('SREM', wexec, id .. ':' .. exec)
end
local finished = dependents >= 0

-- 2. Given: start a job the worker holds. 'regiven' (run again): only if it is still in
-- its intermediate list (else the lost STEP started it).
local started = false
if G then
  if G.tag == 'given' or redis.call('LPOS', G.intermediate, G.id) then
    start(G.id, G.job, G.origin, tonumber(G.ttl), G.intermediate, G.exec)
  end
  started = true
end

-- 3. Next: take the first waiting job of the queues (RQ's LMOVE to the intermediate list)
-- and start it (`take`, unless one was given); then take up to `peeks` jobs after it without
-- starting them (only while a job known to be quick runs, so they wait for no more than that).
local taken, peeked = false, {}
if N then
  local exec, take, peeks, job_prefix = N.exec, tonumber(N.take), tonumber(N.peeks), N.job_prefix
  local default_t, mult, extra = tonumber(N.default_t), tonumber(N.mult), tonumber(N.extra)
  local add, forever = tonumber(N.add), tonumber(N.forever)
  local n, base, q = tonumber(N.n), i, 0
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
  if take == 1 and not started then
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
  if started or take == 0 then
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
