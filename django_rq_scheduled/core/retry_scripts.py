"""Lua scripts of the leader's release of RQ's delayed retries (``retries``): RQ's keys, read and written as RQ's own
scheduler does."""

from __future__ import annotations

from .vetting import CALLBACK_FIELDS

VETTED_FIELDS = (b'data', *CALLBACK_FIELDS)
"""What a due retry is vetted on, in the order ``DUE_RETRIES`` reads them."""

# The parts of the scripts that move RQ's delayed retries back to their queues when they are due, as RQ's own
# scheduler does, for the queues no RQ scheduler holds (``rq worker --with-scheduler`` holds a queue by its lock;
# then they leave the queue to it). Keys of another type are passed over, never failed on.
_RETRY_PARTS = """
local function type_of(key)
  local have = redis.call('TYPE', key)
  if type(have) == 'table' then have = have['ok'] end
  return have
end
local queue_prefix, registry_prefix, lock_prefix, job_prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
-- The registry of a queue whose retries are ours to move, or nil.
local function registry_of(queue_key)
  if string.sub(queue_key, 1, #queue_prefix) ~= queue_prefix then return nil end
  local name = string.sub(queue_key, #queue_prefix + 1)
  local registry, queue_type = registry_prefix .. name, type_of(queue_key)
  if type_of(registry) == 'zset' and redis.call('EXISTS', lock_prefix .. name) == 0
      and (queue_type == 'none' or queue_type == 'list') then
    return registry
  end
  return nil
end
-- Takes one retry out of the registry and, if its hash is there, enqueues it (unless RQ's scheduler should).
local function release(queue_key, registry, id, enqueued_at)
  local job_key = job_prefix .. id
  local is_hash = type_of(job_key) == 'hash'
  if is_hash and redis.call('HEXISTS', job_key, 'rate_limit_key') == 1 then return 0 end  -- RQ's scheduler's
  redis.call('ZREM', registry, id)
  if not is_hash then return 0 end
  local job = redis.call('HMGET', job_key, 'enqueue_at_front', 'enqueue_at_front_on_retry', 'ended_at', 'ttl')
  local front = job[1] == '1' or job[1] == 'True' or (job[2] == '1' and job[3])
  redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
  redis.call(front and 'LPUSH' or 'RPUSH', queue_key, id)
  if job[4] and tonumber(job[4]) and tonumber(job[4]) > 0 then redis.call('EXPIRE', job_key, job[4]) end
  return 1
end
local unpack = unpack or table.unpack
-- The fields of a retry the allow-list vets, and their digest: SHA-1 of each field's SHA-1 ('-' if it is missing).
local VETTED = {{{vetted}}}
local function vetted_digest(job_key)
  local parts = {{}}
  for j, value in ipairs(redis.call('HMGET', job_key, unpack(VETTED))) do
    parts[j] = value and redis.sha1hex(value) or '-'
  end
  return redis.sha1hex(table.concat(parts, ','))
end
local function next_due_of(registry, now, next_due)
  local first = redis.call('ZRANGEBYSCORE', registry, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] and (not next_due or tonumber(first[2]) < next_due) then return tonumber(first[2]) end
  return next_due
end
""".format(vetted=', '.join(repr(field.decode()) for field in VETTED_FIELDS))
_RETRY_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
if type_of(KEYS[2]) ~= 'set' then return {0, false} end
"""
# Moves every due retry (no allow-list to ask). KEYS: lock, the set of queue keys. ARGV: token, now (epoch
# seconds), enqueued_at, jobs per queue at most, then the prefixes of RQ's queue keys, scheduled registries,
# scheduler locks and job keys. Returns {jobs moved, the earliest later due time or false}.
RELEASE_RETRIES = (
    _RETRY_PARTS
    + _RETRY_FENCE
    + """
local now, limit, enqueued_at = ARGV[2], tonumber(ARGV[4]), ARGV[3]
local moved, next_due = 0, false
for _, queue_key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local registry = registry_of(queue_key)
  if registry then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', registry, '-inf', now, 'LIMIT', 0, limit)) do
      moved = moved + release(queue_key, registry, id, enqueued_at)
    end
    next_due = next_due_of(registry, now, next_due)
  end
end
return {moved, next_due and tostring(next_due)}
"""
)

# Reads the due retries for the allow-list to vet, moving none. KEYS and ARGV as RELEASE_RETRIES (the token unused).
# Returns {the earliest later due time or false, then per due retry: queue key, registry key, job id, due time, its
# payload and its three callback names (false if missing or its key is no hash)}.
DUE_RETRIES = (
    _RETRY_PARTS
    + """
if type_of(KEYS[2]) ~= 'set' then return {false} end
local now, limit = ARGV[2], tonumber(ARGV[4])
local found, next_due = {}, false
for _, queue_key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local registry = registry_of(queue_key)
  if registry then
    local due = redis.call('ZRANGEBYSCORE', registry, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
    for i = 1, #due, 2 do
      local id, vetted = due[i], {false, false, false, false}
      if type_of(job_prefix .. id) == 'hash' then vetted = redis.call('HMGET', job_prefix .. id, unpack(VETTED)) end
      for _, value in ipairs({queue_key, registry, id, due[i + 1]}) do table.insert(found, value) end
      for j = 1, #VETTED do table.insert(found, vetted[j]) end
    end
    next_due = next_due_of(registry, now, next_due)
  end
end
table.insert(found, 1, next_due and tostring(next_due))
return found
"""
)

# Applies the allow-list's verdicts on due retries read by DUE_RETRIES. KEYS: lock, the set of queue keys, the dead
# letters. ARGV as RELEASE_RETRIES, then per retry: queue key, registry key, job id, the digest of the fields that
# were allowed ('' = refused; see vetted_digest), the dead letter's record of a refusal. An allowed retry is moved
# only if it is still due in that registry and those fields are the ones vetted; a refused one still due is taken
# out of the registry into the dead letters, or left there if the dead letters are not a hash. Returns {jobs moved,
# jobs dead-lettered}.
RELEASE_VETTED_RETRIES = (
    _RETRY_PARTS
    + _RETRY_FENCE
    + """
local now, enqueued_at = tonumber(ARGV[2]), ARGV[3]
local moved, dead = 0, 0
-- Dead letters someone else turned into another type cannot be written: a refused retry then stays where it is.
local dead_type = type_of(KEYS[3])
local can_dead_letter = dead_type == 'hash' or dead_type == 'none'
for i = 9, #ARGV, 5 do
  local queue_key, registry, id, digest, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local score = registry_of(queue_key) == registry and tonumber(redis.call('ZSCORE', registry, id))
  if score and score <= now then
    if digest == '' and can_dead_letter then
      redis.call('ZREM', registry, id)
      redis.call('HSET', KEYS[3], id, reason)
      dead = dead + 1
    elseif digest ~= '' then
      if type_of(job_prefix .. id) == 'hash' and vetted_digest(job_prefix .. id) == digest then
        moved = moved + release(queue_key, registry, id, enqueued_at)
      end
    end
  end
end
return {moved, dead}
"""
)
