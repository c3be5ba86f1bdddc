"""Lua scripts: every write of the scheduler that must be atomic, fenced by the leader lease, or both."""

from __future__ import annotations

# Moves one batch of due jobs. KEYS: lock, schedule.
# ARGV: token (empty for an explicit API call rather than the loop), entry count, enqueued_at, job key prefix,
# the set of queue keys ('rq:queues'), then per entry: member, expected score ('*' = unguarded), and either
#   'O', queue key, push command, timeout or '', ttl or '': a plain one-off job (the hot path, kept compact), or
#   'G', command count, then per command: arg count, args...: any other move, spelled out by the planner.
# The whole batch is refused unless the lock still holds our token (a deposed leader cannot enqueue). An entry
# is applied only if its member still has the score we planned with, so a job cancelled or rescheduled by a
# producer after we read it is left alone. Key types are checked before any write of an entry (a one-off job's
# own hash by writing it first, with pcall), so corrupt data under a key fails that entry alone (reported back
# for dead-lettering) and never half-applies it.
MOVE = """
local unpack = unpack or table.unpack
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local enqueued_at, job_prefix, queues_key = ARGV[3], ARGV[4], ARGV[5]
local expected_type = {
  HSET = 'hash', HDEL = 'hash', RPUSH = 'list', LPUSH = 'list', SADD = 'set', ZADD = 'zset', ZREM = 'zset'
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
  local written
  if timeout ~= '' then
    written = redis.pcall('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'timeout', timeout)
  else
    written = redis.pcall('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
  end
  if type(written) == 'table' and written['err'] then return 'WRONGTYPE ' .. job_key .. ' is not a hash' end
  redis.call('ZREM', KEYS[2], member)
  redis.call(push, queue_key, member)
  if not registered[queue_key] then
    redis.call('SADD', queues_key, queue_key)
    registered[queue_key] = true
  end
  if ttl ~= '' then redis.call('EXPIRE', job_key, ttl) end
  return 1
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
    if still_scheduled(member, score) then
      status = one_off(member, ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
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
    if still_scheduled(member, score) then
      status = 1
      for _, cmd in ipairs(cmds) do
        local want = expected_type[cmd[1]]
        if want then
          local have = type_of(cmd[2])
          if have ~= 'none' and have ~= want then status = 'WRONGTYPE ' .. cmd[2] .. ' holds a ' .. have end
        end
      end
    end
    if status == 1 then
      for _, cmd in ipairs(cmds) do
        redis.call(unpack(cmd))
        if cmd[1] == 'SADD' and cmd[2] == queues_key then registered[cmd[3]] = true end
      end
    end
  end
  results[e] = status
end
return results
"""

# Reads one batch of due jobs and the hash fields their moves are planned from, in one round trip.
# KEYS: schedule. ARGV: job key prefix, latest due score, offset (due members to skip), batch size, fields...
# Returns a flat list, for each due member, earliest first: member, score, an error (nil, or why the job's key
# cannot be read: it then goes to the dead letters instead of blocking the batch), one value (or nil) per field.
READ_DUE = """
local unpack = unpack or table.unpack
local fields = {unpack(ARGV, 5)}
local due = redis.call(
  'ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', tonumber(ARGV[3]), tonumber(ARGV[4])
)
local out = {}
for d = 1, #due, 2 do
  out[#out + 1] = due[d]
  out[#out + 1] = due[d + 1]
  local values = redis.pcall('HMGET', ARGV[1] .. due[d], unpack(fields))
  if type(values) == 'table' and values['err'] then
    out[#out + 1] = values['err']
    values = {}
  else
    out[#out + 1] = false
  end
  for f = 1, #fields do out[#out + 1] = values[f] or false end
end
return out
"""

# Schedules ARGV[1] at ARGV[2] and wakes a sleeping scheduler if that is earlier than its wake-up time.
# KEYS: schedule, next wake-up, wake-up list: the first three keys of every script that includes it.
_ZADD_AND_WAKE = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local wake = redis.call('GET', KEYS[2])
if wake and tonumber(ARGV[2]) < tonumber(wake) then
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[3], '1')
  redis.call('PEXPIRE', KEYS[3], 60000)
end
"""

# Adds or moves a member and wakes a sleeping scheduler if the new time is earlier than its wake-up time.
# KEYS: schedule, next wake-up, wake-up list. ARGV: member, score, and 'XX' to move an existing member only
# (rq-scheduler's change_execution_time, made atomic). Returns 0 if 'XX' and the member is absent.
SCHEDULE = f"""
if ARGV[3] == 'XX' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
{_ZADD_AND_WAKE}
return 1
"""

# Puts a dead letter back into the schedule, only if it was one: any other id (a finished job's, say) must not
# run again. KEYS: schedule, next wake-up, wake-up list, dead letters. ARGV: member, score. Returns 1 if retried.
RETRY_DEAD_LETTER = f"""
if redis.call('HDEL', KEYS[4], ARGV[1]) == 0 then return 0 end
{_ZADD_AND_WAKE}
return 1
"""

# Removes a member and, only if it was still scheduled, its job hash (a job already moved to a queue keeps its
# hash). KEYS: schedule, job hash, dead letters. ARGV: member. Returns 1 if it was scheduled or dead-lettered.
CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[3], ARGV[1])
if removed > 0 then redis.call('DEL', KEYS[2]) end
return removed > 0 and 1 or 0
"""

# Arms the wake-up: returns the earliest score (or false) and records when the leader will look next.
# KEYS: schedule, next wake-up, wake-up list. ARGV: latest wake-up time (epoch s), expiry ms.
ARM_WAKEUP = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wake = tonumber(ARGV[1])
if first[2] and tonumber(first[2]) < wake then wake = tonumber(first[2]) end
redis.call('SET', KEYS[2], tostring(wake), 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return first[2] or false
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

# Deletes a job hash only while it is still a scheduled template: a one-off job's id is its template's id, and
# once moved onto a queue the hash belongs to RQ. KEYS: job hash.
DELETE_IF_SCHEDULED = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == false or status == 'scheduled' then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Forgets a template's version unless it records that the schedule ran its last run. KEYS: versions. ARGV: id.
HDEL_UNLESS_DONE = """
local version = redis.call('HGET', KEYS[1], ARGV[1])
if version and string.sub(version, 1, 5) ~= 'done:' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
