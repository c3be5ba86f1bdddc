"""The health of the scheduler on one Redis server: does Redis answer, does a leader hold the lease and beat, is
anything due waiting longer than it should.

Read in one round trip (two when something is due), by the Redis server's clock. As on the status page, anyone
with access to the server may have written what is read here: a key of the wrong type becomes a problem, a lock
that is not ours says so, and a heartbeat is read from the instances set, whose scores are always numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from . import keys, limits, scripts
from .due_reads import DueReader
from .pause import PauseState, queue_pause_read, state_from
from .status import Member, leader_name, readable_replies, server_seconds

SHOWN_NAME_LENGTH = 200
"""Of a leader's name in a report: instance names are at most this long; a lock written by others may be longer."""
TIMEOUT = 3.0
"""Seconds each Redis server has to answer the health check, where the project's settings give it longer."""


@dataclass
class ServerHealth:
    """What the health check found on one Redis server. Ages are seconds by the server's clock."""

    reachable: bool = True
    error: str = ''
    """The kind of error when Redis did not answer (never its text, which names the host)."""
    leader: str | None = None
    lock_held_by_others: bool = False
    """The lock is held, but not by a scheduler of ours: rq-scheduler's own, or anything else."""
    heartbeat_age: float | None = None
    leader_beat_period: float | None = None
    """The longest the leader waits between heartbeats (from its ``--interval`` and ``--lease-ttl``), when it
    recorded a usable one."""
    due: int = 0
    overdue: int = 0
    """Due entries waiting longer than the lateness limit."""
    oldest_due_age: float | None = None
    dead_letters: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    """Key → why it could not be read (a key of the wrong type)."""
    pause: PauseState = field(default_factory=PauseState)
    overdue_paused_only: bool = False
    """Every overdue entry belongs to a paused queue: the backlog is the pause's, not a stuck scheduler's."""


def queue_leadership_reads(pipe: Any) -> None:
    """Adds the reads of ``leadership_from`` to a pipeline, so that a page can read them with its own."""
    pipe.get(keys.LOCK_KEY)
    pipe.zrange(keys.INSTANCES_KEY, 0, -1, withscores=True)
    pipe.zrange(keys.SCHEDULED_JOBS_KEY, 0, 0, withscores=True)
    pipe.hlen(keys.DEAD_LETTERS_KEY)
    pipe.get(keys.LEADER_BEAT_KEY)
    queue_pause_read(pipe)
    pipe.time()  # ages by the server's clock, the one the schedulers judge by


_READ_KEYS = (
    keys.LOCK_KEY, keys.INSTANCES_KEY, keys.SCHEDULED_JOBS_KEY, keys.DEAD_LETTERS_KEY, keys.LEADER_BEAT_KEY,
)  # fmt: skip


def leadership_from(replies: list[Any]) -> tuple[ServerHealth, float, float | None]:
    """The health read from the replies of ``queue_leadership_reads``, the server's time, and the earliest due
    time in the schedule (None when it is empty or unreadable)."""
    health = ServerHealth()
    *reads, pause_reply, server_time = replies
    lock, instances, first, dead, beat_period = readable_replies(reads, _READ_KEYS, health.problems)
    health.pause = state_from(pause_reply)
    # A managed Redis may rename TIME away: the loop then keeps its host's clock, and so does the check.
    now = server_seconds(None if isinstance(server_time, Exception) else server_time)
    leader = leader_name(lock) if isinstance(lock, bytes) else None
    health.lock_held_by_others = bool(lock) and leader is None
    if leader is not None:
        health.leader = Member(leader).text[:SHOWN_NAME_LENGTH]
        beats = dict(instances or [])
        health.heartbeat_age = now - beats[leader] if leader in beats else None
        health.leader_beat_period = _beat_period(beat_period)
    health.dead_letters = dead or 0
    earliest = first[0][1] if first else None
    if earliest is not None and earliest <= now:
        health.oldest_due_age = now - earliest
    return health, now, earliest


def _beat_period(raw: Any) -> float | None:
    """A recorded beat period the loop could run with; anything else (written by someone else) is ignored."""
    try:
        seconds = float(raw)
    except (TypeError, ValueError, OverflowError):  # None, bytes that are no number, a bool-looking text
        return None
    return seconds if limits.seconds_problem(seconds) is None else None


def read_health(connection: redis.Redis, max_lateness: float) -> ServerHealth:
    """The health of the scheduler on the server of ``connection``; a server that does not answer is reported as
    unreachable, never raised."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            queue_leadership_reads(pipe)
            health, now, earliest = leadership_from(pipe.execute(raise_on_error=False))
        if earliest is not None and earliest <= now:
            _count_due(connection, health, now, max_lateness)
    except redis.RedisError as exc:
        # Refused as a whole (NOAUTH, a wrong password) or not answering: either way the scheduler cannot work.
        return ServerHealth(reachable=False, error=type(exc).__name__)
    return health


def _count_due(connection: redis.Redis, health: ServerHealth, now: float, max_lateness: float) -> None:
    with connection.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', now)
        pipe.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', f'({now - max_lateness}')
        due, overdue = readable_replies(pipe.execute(raise_on_error=False), _READ_KEYS[2:3] * 2, health.problems)
    health.due, health.overdue = due or 0, overdue or 0
    if health.overdue and health.pause.any:
        health.overdue_paused_only = health.pause.everything is not None or not _overdue_of_running_queues(
            connection, now - max_lateness
        )


def _overdue_of_running_queues(connection: redis.Redis, latest: float) -> bool:
    """Whether an entry due before ``latest`` belongs to a queue that is not paused (read as the loop reads, which
    steps over paused ones)."""
    reader = DueReader(connection.register_script(scripts.READ_DUE), keys.JOB_KEY_PREFIX, [b'origin'])
    return bool(reader.read(latest, 0, 1).pairs)


def bounded(connection: redis.Redis, seconds: float | None = None) -> tuple[redis.Redis, Callable[[], None]]:
    """A client of the same server that waits at most ``seconds`` (``TIMEOUT``) for an answer, and how to close it.

    A health check must answer, even about a server that accepts connections and never replies: the project's
    client may wait for as long as TCP does. Pools of other kinds (Sentinel's) keep their own timeouts.
    """
    pool = connection.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        return connection, lambda: None
    kwargs = dict(pool.connection_kwargs)
    for name in ('socket_timeout', 'socket_connect_timeout'):
        kwargs[name] = min(kwargs.get(name) or math.inf, TIMEOUT if seconds is None else seconds)
    own = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=own), own.disconnect
