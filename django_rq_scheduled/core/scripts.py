"""Lua scripts: every write of the scheduler that must be atomic, fenced by the leader lease, or both.

Key names and markers come in as KEYS and ARGV, or are formatted into the source from ``keys``.
"""

from __future__ import annotations

from .keys import BUFFERED_KEY, DONE_PREFIX, OUTCOMES_KEY, PAUSE_ALL, RUN_ENDED_PREFIX, WAKEUP_KEY

# A Lua fragment for the move scripts: writes put off to one command per command and key, values in the order they
# were put off (the same lists, sets and sorted sets as one by one, as long as nothing else touches those keys in
# between: the scripts write them before anything else looks). ``defer`` puts off, ``write_deferred`` writes.
DEFERRED_WRITES = """
local deferred_order, deferred = {}, {}
local function defer(command, key, value, second)  -- second: a ZADD's member after its score
  local name = command .. ' ' .. key
  local values = deferred[name]
  if not values then
    values = {command, key}
    deferred[name] = values
    deferred_order[#deferred_order + 1] = name
  end
  values[#values + 1] = value
  if second ~= nil then values[#values + 1] = second end
end
local function write_deferred()
  for _, name in ipairs(deferred_order) do
    local values = deferred[name]
    for first = 3, #values, 1000 do  -- an even chunk: a ZADD's score and member stay together
      redis.call(values[1], values[2], (unpack or table.unpack)(values, first, math.min(first + 999, #values)))
    end
  end
  deferred_order, deferred = {}, {}
end
"""

# Reads one batch of due jobs and the hash fields their moves are planned from, in one round trip.
# KEYS: schedule, buffered runs, pause. ARGV: job key prefix, latest due score, offset (due members to skip), batch
# size, how many due members of paused queues to step over at most, fields...
# Returns a flat list: 1 if a buffered run waits (overlap buffer_one; 0 otherwise, or if someone broke the key), how
# many due members of paused queues it stepped over (-1: every queue is paused, nothing is read), 1 if it stopped at
# that limit before the batch was full (more may follow) or 0, why the pause key cannot be read (nil if it can: one
# that is not a hash, written by someone else, pauses nothing), then for each due member it did not step over,
# earliest first: member, score, an error (nil, or why the job's key cannot be read: it then goes to the dead
# letters instead of blocking the batch), one value (or nil) per field.
# A member of a paused queue (its job's origin) stays in the schedule with its score: a read steps over it, so it
# never blocks the members of other queues behind it.
READ_DUE = f"""
local unpack = unpack or table.unpack
local fields = {{unpack(ARGV, 6)}}
local origin_at = 0
for f = 1, #fields do if fields[f] == 'origin' then origin_at = f end end
local paused, any, problem = {{}}, false, false
local waits = redis.pcall('HLEN', KEYS[2])
waits = (type(waits) == 'number' and waits > 0) and 1 or 0
local scopes = redis.pcall('HKEYS', KEYS[3])
if type(scopes) == 'table' and scopes['err'] then
  problem = scopes['err']
else
  for p = 1, #scopes do paused[scopes[p]] = true; any = true end
end
if paused['{PAUSE_ALL}'] then return {{waits, -1, 0, false}} end
local want, limit, position = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[3])
local out = {{waits, 0, 0, problem}}
local found, skipped = 0, 0
while found < want do
  local chunk = want - found
  if any and chunk < 100 then chunk = 100 end
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', position, chunk)
  for d = 1, #due, 2 do
    if found >= want or skipped >= limit then break end
    position = position + 1
    local values = redis.pcall('HMGET', ARGV[1] .. due[d], unpack(fields))
    local err = false
    if type(values) == 'table' and values['err'] then
      err = values['err']
      values = {{}}
    end
    if any and origin_at > 0 and values[origin_at] and paused[values[origin_at]] then
      skipped = skipped + 1
    else
      found = found + 1
      out[#out + 1] = due[d]
      out[#out + 1] = due[d + 1]
      out[#out + 1] = err
      for f = 1, #fields do out[#out + 1] = values[f] or false end
    end
  end
  if skipped >= limit then
    if found < want then out[3] = 1 end
    break
  end
  if #due < 2 * chunk then break end
end
out[2] = skipped
return out
"""

