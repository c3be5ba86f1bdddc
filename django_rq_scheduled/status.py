"""What the admin's status page shows about one Redis server: leader, standbys, schedule, dead letters."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from . import keys

TEMPLATE_PREFIX = 'drqs-'


@dataclass
class Instance:
    name: str
    hostname: str = ''
    pid: str = ''
    role: str = ''
    last_heartbeat: float | None = None
    leader_since: float | None = None


@dataclass
class DeadLetter:
    job_id: str
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
    scheduled_count: int
    next_due: list[tuple[str, float]]
    dead_letters: list[DeadLetter]
    unowned: list[tuple[str, float]]
    read_at: float = field(default_factory=time.time)

    @property
    def lease_age(self) -> float | None:
        if self.leader and self.leader.leader_since:
            return self.read_at - self.leader.leader_since
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or '')


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _instance(name: str, raw: dict[bytes, bytes]) -> Instance:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return Instance(
        name=name,
        hostname=fields.get('hostname', ''),
        pid=fields.get('pid', ''),
        role=fields.get('role', ''),
        last_heartbeat=_number(fields.get('last_heartbeat')),
        leader_since=_number(fields.get('leader_since')),
    )


def _dead_letter(job_id: str, raw: bytes) -> DeadLetter:
    try:
        data = json.loads(raw)
    except ValueError:
        data = {'reason': _text(raw)}
    return DeadLetter(job_id, str(data.get('reason', '')), _number(data.get('score')), _number(data.get('at')))


def read_status(connection: Any, *, due_limit: int = 20, scan_count: int = 1000) -> Status:
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(keys.LOCK_KEY)
        pipe.pttl(keys.LOCK_KEY)
        pipe.zrange(keys.INSTANCES_KEY, 0, -1)
        pipe.zcard(keys.SCHEDULED_JOBS_KEY)
        pipe.zrange(keys.SCHEDULED_JOBS_KEY, 0, due_limit - 1, withscores=True)
        pipe.hgetall(keys.DEAD_LETTERS_KEY)
        pipe.zscan(keys.SCHEDULED_JOBS_KEY, 0, count=scan_count)
        lock, pttl, names, count, due, dead, (_, scanned) = pipe.execute()
    names = [_text(name) for name in names]
    lock_value = _text(lock)
    leader_name = keys.lease_holder(lock_value)
    if leader_name and leader_name not in names:
        names.append(leader_name)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.instance_key(name))
        instances = [_instance(name, raw) for name, raw in zip(names, pipe.execute())]
    leader = next((i for i in instances if i.name == leader_name), None)
    return Status(
        leader=leader,
        leader_is_rq_scheduler=bool(lock_value) and leader_name is None,
        lease_ttl_ms=max(0, int(pttl or 0)),
        standbys=[i for i in instances if i.name != leader_name],
        scheduled_count=count,
        next_due=[(_text(member), score) for member, score in due],
        dead_letters=sorted((_dead_letter(_text(k), v) for k, v in dead.items()), key=lambda d: d.at or 0),
        unowned=[(_text(m), s) for m, s in scanned if not _text(m).startswith(TEMPLATE_PREFIX)],
    )
