"""Compact templates: the template hash of a database row holds only what its runs need and cannot be derived.

A row's template used to be a whole RQ job hash: empty fields, ``created_at``, three outcome callbacks with their
timeouts, and a pickled ``meta`` of some 200 bytes. One value over 64 bytes makes Redis store the whole hash as a
hash table instead of a listpack, which cost about 1.9 KB per row. A compact template keeps RQ's fields of the call
and its options (``data``, ``origin``, ``description``, ``timeout``, ...), and the meta as one small hash field per
key, a JSON value each, with short names, defaults left out: ``~`` + name for our part (``keys.META_KEY``), ``^`` +
name for the rest (rq-scheduler's keys, a Django Task's chained callbacks). So every value stays short, and Redis
keeps the hash a listpack. What the left-out fields were is put back when a run is built (``run_fields``), at fire
time.

The field ``~k`` (the schedule's kind) marks a compact template. Templates of rq-scheduler and of the plain
``Scheduler`` API keep their layout; so do templates written before (they are read as before, and reconciliation
rewrites them once: ``jobs.TEMPLATE_FORMAT``).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from typing import Any, cast

from redis import Redis
from rq.defaults import CALLBACK_TIMEOUT
from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import capture, keys

MARKER = b'~k'
"""The field of a compact template that names its kind ('once', 'interval', 'cron')."""
OURS_PREFIX, OTHER_PREFIX, LONG = '~', '^', '.'
OURS_NAMES = {
    'kind': 'k', 'runs': 'n', 'version': 'v', 'owner': 'o', 'record': 'r', 'misfire_grace': 'g', 'overlap': 'ov',
    'interval': 'i', 'timezone': 'tz', 'late_from': 'lf', 'fire_time': 'ft', 'last_fire_time': 'lft',
    'last_run_id': 'lri', 'last_run_at': 'lra', 'retries': 'rt', 'retry_delays': 'rd', 'slot': 's',
    'slot_due': 'sd', 'delay': 'd', 'buffered': 'b', 'jitter': 'j', 'valid_from': 'vf', 'valid_until': 'vu',
    'catchup': 'c', 'catchup_limit': 'cl',
}  # fmt: skip
OTHER_NAMES = {'cron_string': 'c', 'repeat': 'r', 'use_local_timezone': 'l', 'interval': 'i', 'queue_class_name': 'q'}
_OURS_BY_SHORT = {short: name for name, short in OURS_NAMES.items()}
_OTHER_BY_SHORT = {short: name for name, short in OTHER_NAMES.items()}
OURS_DEFAULTS: dict[str, Any] = {'runs': 0, 'misfire_grace': None, 'overlap': 'allow', 'record': True}
KINDS = ('once', 'interval', 'cron')
_NUMBERS = ('misfire_grace', 'interval', 'late_from', 'fire_time', 'last_fire_time', 'last_run_at', 'slot',
            'slot_due', 'delay', 'buffered', 'valid_from', 'valid_until')  # fmt: skip
_TEXTS = ('kind', 'version', 'owner', 'overlap', 'timezone', 'last_run_id', 'catchup')
SYNC_FIELDS = tuple(OURS_PREFIX + OURS_NAMES[name] for name in ('kind', 'runs', 'last_fire_time', 'slot', 'slot_due'))
"""The fields sync reads of a stored template (``sync._decide``: runs, whether it began, a waiting slot)."""
BUFFERED_FIELD = f'{OURS_PREFIX}{OURS_NAMES["buffered"]}'
VERSION_FIELD = f'{OURS_PREFIX}{OURS_NAMES["version"]}'
"""A digest of the whole definition: a move planned from one version checks it still holds (``plan_ahead``)."""
CALLBACK_FIELDS = {
    f'{event}_callback_{part}': value
    for event in ('success', 'failure', 'stopped')
    for part, value in (('name', f'{capture.__name__}.record_{event}'), ('timeout', str(CALLBACK_TIMEOUT)))
}
"""RQ's fields of ``capture.callbacks()``, which every run of a row carries: left out of its template."""
LEFT_OUT = ('created_at', 'meta', 'status')
"""Fields of a job hash a compact template never holds (a run gets its own)."""
_ROW_MARK = keys.ROW_MARK_FIELD.encode()
TEXTS = frozenset({f'{OURS_PREFIX}{OURS_NAMES[name]}' for name in _TEXTS} | {'^c', '^q'})
"""Fields whose value is text, stored as it is (no JSON quotes); any other field holds JSON."""


class CompactError(ValueError):
    """A compact template that is not one of ours as written: a field missing, or of the wrong type."""

    def __str__(self) -> str:
        return f'compact template: {super().__str__()}'


def is_compact(raw: Mapping[bytes, Any] | None) -> bool:
    return bool(raw) and MARKER in raw  # type: ignore[operator]


