"""Lua scripts: every write of the scheduler that must be atomic, fenced by the leader lease, or both.

Key names and markers come in as KEYS and ARGV, or are formatted into the source from ``keys``.
"""

from __future__ import annotations

from . import keys
from .keys import BUFFERED_KEY, DONE_PREFIX, OUTCOMES_KEY, PAUSE_ALL, RUN_ENDED_PREFIX, WAKEUP_KEY
from .overlap import EXPECT_COMMAND, REPLACE_COMMAND

# Moves one batch of due jobs. KEYS: lock, schedule, pause.
# ARGV: token (empty for an explicit API call rather than the loop), entry count, enqueued_at, job key prefix,
# the set of queue keys ('rq:queues'), then per entry: member, expected score ('*' = unguarded), and either
#   'O', queue key, push command, timeout or '', ttl or '': a plain one-off job (the hot path, kept compact), or
#   'G' or 'H', command count, then per command: arg count, args...: any other move, spelled out by the planner;
#   'H' only if the member's job hash still exists.
# The whole batch is refused unless the lock still holds our token (a deposed leader cannot enqueue). An entry
# is applied only if its member still has the score we planned with, so a job cancelled or rescheduled by a
# producer after we read it is left alone. Key types are checked before any write of an entry (a one-off job's
# own hash by writing it first, with pcall), so corrupt data under a key fails that entry alone (reported back
# for dead-lettering) and never half-applies it. A job hash deleted since it was read is reported as MISSING and
# never re-created as a ghost with only the fields an enqueue writes.
# One step is no Redis command: REPLACE_COMMAND (overlap cancel_other), with queue key, job key, job id, runs key,
# canceled record ('' = none), worker channel prefix, stop payload. A previous run still in its queue is taken out
# and marked canceled (its record appended); one a worker runs is sent RQ's stop-job command; one that ended
# meanwhile is left alone. Another is a condition: EXPECT_COMMAND, key, field, value: the entry is applied only
# if that hash field still holds that value (0 otherwise, as for a changed score). COPY_COMMAND, template key,
# occurrence key, digest: the occurrence gets the template's inherited fields, if the template's planning fields
# still have that digest (0 otherwise); ``occurrence_copy.MOVE`` is this script with its field lists formatted in.
# Out of memory, Redis refuses only the first write of a script (later ones would leave it half done): that write
# fails the whole call before anything is written, so the caller retries it later; no job is ever dead-lettered
# for it.
# The loop's batch (fenced) honours the pause as it stands when the batch is applied: an entry of a paused queue
# (its job's origin), or every entry while every queue is paused, is left alone (0), due, with its score. A pause
# key that is not a hash pauses nothing, as in READ_DUE.
MOVE = (
    """
local unpack = unpack or table.unpack
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local enqueued_at, job_prefix, queues_key = ARGV[3], ARGV[4], ARGV[5]
local paused, pause_any = {}, false
if ARGV[1] ~= '' then
  local scopes = redis.pcall('HKEYS', KEYS[3])
  if type(scopes) == 'table' and not scopes['err'] then
    for p = 1, #scopes do paused[scopes[p]] = true; pause_any = true end
  end
end
local function is_paused(member)
  if not pause_any then return false end
  if paused['{PAUSE_ALL}'] then return true end
  local origin = redis.pcall('HGET', job_prefix .. member, 'origin')
  return type(origin) == 'string' and paused[origin] == true
end
local expected_type = {
  HSET = 'hash', HDEL = 'hash', RPUSH = 'list', LPUSH = 'list', SADD = 'set', ZADD = 'zset', ZREM = 'zset',
  REPLACE_COMMAND = 'list', COPY_COMMAND = 'hash'
}
local checked = {}  -- key -> type, so shared keys (queues, the schedule) are looked at once per batch
local registered = {}  -- queue keys already added to the set of queues in this batch
local function type_of(key)
  local have = checked[key]
  if not have then
    have = redis.call('TYPE', key)
    if type(have) == 'table' then have = have['ok'] end
    if have ~= 'none' then checked[key] = have end
  end
  return have
end
-- A plain one-off job: its hash is written first, with pcall, so a job key of the wrong type fails before
-- anything of the entry is written; the shared keys' types are checked once per batch.
local function one_off(member, queue_key, push, timeout, ttl)
  local job_key = job_prefix .. member
  local have = type_of(queue_key)
  if have ~= 'none' and have ~= 'list' then return 'WRONGTYPE ' .. queue_key .. ' holds a ' .. have end
  have = type_of(KEYS[2])
  if have ~= 'none' and have ~= 'zset' then return 'WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. have end
  local written, fields
  if timeout ~= '' then
    fields = 3
    written = redis.pcall('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'timeout', timeout)
  else
    fields = 2
    written = redis.pcall('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
  end
  if type(written) == 'table' and written['err'] then
    local err = tostring(written['err'])
    if string.find(err, 'WRONGTYPE', 1, true) then return 'WRONGTYPE ' .. job_key .. ' is not a hash' end
    return {failed = err}  -- e.g. OOM: the call ends here, and nothing of it has been written
  end
  -- Every field new and nothing else there: the hash did not exist (a job hash always holds its payload).
  if written == fields and redis.call('HLEN', job_key) == fields then
    redis.call('DEL', job_key)
    return 'MISSING ' .. job_key .. ' was deleted before it was moved'
  end
  redis.call('ZREM', KEYS[2], member)
  redis.call(push, queue_key, member)
  if not registered[queue_key] then
    redis.call('SADD', queues_key, queue_key)
    registered[queue_key] = true
  end
  if ttl ~= '' then redis.call('EXPIRE', job_key, ttl) end
  return 1
end
local function replace_run(queue_key, job_key, job_id, runs_key, record, channel_prefix, stop)
  if redis.call('LREM', queue_key, 0, job_id) > 0 then
    redis.pcall('HSET', job_key, 'status', 'canceled')
    if record ~= '' then redis.call('RPUSH', runs_key, record) end
    return
  end
  local state = redis.pcall('HMGET', job_key, 'status', 'worker_name')
  if type(state) == 'table' and state[1] == 'started' and state[2] then
    redis.call('PUBLISH', channel_prefix .. state[2], stop)
  end
end
-- COPY_COMMAND (see occurrence_copy): a template's inherited fields copied into its occurrence, guarded by a
-- digest of the fields the client planned and vetted the move from.
local copy_planning = {COPY_PLANNING}
local copy_skipped = {}
for _, name in ipairs({COPY_SKIPPED}) do copy_skipped[name] = true end
local copied = {}  -- template key -> its fields, as the check of the entry being moved read them
local function planning_digest(key)
  if not redis.sha1hex then return '' end  -- never equal to a digest: nothing is copied unchecked
  local all = redis.call('HGETALL', key)
  copied[key] = all
  local by_name = {}
  for f = 1, #all, 2 do by_name[all[f]] = all[f + 1] end
  local parts = {}
  for f = 1, #copy_planning do
    local value = by_name[copy_planning[f]]
    if value and value ~= '' then parts[f] = #value .. ':' .. value else parts[f] = '~' end
  end
  return redis.sha1hex(table.concat(parts, '|'))
end
local function copy_template(from, to)
  local all = copied[from] or redis.call('HGETALL', from)
  local chunk = {}
  for f = 1, #all, 2 do
    local name = all[f]
    local first = string.sub(name, 1, 1)
    if not copy_skipped[name] and first ~= '~' and first ~= '^' then
      chunk[#chunk + 1] = name
      chunk[#chunk + 1] = all[f + 1]
      if #chunk >= 200 then redis.call('HSET', to, unpack(chunk)); chunk = {} end
    end
  end
  if #chunk > 0 then redis.call('HSET', to, unpack(chunk)) end
end
local function still_scheduled(member, score)
  if score == '*' then return true end
  local current = redis.call('ZSCORE', KEYS[2], member)
  return current and tonumber(current) == tonumber(score)
end
local results = {}
local i = 6
for e = 1, tonumber(ARGV[2]) do
  local member, score, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status = 0
  if kind == 'O' then
    if still_scheduled(member, score) and not is_paused(member) then
      status = one_off(member, ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
      if type(status) == 'table' then return redis.error_reply(status.failed) end
    end
    i = i + 7
  else
    local ncmds = tonumber(ARGV[i + 3])
    i = i + 4
    local cmds = {}
    for c = 1, ncmds do
      local nargs = tonumber(ARGV[i])
      cmds[c] = {unpack(ARGV, i + 1, i + nargs)}
      i = i + 1 + nargs
    end
    copied = {}
    if still_scheduled(member, score) and not is_paused(member) then
      status = 1
      local own, first = job_prefix .. member, cmds[1]
      -- An expectation met on the member's own hash (a field holding a value) proves it exists and is a hash.
      local vouched = first and first[1] == 'EXPECT_COMMAND' and first[2] == own and first[4] ~= ''
        and redis.pcall('HGET', own, first[3]) == first[4]
      if vouched then checked[own] = 'hash' end
      if kind == 'H' and not vouched and redis.call('EXISTS', own) == 0 then
        status = 'MISSING ' .. own .. ' was deleted before it was moved'
      end
      for c, cmd in ipairs(cmds) do
        local want = expected_type[cmd[1]]
        if cmd[1] == 'EXPECT_COMMAND' and status == 1 and not (vouched and c == 1)
          and redis.pcall('HGET', cmd[2], cmd[3]) ~= cmd[4] then
          status = 0
        end
        if want then
          local have = type_of(cmd[2])
          if have ~= 'none' and have ~= want and status == 1 then
            status = 'WRONGTYPE ' .. cmd[2] .. ' holds a ' .. have
          end
        end
        if cmd[1] == 'COPY_COMMAND' and status == 1 and planning_digest(cmd[2]) ~= cmd[4] then
          status = 0
        end
      end
    end
    if status == 1 then
      for _, cmd in ipairs(cmds) do
        if cmd[1] == 'REPLACE_COMMAND' then
          replace_run(unpack(cmd, 2))
        elseif cmd[1] == 'COPY_COMMAND' then
          copy_template(cmd[2], cmd[3])
        elseif cmd[1] == 'SADD' and cmd[2] == queues_key then
          if not registered[cmd[3]] then redis.call('SADD', queues_key, cmd[3]) end
          registered[cmd[3]] = true
        elseif cmd[1] ~= 'EXPECT_COMMAND' then
          redis.call(unpack(cmd))
        end
      end
    end
  end
  results[e] = status
end
return results
""".replace('REPLACE_COMMAND', REPLACE_COMMAND)
    .replace('EXPECT_COMMAND', EXPECT_COMMAND)
    .replace('{PAUSE_ALL}', PAUSE_ALL)
)
MOVE_KEYS = (keys.LOCK_KEY, keys.SCHEDULED_JOBS_KEY, keys.PAUSED_KEY)


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
