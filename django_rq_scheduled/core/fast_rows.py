"""The fast path of database rows' one-offs: a row's compact template moved whole inside Redis, with its run record.

A ``ScheduledJob`` row's template is compact (``compact``): no ``meta``, no ``created_at``, no outcome callbacks,
and its meta spread over short fields. The planned path reads it whole, rebuilds the meta in Python and writes the
whole RQ job back, about 60 arguments a row. Here the move script does it: it checks the row's *mark* (a MAC the
sync writes with the template, over the template id and every field a template of this shape may hold, made with a
key derived like the one-off marks of ``fast_moves``, under the allow-list the sync checked the callable against),
checks that the hash holds no other field (``HLEN``: an added ``result``, ``meta`` or callback field sends it down the
planned path), builds the meta as the planned path would (a pickle, written by hand: ``ROW_META``), writes the whole
job, pushes it, and appends the run record and the done marker the planned path would.

Taken only in the plain case; anything else is left to the planned path, unchanged: a field outside ``ROW_FIELDS``
(runs made, retries, an owner of its own, no run record, ``late_from``), a value of a shape the script does not
write (a fire time that is not a plain decimal, a grace over nine digits), a run past its misfire grace (the planned
path records the skip), a serializer other than RQ's default pickle one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import compact, keys
from .outcomes import ENQUEUED

ROW_FIELDS = (
    'data', 'origin', 'description', 'timeout', 'result_ttl', 'failure_ttl', 'ttl', 'enqueue_at_front',
    '~k', '~g', '~ov', '~v', '~ft',
)  # fmt: skip
"""The fields a row's one-off template may hold to be moved here (besides its mark); the mark covers them all."""
MARK_DIGITS = 32
"""The hex digits of SHA-1 a row's mark keeps (128 bits): the whole 40 would move the template's listpack into the
next allocation size, 32 bytes more per row (``bench.scale``: 575 B a row instead of 607)."""
KIND, GRACE, OVERLAP, VERSION, FIRE_TIME = (
    f'{compact.OURS_PREFIX}{compact.OURS_NAMES[name]}'
    for name in ('kind', 'misfire_grace', 'overlap', 'version', 'fire_time')
)
assert {KIND, GRACE, OVERLAP, VERSION, FIRE_TIME} <= set(ROW_FIELDS)


def _text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def message(template_id: bytes, fields: Mapping[str, Any]) -> bytes:
    """The signed message of a row's template: the lengths of the id and of each of ``ROW_FIELDS`` ('-' for one it
    lacks, so that a field added empty is a change), then their bytes."""
    values = [None if fields.get(name) is None else _text(fields[name]) for name in ROW_FIELDS]
    lengths = [b'%d' % len(template_id), *(b'-' if value is None else b'%d' % len(value) for value in values)]
    return b','.join(lengths) + b':' + template_id + b''.join(value for value in values if value is not None)


def markable(fields: Mapping[str, Any]) -> bool:
    """Whether a template with these fields may take the fast path at all (so its mark is worth writing)."""
    return fields.get(KIND) == 'once' and set(fields) <= set(ROW_FIELDS)


def _lua_text(text: str) -> str:
    return 'pickled(' + repr(text) + ')'


def _lua_list(names: Any) -> str:
    return '{' + ', '.join(repr(name) for name in names) + '}'


_CALLBACKS = [item for pair in compact.CALLBACK_FIELDS.items() for item in pair]
_READ = (keys.ROW_MARK_FIELD, *ROW_FIELDS)
"""What ``move_row`` reads, in this order: the mark first."""
_DROPPED = [at for at, name in enumerate(_READ, 1) if name == keys.ROW_MARK_FIELD or compact.is_compact_field(name)]
"""The places in ``_READ`` of the fields a template loses when it becomes its job."""


def _v(name: str) -> str:
    """The Lua expression of the value ``move_row`` read of the field ``name``."""
    return f'v[{_READ.index(name) + 1}]'