def is_compact_field(name: bytes | str) -> bool:
    first = name[:1]
    return first in (b'~', b'^') if isinstance(name, bytes) else first in (OURS_PREFIX, OTHER_PREFIX)


# -- writing ----------------------------------------------------------------------------------------------------


def template_fields(job_hash: Mapping[str, Any], meta: Mapping[str, Any], template_id: str) -> dict[str, Any]:
    """The compact template of a job hash (RQ's ``Job.to_dict()``) and its meta, for ``template_id``."""
    fields = {
        name: value
        for name, value in job_hash.items()
        if value != '' and name not in LEFT_OUT and CALLBACK_FIELDS.get(name) != str(value)
    }
    fields.update(meta_fields(meta, template_id))
    return fields


def meta_fields(meta: Mapping[str, Any], template_id: str) -> dict[str, str]:
    """The meta of a template as compact fields (defaults and what can be derived left out)."""
    ours = dict(meta.get(keys.META_KEY) or {})
    if 'kind' not in ours:
        raise CompactError('a compact template needs its kind')
    fields: dict[str, str] = {}
    for name, value in ours.items():
        default = OURS_DEFAULTS.get(name, ...)
        if default == value and isinstance(default, bool) == isinstance(value, bool):
            continue
        if name == 'owner' and value == derived_owner(template_id):
            continue
        _put(fields, OURS_PREFIX + OURS_NAMES.get(name, LONG + name), value)
    for name, value in meta.items():
        if name == keys.META_KEY or (name == 'use_local_timezone' and value is False):
            continue
        if name == 'interval' and 'interval' in ours and value == _whole_seconds(ours['interval']):
            continue
        _put(fields, OTHER_PREFIX + OTHER_NAMES.get(name, LONG + name), value)
    return fields


def _put(fields: dict[str, str], name: str, value: Any) -> None:
    if name not in TEXTS:
        fields[name] = _json(value)
    elif isinstance(value, str):
        fields[name] = value
    elif value is not None:  # None: left out, read back as absent (``.get()`` finds None either way)
        raise CompactError(f'{name}: expected text, got {value!r}')


def meta_commands(raw: Mapping[bytes, Any], meta: Mapping[str, Any], template_id: str) -> list[tuple[Any, ...]]:
    """The writes that give a compact template (as read: ``raw``) this meta."""
    fields = meta_fields(meta, template_id)
    gone = [name for name in raw if is_compact_field(name) and name.decode() not in fields]
    changed = {name: value for name, value in fields.items() if raw.get(name.encode()) != value.encode()}
    flat = [item for pair in changed.items() for item in pair]
    if not flat:
        return [('HDEL', keys.job_key(template_id), *gone)] if gone else []
    commands: list[tuple[Any, ...]] = [('HSET', keys.job_key(template_id), *flat)]
    if gone:
        commands.append(('HDEL', keys.job_key(template_id), *gone))
    return commands


def _json(value: Any) -> str:
    # The hot path (a move writes its template's counters and times): plain numbers without the json module.
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value, separators=(',', ':'))


def _whole_seconds(interval: Any) -> Any:
    return max(1, round(interval)) if isinstance(interval, (int, float)) else None


def derived_owner(template_id: str) -> str | None:
    owner = keys.template_owner(template_id)
    return keys.owner_id(f'{keys.ROWS_APP_LABEL}.{owner[0]}', owner[1]) if owner else None


# -- reading ----------------------------------------------------------------------------------------------------


def read_meta(raw: Mapping[bytes, Any], template_id: str) -> dict[str, Any]:
    """The meta of a compact template, as the pickled meta of a whole one would hold it; CompactError for junk."""
    ours, meta = _read_fields(raw)
    _check(ours)
    if 'owner' not in ours and (owner := derived_owner(template_id)):
        ours['owner'] = owner
    if ours['kind'] == 'interval':
        meta.setdefault('interval', _whole_seconds(ours['interval']))
    elif ours['kind'] == 'cron':
        meta.setdefault('use_local_timezone', False)
        if not isinstance(meta.get('cron_string'), str):
            raise CompactError('a cron template needs its cron string (^c)')
    meta[keys.META_KEY] = ours
    return meta


def read_ours(raw: Mapping[bytes, Any]) -> dict[str, Any]:
    """Our part of the meta held by some of a compact template's fields (``SYNC_FIELDS`` for sync), or {} if they
    cannot be read (sync then writes the template anew)."""
    try:
        return _read_fields(raw)[0]
    except CompactError:
        return {}