# Wakes a sleeping leader when a member is scheduled earlier than it means to look next (a Lua fragment).
# Needs: `score` (the new score), KEYS[next_wake] and KEYS[wakeup_list] substituted by the script using it.
_WAKE = """
local wake = redis.pcall('GET', {next_wake})  -- a hint only: a key someone broke must not fail the caller
if type(wake) == 'string' and tonumber(wake) and tonumber(score) < tonumber(wake) then
  redis.call('DEL', {wakeup_list})
  redis.call('RPUSH', {wakeup_list}, '1')
  redis.call('PEXPIRE', {wakeup_list}, 60000)
end
"""

# Adds or moves a member and wakes a sleeping scheduler if the new time is earlier than its wake-up time.
# KEYS: schedule, next wake-up, wake-up list. ARGV: member, score, and 'XX' to move an existing member only
# (rq-scheduler's change_execution_time, made atomic). Returns 0 if 'XX' and the member is absent.
SCHEDULE = (
    """
if ARGV[3] == 'XX' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local score = ARGV[2]
redis.call('ZADD', KEYS[1], score, ARGV[1])
"""
    + _WAKE.format(next_wake='KEYS[2]', wakeup_list='KEYS[3]')
    + """
return 1
"""
)

# Brings one row's template in line with the row, if, and only if, Redis still holds what the sync decided on: the
# same version (or none) and the same score (or none). Otherwise nothing is written and 0 is returned, so the
# caller reads again: a loop's move, or another sync, that landed after the read is never overwritten.
# KEYS: schedule, template hash, versions, next wake-up, wake-up list.
# ARGV: template id, version read ('' = none), score read ('' = none), then
#   'W', new version, new score, field, value, ...: write the template (a fresh hash) and schedule it; or
#   'R', 'keep' or '': unschedule it and forget its version ('keep': unless it is a done marker).
# A template hash is deleted only while it is still a scheduled template: a one-off's hash belongs to RQ once moved.
SYNC_TEMPLATE = (
    """
local unpack = unpack or table.unpack
local id = ARGV[1]
local version = redis.call('HGET', KEYS[3], id) or ''
local current = redis.call('ZSCORE', KEYS[1], id)
if version ~= ARGV[2] then return 0 end
if current then
  if ARGV[3] == '' or tonumber(current) ~= tonumber(ARGV[3]) then return 0 end
elseif ARGV[3] ~= '' then
  return 0
end
if ARGV[4] == 'W' then
  local score = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(ARGV, 7))
  redis.call('ZADD', KEYS[1], score, id)
  redis.call('HSET', KEYS[3], id, ARGV[5])
"""
    + _WAKE.format(next_wake='KEYS[4]', wakeup_list='KEYS[5]')
    + f"""
  return 1
end
redis.call('ZREM', KEYS[1], id)
local status = redis.pcall('HGET', KEYS[2], 'status')
if type(status) == 'table' or status == false or status == 'scheduled' then redis.call('DEL', KEYS[2]) end
if version ~= '' and (ARGV[5] ~= 'keep' or string.sub(version, 1, {len(DONE_PREFIX)}) ~= '{DONE_PREFIX}') then
  redis.call('HDEL', KEYS[3], id)
end
return 1
"""
)

# Puts a dead letter back into the schedule, only if it was one: any other id (a finished job's, say) must not
# run again. KEYS: schedule, next wake-up, wake-up list, dead letters. ARGV: member, score. Returns 1 if retried.
RETRY_DEAD_LETTER = (
    """
if redis.call('HDEL', KEYS[4], ARGV[1]) == 0 then return 0 end
local score = ARGV[2]
redis.call('ZADD', KEYS[1], score, ARGV[1])
"""
    + _WAKE.format(next_wake='KEYS[2]', wakeup_list='KEYS[3]')
    + """
return 1
"""
)

