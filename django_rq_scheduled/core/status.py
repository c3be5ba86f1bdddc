"""What the admin's status page shows about one Redis server: leader, standbys, schedule, dead letters.

Anyone with access to the server may have written what is read here, so nothing is trusted: names and members
stay raw bytes (shown escaped, removed by their exact bytes), numbers may be missing, infinite or beyond any date,
and a key of the wrong type becomes a problem the page reports while it shows the rest.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from . import keys


@dataclass(frozen=True)
class Member:
    """A schedule member, dead-letter field or instance name exactly as Redis holds it: any bytes."""

    raw: bytes

    @property
    def text(self) -> str:
        """For display: bytes that are not UTF-8 appear as ``\\xff`` escapes."""
        return self.raw.decode('utf-8', 'backslashreplace')

    @property
    def job_id(self) -> str | None:
        """The member as an RQ job id, or None when it is not one."""
        try:
            text = self.raw.decode()
        except UnicodeDecodeError:
            return None
        return text if keys.is_job_id(text) else None

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.text


@dataclass
class Instance:
    name: Member
    hostname: str = ''
    pid: str = ''
    role: str = ''
    last_heartbeat: float | None = None
    leader_since: float | None = None


@dataclass
class DeadLetter:
    member: Member
    reason: str
    score: float | None
    at: float | None


@dataclass
class Status:
    """A snapshot of one server's scheduler state, read in two round trips."""

    leader: Instance | None
    leader_is_rq_scheduler: bool
    lease_ttl_ms: int
    standbys: list[Instance]
    scheduled_count: int | None
    next_due: list[tuple[Member, float]]
    dead_letters: list[DeadLetter]
    scanned: list[tuple[Member, float]]
    """The entries of one scan of the schedule (up to ``scan_count``, in no order): the Django side tells which of
    them no row owns."""
    problems: dict[str, str] = field(default_factory=dict)
    """Key → why it could not be read (a key of the wrong type): that part of the snapshot is left empty."""
    read_at: float = field(default_factory=time.time)

    @property
    def lease_age(self) -> float | None:
        since = self.leader.leader_since if self.leader else None
        age = self.read_at - since if since is not None else None
        return age if age is not None and math.isfinite(age) else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode('utf-8', 'backslashreplace')
    return '' if value is None else str(value)


def _number(value: Any) -> float | None:
    """A number (infinite ones included: the page shows them as such), or None for NaN and anything else."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def _instance(name: Member, raw: dict[bytes, bytes]) -> Instance:
    fields = {_text(k): v for k, v in raw.items()}
    return Instance(
        name=name,
        hostname=_text(fields.get('hostname')),
        pid=_text(fields.get('pid')),
        role=_text(fields.get('role')),
        last_heartbeat=_number(fields.get('last_heartbeat')),
        leader_since=_number(fields.get('leader_since')),
    )


def _dead_letter(member: Member, raw: bytes) -> DeadLetter:
    try:
        data = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        data = None
    if not isinstance(data, dict):
        return DeadLetter(member, _text(raw), None, None)
    return DeadLetter(member, _text(data.get('reason', '')), _number(data.get('score')), _number(data.get('at')))


def leader_name(lock: bytes | None) -> bytes | None:
    """The raw name of the scheduler of ours holding the lock, or None (no lock, or rq-scheduler's)."""
    if not lock:
        return None
    # surrogateescape round-trips any bytes, so the name matches its raw spelling in the instances set.
    holder = keys.lease_holder(lock.decode('utf-8', 'surrogateescape'))
    return None if holder is None else holder.encode('utf-8', 'surrogateescape')


def readable_replies(replies: list[Any], keys_read: Sequence[str | bytes], problems: dict[str, str]) -> list[Any]:
    """The replies, with each read refused by Redis (a key of the wrong type) noted as a problem and set to None."""
    readable = []
    for reply, key in zip(replies, keys_read):
        if isinstance(reply, redis.ResponseError):
            problems[_text(key)] = str(reply)
            reply = None
        readable.append(reply)
    return readable


def _read_overview(connection: Any, due_limit: int, scan_count: int, problems: dict[str, str]) -> list[Any]:
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(keys.LOCK_KEY)
        pipe.pttl(keys.LOCK_KEY)
        pipe.zrange(keys.INSTANCES_KEY, 0, -1)
        pipe.zcard(keys.SCHEDULED_JOBS_KEY)
        pipe.zrange(keys.SCHEDULED_JOBS_KEY, 0, due_limit - 1, withscores=True)
        pipe.hgetall(keys.DEAD_LETTERS_KEY)
        pipe.zscan(keys.SCHEDULED_JOBS_KEY, 0, count=scan_count)
        pipe.time()  # ages are told by the server's clock, the one the schedulers judge by
        replies = pipe.execute(raise_on_error=False)
    lock, instances, schedule, dead = keys.LOCK_KEY, keys.INSTANCES_KEY, keys.SCHEDULED_JOBS_KEY, keys.DEAD_LETTERS_KEY
    return readable_replies(replies, [lock, lock, instances, schedule, schedule, dead, schedule, 'TIME'], problems)


def _read_instances(connection: Any, names: list[bytes], problems: dict[str, str]) -> list[Instance]:
    instance_keys = [keys.INSTANCE_KEY_PREFIX.encode() + name for name in names]
    with connection.pipeline(transaction=False) as pipe:
        for key in instance_keys:
            pipe.hgetall(key)
        replies = readable_replies(pipe.execute(raise_on_error=False), instance_keys, problems)
    return [_instance(Member(name), raw or {}) for name, raw in zip(names, replies)]


def read_status(connection: Any, *, due_limit: int = 20, scan_count: int = 1000) -> Status:
    problems: dict[str, str] = {}
    lock, pttl, names, count, due, dead, scan, server_time = _read_overview(connection, due_limit, scan_count, problems)
    names = list(names or [])
    holder = leader_name(lock)
    if holder and holder not in names:
        names.append(holder)
    instances = _read_instances(connection, names, problems)
    leader = next((i for i in instances if i.name.raw == holder), None)
    scanned = scan[1] if scan else []
    return Status(
        leader=leader,
        leader_is_rq_scheduler=bool(lock) and holder is None,
        lease_ttl_ms=max(0, int(pttl or 0)),
        standbys=[i for i in instances if i.name.raw != holder],
        scheduled_count=count,
        next_due=[(Member(member), score) for member, score in due or []],
        dead_letters=sorted((_dead_letter(Member(k), v) for k, v in (dead or {}).items()), key=lambda d: d.at or 0),
        scanned=[(Member(member), score) for member, score in scanned],
        problems=problems,
        read_at=server_seconds(server_time),
    )


def server_seconds(server_time: Any) -> float:
    if isinstance(server_time, (tuple, list)) and len(server_time) == 2:
        return float(server_time[0]) + float(server_time[1]) / 1e6
    return time.time()


def backlog_and_dead_letters(connection: Any, now: float) -> tuple[int, int]:
    """How many entries of the schedule are due at ``now`` and how many jobs are dead letters: one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', repr(now))
        pipe.hlen(keys.DEAD_LETTERS_KEY)
        due, dead = pipe.execute()
    return int(due), int(dead)