def _read_fields(raw: Mapping[bytes, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our part, the rest) of the meta held by the compact fields of ``raw``, defaults put back."""
    ours: dict[str, Any] = dict(OURS_DEFAULTS)
    meta: dict[str, Any] = {}
    for field_name, value in raw.items():
        if not is_compact_field(field_name):
            continue
        name = field_name.decode(errors='replace') if isinstance(field_name, bytes) else field_name
        prefix, short = name[:1], name[1:]
        table = _OURS_BY_SHORT if prefix == OURS_PREFIX else _OTHER_BY_SHORT
        key = short[1:] if short.startswith(LONG) else table.get(short)
        if not key:
            raise CompactError(f'unknown field {name!r}')
        (ours if prefix == OURS_PREFIX else meta)[key] = _loads(name, value)
    return ours, meta


def _loads(name: str, value: Any) -> Any:
    if name in TEXTS:
        if not isinstance(value, bytes):
            raise CompactError(f'field {name!r} is not text')
        return value.decode(errors='replace')
    try:
        return json.loads(value)
    except (TypeError, ValueError) as exc:
        raise CompactError(f'field {name!r} is not JSON: {value!r:.60}') from exc


def _check(ours: dict[str, Any]) -> None:
    if ours.get('kind') not in KINDS:
        raise CompactError(f'kind: expected one of {KINDS}, got {ours.get("kind")!r}')
    runs = ours['runs']
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise CompactError(f'runs: expected a whole number, got {runs!r}')
    for name in _NUMBERS:
        value = ours.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CompactError(f'{name}: expected a number, got {value!r}')
    for name in _TEXTS:
        if not isinstance(ours.get(name, ''), str):
            raise CompactError(f'{name}: expected text, got {ours[name]!r}')
    if ours['kind'] == 'interval' and not isinstance(ours.get('interval'), (int, float)):
        raise CompactError('an interval template needs its interval (~i)')


# -- runs -------------------------------------------------------------------------------------------------------


def inherited(raw: Mapping[bytes, Any], not_inherited: frozenset[bytes]) -> dict[Any, Any]:
    """The fields a run of a template (compact or whole) takes from it."""
    fields = {name: value for name, value in raw.items() if name not in not_inherited and not is_compact_field(name)}
    return {**run_fields(raw), **fields} if is_compact(raw) else fields


def run_fields(raw: Mapping[bytes, Any]) -> dict[bytes, Any]:
    """What a run of a compact template gets that its template left out: the outcome callbacks (unless the
    template names its own)."""
    return {name.encode(): value for name, value in CALLBACK_FIELDS.items() if name.encode() not in raw}


def fetch_template(connection: Redis, template_id: str, job_class: type[Job] = Job, serializer: Any = None) -> Job:
    """The template stored under ``template_id`` as an RQ job, its meta and left-out fields put back if it is
    compact (RQ's own ``Job.fetch`` reads no meta of a compact template); NoSuchJobError if there is none."""
    raw = cast(dict[bytes, Any], connection.hgetall(keys.job_key(template_id)))
    if not raw:
        raise NoSuchJobError(f'No such job: {template_id}')
    job = job_class(template_id, connection=connection, serializer=serializer)
    if not is_compact(raw):
        job.restore(raw)
        return job
    meta = read_meta(raw, template_id)
    left_out = {name: str(value).encode() for name, value in run_fields(raw).items()}
    job.restore({**raw, **left_out, b'status': b'scheduled'})
    job.meta = meta
    return job


def with_meta(connection: Redis, jobs: list[Job | None]) -> list[Job | None]:
    """``jobs`` as RQ fetched them, the meta of rows' compact templates among them read (in place; one round trip
    if there are any)."""
    bare = [job for job in jobs if job is not None and not job.meta and keys.template_owner(job.id)]
    if not bare:
        return jobs
    with connection.pipeline(transaction=False) as pipe:
        for job in bare:
            pipe.hgetall(job.key)
        for job, raw in zip(bare, pipe.execute(raise_on_error=False)):
            if isinstance(raw, dict) and is_compact(raw):
                with contextlib.suppress(CompactError):
                    job.meta = read_meta(raw, job.id)
    return jobs


def whole_job_fields(raw: Mapping[bytes, Any], fields: list[Any], meta: bytes, created_at: str) -> list[Any]:
    """The fields that make a compact one-off's template its whole RQ job as it is enqueued (``fields``: those of
    the enqueue; ``meta``: its meta, serialized): the fields it left out (``dropped_fields`` removes its own)."""
    fields = [*fields, 'created_at', created_at]
    if 'meta' not in fields:
        fields += ['meta', meta]
    return fields + [item for pair in run_fields(raw).items() for item in pair]


def dropped_fields(raw: Mapping[bytes, Any], job_key: Any) -> list[tuple[Any, ...]]:
    """The write that removes a compact template's own fields, and its row mark, from the job it has become (none
    for a whole one)."""
    names = [name for name in raw if is_compact_field(name) or name == _ROW_MARK]
    return [('HDEL', job_key, *names)] if names else []
