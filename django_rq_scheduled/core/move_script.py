"""The move script: the one fenced Lua call that applies a planned batch of moves (``mover``, ``plan_ahead``).

Its entry kinds: a plain one-off ('O'), the plain run of a periodic template ('P', see ``run_moves``), and any
other move spelled out command by command ('G', 'H').
"""

from __future__ import annotations

from typing import Any

from . import compact, keys, run_moves
from .keys import PAUSE_ALL
from .overlap import EXPECT_COMMAND, REPLACE_COMMAND
from .scripts import DEFERRED_WRITES

# Moves one batch of due jobs. KEYS: lock, schedule, pause.
# ARGV: token (empty for an explicit API call rather than the loop), entry count, enqueued_at, job key prefix,
# the set of queue keys ('rq:queues'), then per entry: member, expected score ('*' = unguarded), and either
#   'O', queue key, push command, timeout or '', ttl or '': a plain one-off job (the hot path, kept compact), or
#   'G' or 'H', command count, then per command: arg count, args...: any other move, spelled out by the planner;
#   'H' only if the member's job hash still exists; or 'P', the plain run of a periodic template (``run_moves``):
#   template version or '' (unguarded), run id, shared field count (0: the previous 'P' entry's), shared fields,
#   own field count, own fields, ttl or '', template field count, template fields, next score, queue key, push
#   command, run record or ''. Its pushes, its next score and its record are written together with those of the
#   'P' entries next to it, in one command per key, before any other kind of entry (so in the same order as one by
#   one), and before a member moved earlier in the call is looked at again. The scores of neighbouring 'P' entries
#   are read with one ZMSCORE (Redis 6.2; one ZSCORE each before) when the first of them is reached.
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
local function wrong_type(key, want)  -- why a write of type ``want`` to ``key`` would fail, or nil
  local have = type_of(key)
  if have ~= 'none' and have ~= want then return 'WRONGTYPE ' .. key .. ' holds a ' .. have end
end
local function one_off(member, queue_key, push, timeout, ttl)
  local job_key = job_prefix .. member
  local problem = wrong_type(queue_key, 'list') or wrong_type(KEYS[2], 'zset')
  if problem then return problem end
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
-- Writes of 'P' entries put off to the end of their run of 'P' entries.
DEFERRED_WRITES
local deferred_members = {}
local function write_deferred_moves()
  if #deferred_order == 0 then return end
  write_deferred()
  deferred_members = {}
end
local run_fields, shared_count = {}, 0  -- a 'P' entry's run fields: those of the batch, then its own
local prefetched, moved_here, scanned_to, zmscore = {}, {}, 0, true  -- see prefetch_scores
-- 'P': a periodic template's plain run. Its template must still be a hash, at the version it was planned from if
-- one is given; the run's hash is written first, with pcall, so a run key of the wrong type fails the entry alone.
local function periodic_run(member, version, run_id, own_from, own_count, ttl, template_from,
    template_count, next_score, queue_key, push, record)
  local own = job_prefix .. member
  if version == '' or redis.pcall('HGET', own, '{VERSION_FIELD}') ~= version then
    local have = type_of(own)
    if have == 'none' then return 'MISSING ' .. own .. ' was deleted before it was moved' end
    if have ~= 'hash' then return 'WRONGTYPE ' .. own .. ' holds a ' .. have end
    if version ~= '' then return 0 end
  end
  local problem = wrong_type(queue_key, 'list') or wrong_type(KEYS[2], 'zset')
    or (record ~= '' and wrong_type('{RUNS_KEY}', 'list'))
  if problem then return problem end
  local run_key = job_prefix .. run_id
  local n = shared_count
  for f = own_from, own_from + own_count - 1 do n = n + 1; run_fields[n] = ARGV[f] end
  local written = redis.pcall('HSET', run_key, unpack(run_fields, 1, n))
  if type(written) == 'table' and written['err'] then
    local err = tostring(written['err'])
    if string.find(err, 'WRONGTYPE', 1, true) then return 'WRONGTYPE ' .. run_key .. ' holds a ' .. type_of(run_key) end
    return {failed = err}  -- e.g. OOM: the call ends here, and nothing of it has been written
  end
  if ttl ~= '' then redis.call('EXPIRE', run_key, ttl) end
  if template_count > 0 then
    redis.call('HSET', own, unpack(ARGV, template_from, template_from + template_count - 1))
  end
  if not registered[queue_key] then
    redis.call('SADD', queues_key, queue_key)
    registered[queue_key] = true
  end
  defer(push, queue_key, run_id)
  defer('ZADD', KEYS[2], next_score, member)
  deferred_members[member] = true
  moved_here[member] = true
  -- Their types are settled: the deferred writes create them as such before any other kind of entry looks.
  checked[queue_key], checked[KEYS[2]] = 'list', 'zset'
  if record ~= '' then
    defer('RPUSH', '{RUNS_KEY}', record)
    checked['{RUNS_KEY}'] = 'list'
  end
  return 1
