"""Reading the due jobs (``scripts.READ_DUE``): its arguments, its replies, and the further reads it takes to get
past a large backlog of entries of paused queues (each Lua call steps over at most ``limits.MAX_PAUSED_SCAN``, so
Redis is never blocked long). The mover reads through it, and so does the health check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from . import compact, keys, limits
from .moves import UNREADABLE

READ_DUE_KEYS = (keys.SCHEDULED_JOBS_KEY, keys.BUFFERED_KEY, keys.PAUSED_KEY)
Pairs = list[tuple[Any, Any]]
Fields = list[dict[bytes, bytes]]


@dataclass
class DueRead:
    """Due entries, earliest first, with the fields their moves are planned from, and what the read saw besides."""

    pairs: Pairs = field(default_factory=list)
    fields: Fields = field(default_factory=list)
    waits: bool = False
    """A buffered run waits (overlap buffer_one)."""
    stepped_over: int = 0
    """Due entries of paused queues the read stepped over; -1 when every queue is paused (nothing is read)."""
    more: bool = False
    """The read stopped at the step-over limit before it had all it asked for."""
    problem: str = ''
    """Why the pause key cannot be read (it then pauses nothing), or ''."""


class DueReader:
    """Reads due entries with one Lua script (the caller's, so that its loading is the caller's too)."""

    def __init__(self, script: Any, job_prefix: str, fields: Sequence[bytes | str]) -> None:
        self.script = script
        self.job_prefix = job_prefix
        self.fields = list(fields)

    def args(self, now: float, offset: int, count: int) -> list[Any]:
        return [self.job_prefix, repr(now), offset, count, limits.MAX_PAUSED_SCAN, *self.fields]

    def read(self, now: float, offset: int, count: int) -> DueRead:
        """Up to ``count`` entries due at ``now``, from the ``offset``-th due entry on, paused ones stepped over."""
        return self.finish(self.script(keys=READ_DUE_KEYS, args=self.args(now, offset, count)), now, offset, count)

    def finish(self, flat: list[Any], now: float, offset: int, count: int) -> DueRead:
        """The read of this reply (to ``args(now, offset, count)``), with the further reads it takes."""
        read = self.parse(flat)
        position = offset + read.stepped_over + len(read.pairs)
        while read.more and read.stepped_over >= 0 and len(read.pairs) < count:
            further = self.parse(
                self.script(keys=READ_DUE_KEYS, args=self.args(now, position, count - len(read.pairs)))
            )
            if further.stepped_over < 0:  # every queue paused meanwhile: the move script leaves the batch alone
                break
            position += further.stepped_over + len(further.pairs)
            read.pairs += further.pairs
            read.fields += further.fields
            read.stepped_over += further.stepped_over
            read.more, read.waits = further.more, read.waits or further.waits
        return read

    def parse(self, flat: list[Any]) -> DueRead:
        waits, stepped_over, more, problem, *rows_flat = flat
        width = 3 + len(self.fields)
        rows = [rows_flat[start : start + width] for start in range(0, len(rows_flat), width)]
        names = [name.encode() if isinstance(name, str) else name for name in self.fields]
        return DueRead(
            pairs=[(row[0], row[1]) for row in rows],
            fields=[
                {UNREADABLE: row[2]} if row[2] else {name: value for name, value in zip(names, row[3:]) if value}
                for row in rows
            ],
            waits=waits == 1,
            stepped_over=int(stepped_over),
            more=more == 1,
            problem=problem.decode(errors='replace') if isinstance(problem, bytes) else '',
        )


def whole_compact_templates(connection: Redis, members: Sequence[str | bytes], raws: list[Any]) -> list[Any]:
    """The planning fields of these members, with the whole hash of each compact template (``compact``): its meta
    is spread over its fields, which a planner reads before it can plan. One round trip, if there are any."""
    wanted = [index for index, raw in enumerate(raws) if compact.is_compact(raw)]
    if not wanted:
        return raws
    raws = list(raws)
    with connection.pipeline(transaction=False) as pipe:
        for index in wanted:
            pipe.hgetall(keys.job_key(members[index]))
        for index, whole in zip(wanted, pipe.execute(raise_on_error=False)):
            # A hash gone since it was read is missing, as if the read had found it gone.
            raws[index] = whole if isinstance(whole, dict) else {UNREADABLE: str(whole).encode()}
    return raws
