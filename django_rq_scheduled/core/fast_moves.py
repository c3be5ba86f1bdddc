"""The fast path of plain one-off jobs written by our own ``Scheduler`` API: moved entirely inside Redis.

The writer (``JobBuilder.save_and_schedule``) adds a *mark* to the job hash of a plain one-off (no dependencies, no
periodic or row meta, no queue class of its own): a MAC over the job id and the fields a worker imports or
unpickles (``SIGNED_FIELDS``), keyed with a secret and the fingerprint of the allow-list the callable was checked
against when it was written. The loop's first step of a pass is ``FAST_MOVE``: one Lua call per batch reads the due
entries, checks each one's mark and guards, and moves those that pass; it returns only their ids. Everything else
(no mark, a wrong or stale mark, rq-scheduler's or a row's jobs, templates, dependencies, an unknown or paused queue,
a hash that is not a hash) is left in the schedule, untouched, for the planned path (``moves``), which moves it or
dead-letters it as before.

Why a MAC, not a plain flag: the planned path refuses a callable outside ``ALLOWED_CALLABLES``, and whoever can
write a job hash could write a flag. A mark verifies only if it was made with the key, for this very id, payload,
meta, origin and callbacks, under this allow-list: a forged or copied mark, an edit after writing, or a changed
allow-list sends the job down the planned path. With an allow-list set and no key, nothing is marked or trusted.
Without an allow-list (no callable is refused), the key may be empty: the mark then only proves the job is unchanged
since it was written (the planned path's own checks there are about well-formedness, not trust).

The MAC is ``sha1(derived key || message)``, the message prefix-free (the lengths of the id and of a fixed list of
fields, then their bytes), so SHA-1's length extension forges nothing; the derived key is an HMAC-SHA256 of the key
and the allow-list's fingerprint, made on the client, so the key itself never reaches Redis. Whoever can read the
scheduler's commands (``MONITOR``, ``SLOWLOG GET``) sees the derived key: restrict both with a Redis ACL if
producers share the server with writers you do not trust (such a writer can also push jobs onto RQ's queues
directly, which no scheduler checks).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from rq.serializers import DefaultSerializer
from rq.utils import utcformat

from . import fast_rows, keys
from ._django import queue_names
from .allowlist import AllowList
from .observer import ONE_OFF, EnqueuedJob
from .pending import PendingReplies
from .scripts import DEFERRED_WRITES
from .vetting import CALLBACK_FIELDS

SIGNED_FIELDS = (
    'data', 'meta', 'origin', *(field.decode() for field in CALLBACK_FIELDS), 'retries_left', 'retry_intervals',
)  # fmt: skip
"""The job-hash fields the mark covers: what a worker imports, unpickles, calls or parses (the retry fields, which
the planned path checks too), and the queue it goes to."""
UNRESTRICTED = 'unrestricted'
"""The fingerprint of no allow-list (every callable may run)."""
# Meta keys of jobs the fast path never takes (periodic, rows', a queue class of their own): also looked for, as
# bytes, in the meta the Lua reads, so that even a mark made without a key never moves a template.
NOT_FAST_META = ('interval', 'cron_string', 'queue_class_name', 'misfire_grace', 'record')


def fingerprint(rule: object) -> str | None:
    """What the allow-list ``rule`` lets run, as a string; None for a rule that cannot be fingerprinted (a
    predicate of the project's own): then nothing is marked."""
    if rule is None or (isinstance(rule, AllowList) and not rule.restricts):
        return UNRESTRICTED
    if isinstance(rule, AllowList):
        described = json.dumps({'patterns': list(rule.patterns or ()), 'trusted': sorted(rule.trusted)})
        return hashlib.sha256(described.encode()).hexdigest()
    return None


def _text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b'' if value is None else str(value).encode()


def message(job_id: bytes, fields: Mapping[str, Any]) -> bytes:
    """The signed message: the lengths of the id and of each signed field, then their bytes (so no two messages
    collide, and none extends another)."""
    values = [job_id, *(_text(fields.get(name)) for name in SIGNED_FIELDS)]
    return b','.join(b'%d' % len(value) for value in values) + b':' + b''.join(values)


@dataclass(frozen=True)
class Signer:
    """Makes the marks of one key under one allow-list; the move script checks them with the same derived keys."""

    key: bytes
    """Derived from the secret and the allow-list's fingerprint: the secret itself never reaches Redis."""
    row_key: bytes
    """The same, for the marks of rows' templates (``fast_rows``): no mark of one kind verifies as the other."""

    @classmethod
    def of(cls, key: bytes | str | None, rule: object) -> Signer | None:
        """The signer of ``key`` under ``rule``, or None when no mark may be trusted (an allow-list without a key,
        or a rule that cannot be fingerprinted)."""
        print_ = fingerprint(rule)
        secret = key.encode() if isinstance(key, str) else (key or b'')
        if print_ is None or (not secret and print_ != UNRESTRICTED):
            return None

        def derived(purpose: str) -> bytes:
            return hmac.new(secret, f'{purpose}|{print_}'.encode(), 'sha256').hexdigest().encode()

        return cls(key=derived('drqs-one-off-marks'), row_key=derived('drqs-row-marks'))

    def mark(self, job_id: str, fields: Mapping[str, Any]) -> str:
        # sha1(key || message) over a prefix-free message (the lengths, then the bytes): no signed message
        # extends another, so SHA-1's length extension forges nothing. Lua has sha1hex, not HMAC.
        return hashlib.sha1(self.key + message(job_id.encode(), fields)).hexdigest()

    def row_mark(self, template_id: str, fields: Mapping[str, Any]) -> str:
        """The mark of a row's one-off template with these fields (``fast_rows``), written with it by the sync."""
        digest = hashlib.sha1(self.row_key + fast_rows.message(template_id.encode(), fields)).hexdigest()
        return digest[: fast_rows.MARK_DIGITS]


def eligible(job: Any) -> bool:
    """Whether a job built by our API is a plain one-off the move script may take whole."""
    meta = job.meta or {}
    ours = meta.get(keys.META_KEY) or {}
    return (
        not job._dependency_ids
        and job.instance is None
        and not any(name in meta for name in NOT_FAST_META)
        and set(ours) <= {'retries', 'retry_delays'}
    )


# Moves a batch of due plain one-offs whose mark verifies, and rows' one-offs whose row mark does (``fast_rows``).
# KEYS: lock, schedule, pause, set of queue keys, run log, versions.
# ARGV: token ('' = unfenced), latest due score, enqueued_at, job key prefix, offset (due entries to step over, the
# ones earlier calls of the pass left), batch size, the derived key, the rows' derived key ('' = rows are left),
# number of known queues, then per queue: origin, queue key, default timeout ('' = none). Returns {entries looked
# at, entries left, then id, score, origin of each job moved}. Left (for the planned path): anything not a plain
# marked one-off of a known, unpaused queue. The read and the move are one atomic call, so the score, status and
# fields checked are the ones moved.
FAST_MOVE = f"""
if not redis.sha1hex then return {{0, 0}} end  -- a Redis look-alike without it (fakeredis): the planned path moves all
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER lease lost')
end
local function type_of(key)
  local have = redis.call('TYPE', key)
  if type(have) == 'table' then have = have['ok'] end
  return have
end
local paused = {{}}
local scopes = redis.pcall('HKEYS', KEYS[3])
if type(scopes) == 'table' and not scopes['err'] then
  for p = 1, #scopes do paused[scopes[p]] = true end
end
local set_type = type_of(KEYS[4])
if paused['{keys.PAUSE_ALL}'] or (set_type ~= 'none' and set_type ~= 'set') then return {{0, 0}} end
local now, enqueued_at, prefix, key, row_key = ARGV[2], ARGV[3], ARGV[4], ARGV[7], ARGV[8]
local queues, usable = {{}}, {{}}
local q = 10
for n = 1, tonumber(ARGV[9]) do
  queues[ARGV[q]] = {{ARGV[q + 1], ARGV[q + 2]}}
  q = q + 3
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', ARGV[5], ARGV[6])
local out = {{#due / 2, 0}}
local left = 0
local format, sha1hex, find = string.format, redis.sha1hex, string.find
local function signed(id, v)
  local f3, f4, f5, f6, f7, f8, f9, f10 = v[3] or '', v[4] or '', v[5] or '', v[6] or '', v[7] or '', v[8] or '',
    v[9] or '', v[10] or ''
  local lengths = format('%d,%d,%d,%d,%d,%d,%d,%d,%d:', #id, #f3, #f4, #f5, #f6, #f7, #f8, #f9, #f10)
  return sha1hex(key .. lengths .. id .. f3 .. f4 .. f5 .. f6 .. f7 .. f8 .. f9 .. f10) == v[1]
end
local words = {{{', '.join(repr(word) for word in NOT_FAST_META)}}}
local function plain(meta)
  for w = 1, #words do
    if find(meta, words[w], 1, true) then return false end
  end
  return true
end
local function blank(value) return not value or value == '' end
{DEFERRED_WRITES}
local function can_push(queue)  -- its list exists or may be made (any other type: the planned path reports it)
  if usable[queue[1]] == nil then
    local have = type_of(queue[1])
    usable[queue[1]] = have == 'none' or have == 'list'
  end
  return usable[queue[1]]
end
local function expire_and_push(job_key, id, queue, ttl, at_front)  -- after the job's own write
  local seconds = tonumber(ttl)
  if seconds and seconds > 0 then redis.call('EXPIRE', job_key, math.floor(seconds)) end
  local front = at_front == '1' or at_front == 'True' or at_front == 'true'
  defer(front and 'LPUSH' or 'RPUSH', queue[1], id)
  defer('ZREM', KEYS[2], id)
end
{fast_rows.ROW_MOVE}
local function move_one_off(id)
  local v = redis.pcall('HMGET', prefix .. id, '{keys.FAST_MARK_FIELD}', 'status', 'data', 'meta', 'origin',
    'success_callback_name', 'failure_callback_name', 'stopped_callback_name', 'retries_left', 'retry_intervals',
    'result', 'exc_info', 'dependency_id', 'dependency_ids', 'enqueue_at_front', 'ttl', 'timeout')
  local queue = type(v) == 'table' and not v['err'] and v[5] and queues[v[5]]
  local ok = queue and v[1] and v[2] == 'scheduled' and v[3] and not paused[v[5]]
    and blank(v[11]) and blank(v[12]) and blank(v[13]) and blank(v[14])
    and string.find(id, '^[%w_%-]+$') and plain(v[4] or '') and signed(id, v)
  if not (ok and can_push(queue)) then return nil end
  local job_key = prefix .. id
  -- The job's own write first: out of memory, Redis refuses a script's first write that needs memory (later ones
  -- would leave it half done), so the call fails before anything is written and the next pass moves the batch.
  if not v[17] and queue[2] ~= '' then
    redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'timeout', queue[2])
  else
    redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
  end
  expire_and_push(job_key, id, queue, v[16], v[15])
  return v[5]
end
for d = 1, #due, 2 do
  local id, origin = due[d], nil
  local model, pk = row_owner(id)
  if model then  -- a row's template id (an API one-off given an id of that shape goes the planned way)
    origin = move_row(id, due[d + 1], model, pk)
  else
    origin = move_one_off(id)
  end
  if origin then
    local queue = queues[origin]
    if not queue[3] then
      redis.call('SADD', KEYS[4], queue[1])
      queue[3] = true
    end
    out[#out + 1] = id
    out[#out + 1] = due[d + 1]
    out[#out + 1] = origin
  else
    left = left + 1
  end
end
-- The pushes and the schedule's removals, one command per key (and end of the list: the two ends never mix).
write_deferred()
out[2] = left
return out
"""
FAST_MOVE_KEYS = (
    keys.LOCK_KEY, keys.SCHEDULED_JOBS_KEY, keys.PAUSED_KEY, keys.QUEUES_SET_KEY, keys.RUNS_KEY, keys.VERSIONS_KEY,
)  # fmt: skip


@dataclass
class FastBatch:
    """What one call of the move script did."""

    looked_at: int
    left: int
    flat: list[Any]
    """id, score, origin of each job moved."""

    @property
    def moved(self) -> int:
        return self.looked_at - self.left

    @property
    def ids(self) -> list[str]:
        return [member.decode() for member in self.flat[::3]]

    def enqueued(self) -> Iterator[tuple[str, str, float]]:
        """(id, origin, score) of each job moved."""
        flat = self.flat
        for start in range(0, len(flat), 3):
            yield flat[start].decode(), flat[start + 2].decode(errors='replace'), float(flat[start + 1])


def parse_reply(reply: list[Any]) -> FastBatch:
    looked_at, left, *flat = reply
    return FastBatch(int(looked_at), int(left), flat)


def install(scheduler: Any, key: Any) -> None:
    """Marks plain one-offs, and moves marked ones whole in Redis, when a mark can be trusted under the scheduler's
    rule of callables: with no allow-list, or with one and a key (inside Django: derived from SECRET_KEY)."""
    signer = Signer.of(key, scheduler.callable_allowed)
    scheduler.jobs.signer = None if scheduler.queue_class_name else signer
    fast = None if signer is None else FastPass(scheduler.mover, signer, scheduler.queue_name, queue_names())
    scheduler.mover.fast = fast


@dataclass
class _InFlight:
    """A fast call sent, its reply not read yet."""

    pending: PendingReplies
    argv: list[Any]
    offset: int
    now: float


class FastPass:
    """The first step of every pass of the mover: the marked one-offs, moved by ``FAST_MOVE`` batch by batch."""

    def __init__(self, mover: Any, signer: Signer, default_queue: str, known_queues: list[str] | None) -> None:
        self.mover = mover
        self.signer = signer
        self.origins = list(dict.fromkeys([default_queue, *(known_queues or [])]))
        self.job_prefix = mover.job_class.redis_job_namespace_prefix
        # The script writes a row's meta as RQ's default serializer (pickle) would: with any other, rows are left.
        self.row_key = signer.row_key if mover.serializer is DefaultSerializer else b''
        self.script = mover.connection.register_script(FAST_MOVE)

    def run(self, report: Any) -> None:
        """Moves due marked one-offs until a batch finds none (the planned path takes what is left).

        Each call goes out before the batch of the one before is accounted for (the report, the observer, the
        report's ``as_moved``), so that work is done while Redis moves the next batch."""
        mover = self.mover
        queue_args = self._queue_args()
        call = None if mover.stop.is_set() else self._send(0, queue_args)
        while call is not None:
            batch = self._reply(call)
            try:
                following = self._send_next(batch, call.offset, queue_args)
            except BaseException:
                self._account(batch, call.now, report)
                raise
            try:
                self._account(batch, call.now, report)
            except BaseException:
                if following is not None:
                    following.pending.abandon()
                raise
            call = following

    def _send(self, offset: int, queue_args: list[Any]) -> _InFlight:
        mover = self.mover
        now = mover.clock.now()
        argv = [
            mover.lease.token, repr(now), utcformat(datetime.fromtimestamp(now, timezone.utc)), self.job_prefix,
            offset, mover.batch_size, self.signer.key, self.row_key, *queue_args,
        ]  # fmt: skip
        mover._load_scripts_once()
        call = ('EVALSHA', self.script.sha, len(FAST_MOVE_KEYS), *FAST_MOVE_KEYS, *argv)
        return _InFlight(PendingReplies(mover.connection.connection_pool, [call]), argv, offset, now)

    def _reply(self, call: _InFlight) -> FastBatch:
        [reply] = call.pending.wait()
        if isinstance(reply, redis.exceptions.NoScriptError):  # lost (a restart): loaded and sent again
            self.mover._scripts_missing = True
            reply = self._call(call.argv)
        elif isinstance(reply, redis.ResponseError):
            self.mover._raise_move_error(reply)  # a lost lease: told to the lease, raised as LeadershipLost
        return parse_reply(reply)

    def _call(self, argv: list[Any]) -> Any:
        try:
            return self.script(keys=FAST_MOVE_KEYS, args=argv)
        except redis.ResponseError as exc:
            self.mover._raise_move_error(exc)

    def _send_next(self, batch: FastBatch, offset: int, queue_args: list[Any]) -> _InFlight | None:
        """The next call, sent; None once a batch was not full or moved nothing, or the mover is told to stop."""
        mover = self.mover
        if batch.looked_at < mover.batch_size or not batch.moved or mover.stop.is_set():
            return None
        mover.lease.renew_if_due()
        return self._send(offset + batch.left, queue_args)

    def _account(self, batch: FastBatch, now: float, report: Any) -> None:
        if not batch.moved:
            return
        ids = batch.ids
        report.enqueued += ids
        self.mover.observer.jobs_enqueued(_Enqueued(batch), now)
        report.batches += 1
        if report.as_moved is not None:
            report.as_moved(ids)

    def _queue_args(self) -> list[Any]:
        """origin, queue key, default timeout of each queue the move script may push to (the others: planned)."""
        known = [*self.origins, *self.mover.queues.known_origins()]
        args: list[Any] = []
        for origin in dict.fromkeys(known):
            try:
                info = self.mover.queues.info(origin, None)
            except Exception:  # a queue that cannot be built is the planned path's to report
                continue
            args += [origin, info.key, '' if info.default_timeout is None else info.default_timeout]
        return [len(args) // 3, *args]


class _Enqueued:
    """The jobs of a fast batch, as the observer sees them, built only if it iterates them."""

    def __init__(self, batch: FastBatch) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[EnqueuedJob]:
        for _, origin, score in self.batch.enqueued():
            yield EnqueuedJob(origin, ONE_OFF, score)