end
-- The scores of a run of 'P' entries, read with one command before the first of them: valid for a member until
-- the call moves it (then read again), and for none once another kind of entry is applied.
local function p_layout(i)  -- a 'P' entry at ARGV[i]: where its shared fields, own fields, template fields start
  local count = tonumber(ARGV[i + 5])
  local own_from = i + 6 + count + 1
  local own_count = tonumber(ARGV[own_from - 1])
  local template_from = own_from + own_count + 2
  return count, own_from, own_count, template_from, template_from + tonumber(ARGV[template_from - 1]) + 4
end
local function prefetch_scores(i)
  local members = {}
  while ARGV[i + 2] == 'P' do
    scanned_to = i
    if ARGV[i + 1] ~= '*' then members[#members + 1] = ARGV[i] end
    local _, _, _, _, after = p_layout(i)
    i = after
  end
  for first = 1, #members, 1000 do
    local upto = math.min(first + 999, #members)
    local scores = redis.pcall('ZMSCORE', KEYS[2], unpack(members, first, upto))
    if type(scores) ~= 'table' or scores['err'] then zmscore = false; return end  -- before Redis 6.2: one by one
    for m = first, upto do prefetched[members[m]] = scores[m - first + 1] or false end
  end
end
local function still_scheduled(member, score)
  if deferred_members[member] then write_deferred_moves() end
  if score == '*' then return true end
  local current = prefetched[member]
  if current == nil or moved_here[member] then current = redis.call('ZSCORE', KEYS[2], member) end
  return current and tonumber(current) == tonumber(score)
end
local results = {}
local i = 6
for e = 1, tonumber(ARGV[2]) do
  local member, score, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status = 0
  if kind ~= 'P' then
    write_deferred_moves()
    if next(prefetched) ~= nil then prefetched = {} end
  end
  if kind == 'P' then
    if zmscore and i > scanned_to then prefetch_scores(i) end
    local version, run_id = ARGV[i + 3], ARGV[i + 4]
    local count, own_from, own_count, template_from = p_layout(i)
    if count > 0 then run_fields, shared_count = {unpack(ARGV, i + 6, i + 5 + count)}, count end
    local ttl = ARGV[own_from + own_count]
    local template_count = tonumber(ARGV[template_from - 1])
    i = template_from + template_count
    if still_scheduled(member, score) and not is_paused(member) then
      status = periodic_run(member, version, run_id, own_from, own_count, ttl, template_from,
        template_count, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
      if type(status) == 'table' then return redis.error_reply(status.failed) end
    end
    i = i + 4
  elseif kind == 'O' then
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
write_deferred_moves()
return results
""".replace('REPLACE_COMMAND', REPLACE_COMMAND)
    .replace('DEFERRED_WRITES', DEFERRED_WRITES)
    .replace('{VERSION_FIELD}', compact.VERSION_FIELD)
    .replace('{RUNS_KEY}', keys.RUNS_KEY)
    .replace('EXPECT_COMMAND', EXPECT_COMMAND)
    .replace('{PAUSE_ALL}', PAUSE_ALL)
)
MOVE_KEYS = (keys.LOCK_KEY, keys.SCHEDULED_JOBS_KEY, keys.PAUSED_KEY)


def argv(token: str, enqueued_at: str, job_prefix: str, entries: list[Any]) -> list[Any]:
    """MOVE's ARGV for ``entries`` (``moves.Entry``); ``token``: the lease's, or '' for an unfenced call."""
    values: list[Any] = [token, len(entries), enqueued_at, job_prefix, keys.QUEUES_SET_KEY]
    shared = run_moves.SharedFields()
    for entry in entries:
        if entry.one_off:
            values += [entry.member, entry.score, 'O', *entry.one_off]
            continue
        # The script names a run's keys with the job class's prefix, the planner with RQ's: the same, mostly.
        run = run_moves.compact_run(entry, shared) if job_prefix == keys.JOB_KEY_PREFIX else None
        if run is not None:
            values += [entry.member, entry.score, *run]
            continue
        values += [entry.member, entry.score, 'H' if entry.requires_hash else 'G', len(entry.commands)]
        for command in entry.commands:
            values += [len(command), *command]
    return values
