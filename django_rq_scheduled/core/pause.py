"""The pause of one Redis server: every queue of it, or some of its queues, with who paused them, when and why.

The one place that reads and writes the pause key (``keys.PAUSED_KEY``, a hash of scope → JSON record). The loop
honours it without asking here: its Lua read of the due jobs steps over the entries of paused queues (they stay
in the schedule with their scores), and its Lua move leaves them alone, so a pause set in the middle of a batch
holds from the next move on. What a field holds is only shown: the field itself is the pause, so a record someone
else wrote (junk, not JSON) still pauses its scope. A pause key that is not a hash pauses nothing (the loop logs it
once); a pause or resume then fails with Redis's WRONGTYPE error, for a person to see.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from . import keys, limits, scripts
from .status import Member


@dataclass(frozen=True)
class PauseRecord:
    """Who paused a scope, when (epoch seconds, None if unknown) and why, as recorded."""

    by: str = ''
    at: float | None = None
    reason: str = ''

    def as_json(self) -> dict[str, Any]:
        return {'by': self.by, 'at': self.at, 'reason': self.reason}


@dataclass
class PauseState:
    """The pause of one Redis server."""

    everything: PauseRecord | None = None
    """Set when every queue is paused."""
    queues: dict[str, PauseRecord] = field(default_factory=dict)
    """Queues paused one by one (they stay paused after everything is resumed only if resumed one by one)."""
    problem: str = ''
    """Why the pause key cannot be read ('' if it can): it then pauses nothing."""

    @property
    def any(self) -> bool:
        return self.everything is not None or bool(self.queues)

    def paused(self, queue: str) -> bool:
        return self.everything is not None or queue in self.queues

    def as_json(self) -> dict[str, Any]:
        return {
            'everything': self.everything.as_json() if self.everything else None,
            'queues': {name: record.as_json() for name, record in self.queues.items()},
            'problem': self.problem or None,
        }


def record_of(raw: bytes | str) -> PauseRecord:
    """A stored record as it can be read: junk (written by someone else) is an unknown record, never an error."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return PauseRecord()
    if not isinstance(data, dict):
        return PauseRecord()
    at = data.get('at')
    when = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) else None
    return PauseRecord(_text(data.get('by')), when, _text(data.get('reason')))


def _text(value: object) -> str:
    return value[: limits.MAX_PAUSE_REASON] if isinstance(value, str) else ''


def state_from(reply: Any) -> PauseState:
    """The pause read from the reply of ``HGETALL keys.PAUSED_KEY`` (an exception if Redis refused it)."""
    if isinstance(reply, redis.ResponseError):
        return PauseState(problem=str(reply))
    if isinstance(reply, Exception):
        raise reply
    state = PauseState()
    for scope, raw in (reply or {}).items():
        name = _name(scope)
        if name == keys.PAUSE_ALL:
            state.everything = record_of(raw)
        else:
            state.queues[name] = record_of(raw)
    return state


def queue_pause_read(pipe: Any) -> None:
    """Adds the read of ``state_from`` to a pipeline, for a page that reads other keys in the same round trip."""
    pipe.hgetall(keys.PAUSED_KEY)


def read_pause(connection: redis.Redis) -> PauseState:
    """The pause of the server of ``connection``; a pause key of the wrong type is a problem, not an error."""
    with connection.pipeline(transaction=False) as pipe:
        queue_pause_read(pipe)
        return state_from(pipe.execute(raise_on_error=False)[0])


def _name(scope: bytes | str) -> str:
    return Member(scope if isinstance(scope, bytes) else scope.encode()).text


def reason_problem(reason: object) -> str | None:
    if not isinstance(reason, str) or len(reason) > limits.MAX_PAUSE_REASON or '\x00' in reason:
        return f'expected at most {limits.MAX_PAUSE_REASON} characters (no NUL), got {reason!r:.80}'
    return None


def pause(
    connection: redis.Redis, queues: Iterable[str] | None, *, by: str, reason: str, now: float
) -> dict[str, bool]:
    """Pauses every queue of the server (``queues`` None) or these queues; scope → True if it was not paused yet.

    A scope already paused keeps its record (who paused it first, and since when); a reason given replaces its
    reason.
    """
    if problem := reason_problem(reason):
        raise ValueError(f'reason: {problem}')
    # To the millisecond: the script's JSON encoder keeps 14 digits when it rewrites a record's reason.
    record = json.dumps({'by': by[: limits.MAX_NAME_LENGTH], 'at': round(now, 3), 'reason': reason})
    script = connection.register_script(scripts.PAUSE)
    scopes = [keys.PAUSE_ALL] if queues is None else list(queues)
    return {scope: script(keys=[keys.PAUSED_KEY], args=[scope, record, reason]) == 1 for scope in scopes}


def resume(connection: redis.Redis, queues: Iterable[str] | None) -> dict[str, bool]:
    """Resumes everything (``queues`` None: the pause of every queue and of each queue) or these queues' own
    pauses; scope → True if it was paused. Resuming a queue does not lift a pause of every queue.

    Wakes the leader, so that what became due during the pause moves at once.
    """
    with connection.pipeline(transaction=True) as pipe:
        pipe.hkeys(keys.PAUSED_KEY)
        if queues is None:
            pipe.delete(keys.PAUSED_KEY)
        else:
            for queue in queues:
                pipe.hdel(keys.PAUSED_KEY, queue)
        pipe.delete(keys.WAKEUP_KEY)
        pipe.rpush(keys.WAKEUP_KEY, '1')
        pipe.pexpire(keys.WAKEUP_KEY, 60_000)
        before, *_ = pipe.execute()
    was = {_name(scope) for scope in before}
    scopes = sorted(was) if queues is None else list(queues)
    return {scope: scope in was for scope in scopes}