# The functions the move script uses for rows (``fast_moves.FAST_MOVE``). ``move_row(id, score, model, pk)``
# (the last two from ``row_owner(id)``) returns the job's origin if it moved it, nil if it left it. Uses the
# script's ``prefix``, ``queues``, ``paused``, ``enqueued_at``, ``now``, ``row_key``, ``sha1hex``, ``can_push``,
# ``expire_and_push`` and ``defer``.
# The meta is the planned path's (``compact.read_meta`` of the template): {META_KEY: {runs 0, misfire_grace,
# overlap, record True, kind, version, fire_time, owner}}, pickled with protocol 2 (EMPTY_DICT, MARK, SETITEMS),
# texts as BINUNICODE, the grace as BININT, the fire time as BINFLOAT (big-endian, from the same decimal Python
# parses: both round correctly).
ROW_MOVE = f"""
local pack, match, concat = struct.pack, string.match, table.concat
local function pickled(text) return 'X' .. pack('<I4', #text) .. text end
local row_fields, dropped_at = {_lua_list(_READ)}, {_lua_list(_DROPPED)}
local meta_head = '\\128\\002}}' .. {_lua_text(keys.META_KEY)} .. '}}(' .. {_lua_text('runs')} .. 'K\\000'
  .. {_lua_text('misfire_grace')}
local whole = {{'status', 'queued', 'enqueued_at', enqueued_at, 'created_at', enqueued_at, 'meta', '',
  {', '.join(repr(item) for item in _CALLBACKS)}}}
local whole_count = #whole
local function row_meta(model, pk, grace, overlap, version, fire_time)
  return meta_head .. (grace and ('J' .. pack('<i4', tonumber(grace))) or 'N')
    .. {_lua_text('overlap')} .. pickled(overlap or 'allow') .. {_lua_text('record')} .. '\\136'
    .. {_lua_text('kind')} .. {_lua_text('once')} .. {_lua_text('version')} .. pickled(version)
    .. {_lua_text('fire_time')} .. 'G' .. pack('>d', tonumber(fire_time))
    .. {_lua_text('owner')} .. pickled({keys.ROWS_APP_LABEL + '.'!r} .. model .. ':' .. pk) .. 'us.'
end
local function row_signed(id, v)
  local lengths, values = {{#id}}, {{id}}
  for f = 2, #row_fields do
    local value = v[f]
    if value then
      lengths[f] = #value
      values[#values + 1] = value
    else
      lengths[f] = '-'
    end
  end
  return string.sub(sha1hex(row_key .. concat(lengths, ',') .. ':' .. concat(values)), 1, {MARK_DIGITS}) == v[1]
end
local function record_of(owner, id, origin, score)
  return '{{"owner": ' .. cjson.encode(owner) .. ', "schedule": "' .. id .. '", "queue": ' .. cjson.encode(origin)
    .. ', "job": "' .. id .. '", "outcome": "{ENQUEUED}", "fire_time": ' .. score .. ', "at": ' .. now
    .. ', "runs": 1, "next": null, "finished": true}}'
end
local function row_owner(id)  -- (model name, primary key) of a row's template id (``keys.template_owner``)
  return match(id, '^{keys.TEMPLATE_PREFIX.replace('-', '%-')}([%w_]+)%-(%d+)$')
end
local function move_row(id, score, model, pk)
  if row_key == '' then return nil end
  local job_key = prefix .. id
  local v = redis.pcall('HMGET', job_key, unpack(row_fields))
  if type(v) ~= 'table' or v['err'] or not v[1] or {_v(KIND)} ~= 'once' or not {_v('data')} then return nil end
  local origin, ttl, grace, overlap = {_v('origin')}, {_v('ttl')}, {_v(GRACE)}, {_v(OVERLAP)}
  local version, fire_time = {_v(VERSION)}, {_v(FIRE_TIME)}
  local queue = origin and queues[origin]
  local at = tonumber(score)
  if not queue or paused[origin] or not at or at ~= at or at == math.huge or at == -math.huge then return nil end
  if not (version and match(version, '^%x+$') and fire_time and match(fire_time, '^%d+%.%d+$')) then return nil end
  if grace and not (#grace <= 9 and match(grace, '^%d+$')) then return nil end
  if (overlap and not match(overlap, '^[%w_]+$')) or (ttl and not match(ttl, '^%-?%d+$')) then return nil end
  if grace and tonumber(now) - at > tonumber(grace) then return nil end  -- the planned path records the skip
  local present = 0
  for f = 1, #row_fields do
    if v[f] then present = present + 1 end
  end
  if redis.call('HLEN', job_key) ~= present or not row_signed(id, v) or not can_push(queue) then return nil end
  -- The job's own write first: out of memory, it refuses the call before anything is written.
  whole[8] = row_meta(model, pk, grace, overlap, version, fire_time)
  local count = whole_count
  if not {_v('timeout')} and queue[2] ~= '' then
    whole[count + 1], whole[count + 2] = 'timeout', queue[2]
    count = count + 2
  end
  redis.call('HSET', job_key, unpack(whole, 1, count))
  local dropped = {{}}
  for _, f in ipairs(dropped_at) do
    if v[f] then dropped[#dropped + 1] = row_fields[f] end
  end
  redis.call('HDEL', job_key, unpack(dropped))
  expire_and_push(job_key, id, queue, ttl, {_v('enqueue_at_front')})
  defer('RPUSH', KEYS[5], record_of({keys.ROWS_APP_LABEL + '.'!r} .. model .. ':' .. pk, id, origin, score))
  defer('HSET', KEYS[6], id, '{keys.DONE_PREFIX}' .. version .. ':1')
  return origin
end
"""
