"""Pausing and resuming the scheduling on the Redis servers of ``RQ_QUEUES``: what ``manage.py schedules pause`` /
``resume`` and the status page's buttons call. The pause itself lives in Redis (``core.pause``), one per server.

Everything, or some queues: everything is paused on every server; a queue is paused on the server it is on.
Resuming everything lifts every pause (of everything and of each queue); resuming a queue lifts that queue's own
pause only, never a pause of everything.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis

from .core import keys, pause
from .core.pause import PauseRecord, PauseState
from .servers import servers


@dataclass
class ServerPause:
    """One Redis server's part of a pause or a resume: scope → whether it changed, and its pause afterwards."""

    name: str
    changed: dict[str, bool] = field(default_factory=dict)
    state: PauseState | None = None
    error: str = ''
    """The kind of Redis error when the server refused or did not answer (its text names the host)."""


class UnknownQueue(ValueError):
    pass


def _targets(queues: list[str] | None, server: str | None) -> dict[tuple[Any, ...], list[str] | None]:
    """Server identity → the queues to act on there (None: everything), on every server or on the one named;
    unknown queues (or queues of another server) are refused before any write."""
    known = servers()
    homes = {identity: known.name_of(identity) for identity in known.schedulers}
    if server is not None and server not in homes.values():
        raise UnknownQueue('server: unknown Redis server.')
    chosen = [identity for identity, name in homes.items() if server in (None, name)]
    if queues is None:
        return dict.fromkeys(chosen)
    unknown = sorted(queue for queue in set(queues) if known.queue_home.get(queue) not in chosen)
    if unknown:
        raise UnknownQueue(
            f'queue: unknown queue(s) {", ".join(map(repr, unknown))}; RQ_QUEUES has {sorted(known.queue_home)}'
        )
    grouped: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for queue in dict.fromkeys(queues):
        grouped[known.queue_home[queue]].append(queue)
    return dict(grouped)


def _each_server(queues: list[str] | None, server: str | None, act: Any) -> list[ServerPause]:
    known = servers()
    results = []
    for identity, scoped in _targets(queues, server).items():
        connection = known.schedulers[identity].connection
        result = ServerPause(known.name_of(identity))
        try:
            result.changed = act(connection, scoped)
            result.state = pause.read_pause(connection)
        except redis.RedisError as exc:
            result.error = type(exc).__name__ if not isinstance(exc, redis.ResponseError) else str(exc)
        results.append(result)
    return results


def pause_scheduling(
    queues: list[str] | None, *, by: str, reason: str = '', server: str | None = None
) -> list[ServerPause]:
    """Pauses everything (``queues`` None) or these queues, on every server or the one named (as pages name it).
    Refuses unknown queues and a reason too long (ValueError naming its argument) before it writes anything; a
    server that fails is reported, not raised."""
    if problem := pause.reason_problem(reason):
        raise ValueError(f'reason: {problem}')
    now = time.time()
    return _each_server(
        queues, server, lambda connection, scoped: pause.pause(connection, scoped, by=by, reason=reason, now=now)
    )


def resume_scheduling(queues: list[str] | None, *, server: str | None = None) -> list[ServerPause]:
    """Resumes everything (``queues`` None) or these queues' own pauses; see the module's docstring."""
    return _each_server(queues, server, pause.resume)


def pause_states() -> list[tuple[str, PauseState | None]]:
    """Each server's pause (None for a server that does not answer)."""
    known = servers()
    states: list[tuple[str, PauseState | None]] = []
    for identity, scheduler in known.schedulers.items():
        try:
            states.append((known.name_of(identity), pause.read_pause(scheduler.connection)))
        except redis.RedisError:
            states.append((known.name_of(identity), None))
    return states


def describe(record: PauseRecord) -> str:
    """ "by alice, since 2030-06-01 12:00:00 UTC: deploy", with what the record knows."""
    parts = [f'by {record.by}' if record.by else 'by someone unknown']
    if record.at is not None:
        with contextlib.suppress(ValueError, OverflowError, OSError):  # a time no date can hold is left out
            parts.append(f'since {datetime.fromtimestamp(record.at, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC')
    text = ', '.join(parts)
    return f'{text}: {record.reason}' if record.reason else text


def describe_state(state: PauseState) -> str:
    """ "every queue (by alice, since …: deploy); queue high (by …)": what is paused on a server."""
    scopes = [f'every queue ({describe(state.everything)})'] if state.everything else []
    scopes += [f'queue {queue} ({describe(record)})' for queue, record in sorted(state.queues.items())]
    return '; '.join(scopes)


def scope_name(scope: str) -> str:
    return 'every queue' if scope == keys.PAUSE_ALL else f'queue {scope}'