# Removes a member and, only if it was still scheduled, its job hash (a job already moved to a queue keeps its
# hash). KEYS: schedule, job hash, dead letters. ARGV: member. Returns 1 if it was scheduled or dead-lettered.
CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[3], ARGV[1])
if removed > 0 then redis.call('DEL', KEYS[2]) end
return removed > 0 and 1 or 0
"""

# Arms the wake-up: returns the earliest score and how many entries share it (or false), and records when the
# leader will look next. KEYS: schedule, next wake-up, wake-up list. ARGV: latest wake-up time (epoch s), expiry ms,
# and optionally a time up to which entries are left out (the due entries of paused queues, which must not wake the
# loop at once).
ARM_WAKEUP = """
local first
if ARGV[3] then
  first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
else
  first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
end
local wake = tonumber(ARGV[1])
if first[2] and tonumber(first[2]) < wake then wake = tonumber(first[2]) end
redis.call('SET', KEYS[2], tostring(wake), 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
if not first[2] then return false end
return {first[2], redis.call('ZCOUNT', KEYS[1], first[2], first[2])}
"""

# Renews the lease if we still own it. KEYS: lock. ARGV: token, ttl ms. Returns 1 if renewed.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Releases the lease only if we own it. KEYS: lock. ARGV: token.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Drops the run records a reader has handled, unless someone else did first. KEYS: runs. ARGV: first record read,
# count. Records are only ever appended, so the head is unchanged unless another reader trimmed it.
TRIM_IF_HEAD = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LTRIM', KEYS[1], ARGV[2], -1)
  return 1
end
return 0
"""

CANCEL_QUEUED = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 then
  redis.call('HSET', KEYS[2], 'status', 'canceled')
  return 1
end
return 0
"""
"""Takes a job out of its queue (KEYS[1]) and marks its hash (KEYS[2]) canceled, only if it was still waiting."""

# A worker's record of a run's end (``capture``), and, if a buffered occurrence of the run's schedule waits for this
# run (overlap buffer_one), the news that it ended and a wake-up for the leader, which enqueues the buffered one
# (RQ writes the run's final status only after its callbacks). KEYS: outcomes, buffered, wake-up list.
# ARGV: record, template id ('' = none), run id. The keys of the buffer are a hint: one someone broke fails nothing.
APPEND_OUTCOME = f"""
redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.pcall('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
  redis.call('HSET', KEYS[2], ARGV[2], '{RUN_ENDED_PREFIX}' .. ARGV[3])
  redis.pcall('DEL', KEYS[3])
  redis.pcall('RPUSH', KEYS[3], '1')
  redis.pcall('PEXPIRE', KEYS[3], 60000)
end
return 1
"""
APPEND_OUTCOME_KEYS = (OUTCOMES_KEY, BUFFERED_KEY, WAKEUP_KEY)

# Pauses one scope (every queue, or one queue) of this Redis server. KEYS: pause. ARGV: scope, record (JSON),
# reason ('' = none given). A scope already paused keeps its record (who paused it, and since when); a new reason
# replaces the old one. A record that is not one of ours (written by someone else) is replaced by the new one.
# Returns 1 if the scope was not paused before, else 0.
PAUSE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
local ok, record = pcall(cjson.decode, old)
if not ok or type(record) ~= 'table' or type(record['by']) ~= 'string' or type(record['at']) ~= 'number' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif ARGV[3] ~= '' then
  record['reason'] = ARGV[3]
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
end
return 0
"""

# Enqueues a run of a past slot (a backfill) unless its job hash exists: it ran, or another backfill enqueued it.
# KEYS: job hash, queue, set of queues. ARGV: job id, push command, then field, value, ... Returns 1 if enqueued.
ENQUEUE_ONCE = """
local unpack = unpack or table.unpack
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call(ARGV[2], KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[2])
return 1
"""

# KEYS[1]: the reconciliation state; ARGV[1]: the epoch the pass started from, then field/value pairs. Written only if
# the state is still that epoch's: a flush or a full pass meanwhile must not be covered by this pass's watermark.
SAVE_RECONCILE_STATE = """
local unpack = unpack or table.unpack
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
