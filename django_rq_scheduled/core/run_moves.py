"""The plain run of a periodic template, sent to the move script in its compact form ('P').

Most moves of a periodic template are one shape: (its version checked, when planned ahead) its run's job hash
written, the run pushed onto its queue, the template's own fields updated, the template rescheduled, and its run
recorded. Spelled out command by command (``move_script.MOVE``'s 'G' and 'H') that is about 70 arguments and eight
commands a run, most of them the same for every run of a batch. In the compact form the fields every run shares
are sent once per batch, and the script writes the pushes, the reschedules and the records of many runs with one
command per key. The planner's commands stay the reference: an entry is sent compactly only if its commands are
exactly that shape (``compact_run``); anything else is sent as it is.
"""

from __future__ import annotations

from typing import Any

from . import compact, keys
from .overlap import EXPECT_COMMAND

PUSHES = ('RPUSH', 'LPUSH')
OWN_FIELDS = frozenset({b'data', b'description', b'meta'})
"""Fields of a run's job hash that differ from run to run; the others are sent once for a batch's runs."""


class SharedFields:
    """The run fields the move script holds from the previous 'P' entry of the same call."""

    def __init__(self) -> None:
        self.last: list[Any] | None = None

    def argv(self, fields: list[Any]) -> list[Any]:
        if fields == self.last:
            return [0]
        self.last = fields
        return [len(fields), *fields]


def compact_run(entry: Any, shared: SharedFields) -> list[Any] | None:
    """The 'P' entry's arguments after member and score (``move_script.MOVE``), or None if ``entry`` is not the plain
    run of a periodic template."""
    if entry.one_off is not None or entry.slow_path or not entry.enqueued_id or not entry.requires_hash:
        return None
    parts = _parts(entry)
    if parts is None:
        return None
    version, run_fields, ttl, queue_key, push, template_fields, next_score, record = parts
    shared_fields: list[Any] = []
    own_fields: list[Any] = []
    for name, value in zip(run_fields[::2], run_fields[1::2]):
        named = name.encode() if isinstance(name, str) else name
        (own_fields if named in OWN_FIELDS else shared_fields).extend((name, value))
    if not shared_fields:
        return None
    return [
        'P', version, entry.enqueued_id, *shared.argv(shared_fields), len(own_fields), *own_fields, ttl,
        len(template_fields), *template_fields, next_score, queue_key, push, record,
    ]  # fmt: skip


def _parts(entry: Any) -> tuple[Any, ...] | None:
    """The commands of a plain run, taken apart; None for any other move."""
    template_key, run_key = keys.job_key(entry.member), keys.job_key(entry.enqueued_id)
    commands = list(entry.commands)
    version = ''
    if commands and commands[0][0] == EXPECT_COMMAND:
        expectation = commands.pop(0)
        if expectation[1:3] != (template_key, compact.VERSION_FIELD) or not expectation[3]:
            return None
        version = expectation[3]
    if len(commands) not in (5, 6, 7) or not _is(commands[0], 'HSET', run_key) or len(commands[0]) % 2:
        return None
    run_fields = commands.pop(0)[2:]
    registered, pushed = commands.pop(0), commands.pop(0)
    ttl = ''
    if commands[0][0] == 'EXPIRE':  # a template with a ttl gives its runs one
        if len(commands[0]) != 3 or commands[0][1] != run_key:
            return None
        ttl = commands.pop(0)[2]
    if len(commands) not in (2, 3):
        return None
    template, rescheduled, *recorded = commands
    queue_key = pushed[1] if len(pushed) == 3 else None
    plain = (
        registered == ('SADD', keys.QUEUES_SET_KEY, queue_key)
        and pushed[0] in PUSHES
        and pushed[2] == entry.enqueued_id
        and _is(template, 'HSET', template_key)
        and len(template) % 2 == 0
        and rescheduled[:2] == ('ZADD', keys.SCHEDULED_JOBS_KEY)
        and len(rescheduled) == 4
        and rescheduled[3] == entry.member
        and all(len(record) == 3 and record[:2] == ('RPUSH', keys.RUNS_KEY) for record in recorded)
    )
    if not plain:
        return None
    record = recorded[0][2] if recorded else ''
    return version, run_fields, ttl, queue_key, pushed[0], template[2:], rescheduled[2], record


def _is(command: tuple[Any, ...], name: str, key: str | bytes) -> bool:
    return len(command) >= 2 and command[0] == name and command[1] == key
