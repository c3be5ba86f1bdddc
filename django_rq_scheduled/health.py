"""The health check of ``manage.py schedules health`` and of the health view: one verdict, told two ways.

Healthy when, on every Redis server of ``RQ_QUEUES``, Redis answers, a scheduler of ours holds the lease with a
fresh heartbeat, and no due entry waits longer than the lateness limit. Dead letters, failing schedules and a pause
(``schedules pause``; overdue jobs of paused queues are its backlog, not a problem) are warnings, problems only
when strict. A report names each server by its queues, never by its URL.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.db import DatabaseError

from .conf import seconds_setting
from .core import keys
from .core.health import ServerHealth, bounded, read_health
from .pausing import describe_state
from .servers import servers

logger = logging.getLogger(__name__)


@dataclass
class Report:
    max_lateness: float
    strict: bool = False
    servers: list[tuple[str, ServerHealth]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failing_schedules: int | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def healthy(self) -> bool:
        return not self.problems and not (self.strict and self.warnings)

    def as_json(self) -> dict[str, Any]:
        return {
            'verdict': 'healthy' if self.healthy else 'unhealthy',
            'checked_at': self.checked_at.isoformat(),
            'max_lateness': self.max_lateness,
            'strict': self.strict,
            'servers': [_server_json(name, health) for name, health in self.servers],
            'failing_schedules': self.failing_schedules,
            'warnings': self.warnings,
            'problems': self.problems,
        }

    def as_text(self) -> str:
        lines = [f'{"Healthy" if self.healthy else "Unhealthy"}: {len(self.servers)} Redis server(s) checked.']
        lines += [f'Problem: {problem}' for problem in self.problems]
        lines += [f'Warning{" (strict: a problem)" if self.strict else ""}: {warning}' for warning in self.warnings]
        return '\n'.join(lines)


def check(*, max_lateness: float | None = None, strict: bool = False) -> Report:
    """Checks every Redis server of ``RQ_QUEUES`` and the schedules' failures; never raises for an outage."""
    report = Report(max_lateness if max_lateness is not None else seconds_setting('HEALTH_MAX_LATENESS'), strict)
    known = servers()
    if not known.schedulers:
        report.problems.append('RQ_QUEUES is empty: there is no Redis server to schedule on.')
    for identity, scheduler in known.schedulers.items():
        name = known.name_of(identity)
        health = _read(scheduler.connection, report.max_lateness)
        report.servers.append((name, health))
        report.problems += server_problems(name, health, report.max_lateness)
        if pause_text := paused_text(health):
            report.warnings.append(f'{name}: {pause_text}')
        if health.dead_letters:
            report.warnings.append(
                f'{name}: {health.dead_letters} dead letter(s): jobs the scheduler could not move (see the '
                'scheduler status page).'
            )
    _count_failing(report)
    return report


def _read(connection: Any, max_lateness: float) -> ServerHealth:
    client, close = bounded(connection)
    try:
        return read_health(client, max_lateness)
    finally:
        close()


BEATS_BEFORE_STALE = 3


def stale_after(health: ServerHealth) -> float:
    """Seconds after which the leader's heartbeat is stale: it beats at every tick, at least every third of its
    lease, so one that missed a whole lease's worth of beats is stuck (paused, frozen, blocked) while it leads.

    A leader whose own ``--interval`` and ``--lease-ttl`` make it beat less often (it records how often) is given
    three of its beats.
    """
    return max(seconds_setting('LEASE_TTL'), BEATS_BEFORE_STALE * (health.leader_beat_period or 0))


def server_problems(name: str, health: ServerHealth, max_lateness: float) -> list[str]:
    if not health.reachable:
        return [f'{name}: Redis unreachable ({health.error}).']
    problems = [f'{name}: {key} cannot be read ({why}).' for key, why in health.problems.items()]
    problems += _leader_problems(name, health)
    if health.overdue and not health.overdue_paused_only:
        problems.append(
            f'{name}: overdue backlog: {health.overdue} due job(s) waiting longer than {max_lateness:g} s '
            f'({health.due} due in all); the oldest has waited {_seconds(health.oldest_due_age)}.'
        )
    return problems


def paused_text(health: ServerHealth) -> str:
    """What a report says of a server's pause ('' if nothing is paused): a warning, never a problem unless strict."""
    state = health.pause
    text = f'scheduling paused: {describe_state(state)}' if state.any else ''
    if health.overdue and health.overdue_paused_only:
        text += f'; {health.overdue} overdue job(s) of paused queues wait for the resume'
    if state.problem:
        text = f'{keys.PAUSED_KEY} cannot be read ({state.problem}): nothing is paused'
    return text


def _leader_problems(name: str, health: ServerHealth) -> list[str]:
    if health.lock_held_by_others:
        return [
            f'{name}: the lock rq:scheduler_lock is held by another program (rq-scheduler?), not by manage.py '
            'rqscheduler: no scheduler of ours can lead.'
        ]
    if health.leader is None:
        return [f'{name}: no leader: no manage.py rqscheduler holds the lease.']
    age, limit = health.heartbeat_age, stale_after(health)
    if age is None:
        return [f'{name}: stale heartbeat: the leader {health.leader!r} has no heartbeat.']
    if not -limit <= age <= limit:
        return [
            f'{name}: stale heartbeat: the leader {health.leader!r} last beat {_seconds(age)} ago '
            f'(more than {limit:g} s).'
        ]
    return []


def _count_failing(report: Report) -> None:
    from .models import SCHEDULE_MODELS

    try:
        counts = [model._default_manager.failing().count() for model in SCHEDULE_MODELS]
    except DatabaseError as exc:
        logger.warning('Health check: cannot count the failing schedules: %s', exc)
        report.warnings.append(f'The database did not answer ({type(exc).__name__}): failing schedules not counted.')
        return
    report.failing_schedules = sum(counts)
    if report.failing_schedules:
        report.warnings.append(f'{report.failing_schedules} schedule(s) failing: their last run(s) failed.')


def _seconds(age: float | None) -> str:
    if age is None or not math.isfinite(age):
        return 'forever'
    return f'{age:.3f} s' if abs(age) < 10 else f'{age:,.0f} s'


def _server_json(name: str, health: ServerHealth) -> dict[str, Any]:
    return {
        'name': name,
        'reachable': health.reachable,
        'error': health.error or None,
        'leader': health.leader,
        'heartbeat_age': _json_seconds(health.heartbeat_age),
        'leader_beat_period': health.leader_beat_period,
        'due': health.due,
        'overdue': health.overdue,
        'oldest_due_age': _json_seconds(health.oldest_due_age),
        'dead_letters': health.dead_letters,
        'paused': health.pause.as_json(),
        'overdue_paused_only': health.overdue_paused_only,
    }


def _json_seconds(age: float | None) -> float | None:
    """Rounded to the millisecond; an age no number can tell (a score of -inf written by others) is null."""
    return round(age, 3) if age is not None and math.isfinite(age) else None
