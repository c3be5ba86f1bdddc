"""An occurrence's job hash copied from its template inside the move script, not read and resent by the client.

The client reads only the fields a move is planned and vetted from (``PLANNING_FIELDS``). The move script copies
every other field of the template (the call's description, args and the like) into the occurrence, except the
fields of one run (``NOT_INHERITED``) and a compact template's own fields (``~`` and ``^``), and the client's
writes of the run's own fields follow. The copy is guarded by a digest of the planning fields as the client read
and vetted them: a template edited since (its payload, callbacks, meta, queue) is left alone for that pass (0, as
for a changed score) and read, vetted and planned again on the next one, so a callable outside the allow-list is
never copied into a run unvetted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from . import compact, move_script, retries, vetting

PLANNING_FIELDS = (
    b'origin', b'meta', b'data', b'enqueue_at_front', b'ttl', b'timeout', b'status',
    b'dependency_id', b'dependency_ids', b'retries_left', b'retry_intervals', compact.MARKER,
    *vetting.CALLBACK_FIELDS,
)  # fmt: skip
"""The fields a move is planned from, and the digest of a copy covers."""
RUN_STATE_FIELDS = frozenset(
    {
        b'status', b'created_at', b'enqueued_at', b'started_at', b'ended_at', b'last_heartbeat', b'worker_name',
        b'result', b'exc_info', b'meta', b'number_of_retries', b'dependency_id', b'dependency_ids',
    }
)  # fmt: skip
"""Fields of a template hash that describe one run, not the job: a fresh occurrence does not inherit them."""
NOT_INHERITED = RUN_STATE_FIELDS | retries.HASH_FIELDS  # retries: from the policy, whole for each run
COPY_COMMAND = 'DRQS_COPY_TEMPLATE'
"""A step of ``move_script.MOVE`` (not a Redis command): template key, occurrence key, digest of the planning fields.
Checked before any write of its entry (0 if the digest differs); applied as HGETALL of the template and HSETs of
the inherited fields into the occurrence."""
PROBE = 'return redis.sha1hex and 1 or 0'


def supported(connection: Redis) -> bool:
    """Whether the server's Lua can check a digest (a Redis look-alike without it gets whole copies from the client)."""
    try:
        return bool(connection.eval(PROBE, 0) == 1)
    except ResponseError:
        return False


def digest(raw: Mapping[bytes, Any]) -> str:
    """SHA-1 of the planning fields of a template as read (empty and missing alike), as the move script computes it."""
    values = map(raw.get, PLANNING_FIELDS)
    try:  # the hot path: one per occurrence
        message = b'|'.join([b'%d:%s' % (len(value), value) if value else b'~' for value in values])
    except TypeError:  # text values (a connection decoding responses): their UTF-8 bytes, as Lua sees them
        encoded = [value.encode() if isinstance(value, str) else value for value in map(raw.get, PLANNING_FIELDS)]
        message = b'|'.join([b'%d:%s' % (len(value), value) if value else b'~' for value in encoded])
    return hashlib.sha1(message).hexdigest()


def copy_command(template_key: Any, occurrence_key: Any, raw: Mapping[bytes, Any]) -> tuple[Any, ...]:
    return (COPY_COMMAND, template_key, occurrence_key, digest(raw))


def _lua_strings(names: Any) -> str:
    return '{' + ', '.join(f"'{name.decode()}'" for name in names) + '}'


MOVE = (
    move_script.MOVE.replace('{COPY_PLANNING}', _lua_strings(PLANNING_FIELDS))
    .replace('{COPY_SKIPPED}', _lua_strings(sorted(NOT_INHERITED)))
    .replace('COPY_COMMAND', COPY_COMMAND)
)
"""``move_script.MOVE`` with the field lists of a copy formatted in: the script the mover runs."""
