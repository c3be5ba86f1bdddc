"""What a chaos soak run means: every occurrence checked against the rules, each violation with the moments to look at.

Pure: it reads the soak's journal (which rows existed, when they were enabled or disabled, when the faults were) and
what Redis and the database held at the end. No Redis, no ORM; tests/test_chaos.py checks the rules on made-up runs.

The rules, for every row the soak created:

- nothing reaches a queue twice: no one-off id, no occurrence id (``<template id>_at_<epoch ms>``);
- a one-off that is enabled at the end ran exactly once (one disabled at its due time and enabled again later runs
  when it is enabled again); one disabled for good at least ``settle`` seconds before it fell due never ran; one
  disabled for good later than that ran at most once;
- an occurrence is on a slot of its schedule, not before its fire time, and not while its row was disabled for good;
- a periodic row with ``repeat = N`` ran at most N times, and exactly N if it had N + 2 clear slots to do it in;
- no slot of an enabled periodic row is missed while the loop was demonstrably moving: if the loop moved some job
  due at or after the slot before the next slot, it read the template too and had to run the slot (a leader that is
  down or late coalesces slots, and then moves nothing else either). Slots within ``settle`` seconds of a write of
  ``enabled``, or after a write whose sync failed (Redis down) until a reconciliation can have repaired it, are not
  expected;
- at the end the schedule and the dead letters are empty, and each row's run feedback (``run_count``, ``has_run``,
  ``last_run``, ``next_run``) agrees with what reached the queue.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django_rq_scheduled.core import cron

UTC = timezone.utc
EARLY_TOLERANCE = 0.002  # seconds: scores have millisecond precision
WITNESS_MARGIN = 0.02  # seconds: a witness move must be clearly after the slot and clearly before the next one
INFINITY = float('inf')


@dataclass
class Schedule:
    """One row the soak created, as the soak knows it: its definition and every write of its ``enabled`` field."""

    key: str
    kind: str  # 'once', 'interval' or 'cron'
    template_id: str = ''
    created: float = 0.0  # when its creation began: nothing of it runs before
    synced: float = 0.0  # when its creation, and its sync, were done: its first slot is the first after
    due: float | None = None  # a one-off's scheduled time
    start: float | None = None  # an interval row's first slot
    interval: float | None = None  # an interval row's period, in seconds
    cron: str | None = None
    repeat: int | None = None
    states: list[tuple[float, float, bool]] = field(default_factory=list)
    """(write began, write done, value written) of each write of ``enabled`` after the creation, in order."""
    blind: list[tuple[float, float]] = field(default_factory=list)
    """Windows in which Redis need not follow the row: a write whose sync failed (Redis down), until the
    reconciliation that repairs it."""

    @property
    def periodic(self) -> bool:
        return self.kind != 'once'

    def enabled_at(self, moment: float) -> bool | None:
        """The value of ``enabled`` at ``moment``; None while a write of it was in flight."""
        value = True
        for began, done, written in self.states:
            if began <= moment <= done:
                return None
            if done < moment:
                value = written
        return value

    def steady(self, low: float, high: float, enabled: bool) -> bool:
        """Whether ``enabled`` held this value during the whole of [low, high], no write of it in between."""
        if self.enabled_at(low) is not enabled:
            return False
        return not any(began <= high and done >= low for began, done, _ in self.states)

    def slots(self, low: float, high: float) -> list[float]:
        """The fire times (epoch seconds) of a periodic row in (low, high]."""
        if self.kind == 'interval':
            assert self.start is not None and self.interval
            out, n = [], max(0, math.floor((low - self.start) / self.interval))
            while (moment := round(self.start + n * self.interval, 3)) <= high:
                if moment > low:
                    out.append(moment)
                n += 1
            return out
        assert self.cron is not None
        out, moment = [], low
        while True:
            upcoming = cron.next_fire_time(self.cron, datetime.fromtimestamp(moment, tz=UTC), 'UTC')
            if upcoming is None or upcoming.timestamp() > high:
                return out
            moment = upcoming.timestamp()
            out.append(moment)

    def is_slot(self, fire_ms: int) -> bool:
        moment = fire_ms / 1000
        return self.slots(moment - 0.0005, moment + 0.0005) == [moment]

    def period_after(self, slot: float) -> float:
        """Seconds from ``slot`` to the next slot."""
        if self.kind == 'interval':
            assert self.interval
            return self.interval
        assert self.cron is not None
        upcoming = cron.next_fire_time(self.cron, datetime.fromtimestamp(slot, tz=UTC), 'UTC')
        return upcoming.timestamp() - slot if upcoming else INFINITY


@dataclass
class Observed:
    """What Redis and the database held after the drain."""

    pushes: Counter[str]  # job id → how many times it reached the queue
    enqueued_at: dict[str, float]  # job id → when the loop moved it (its hash's enqueued_at: the last move)
    scheduled: dict[str, float]  # what the schedule still held
    dead_letters: dict[str, str]
    rows: dict[str, dict[str, Any]]  # template id → the row's fields in the database
    elsewhere: dict[str, int] = field(default_factory=dict)  # other queue → jobs on it


@dataclass(frozen=True)
class Rules:
    settle: float
    """Seconds after a write of a row within which Redis follows it: the sync, or else a reconciliation."""
    drain_start: float
    """When the soak disabled every periodic row (the slots after it are not expected)."""
    faults: tuple[tuple[float, float], ...] = ()
    """(start, end) of each fault, end included the lease a successor waits for: the loop may be late there."""


@dataclass
class Violation:
    rule: str
    subject: str  # the job id or template id the rule is about
    detail: str
    moments: tuple[float, ...] = ()  # the times the evidence should show


@dataclass
class Findings:
    violations: list[Violation]
    figures: dict[str, Any]


@dataclass(frozen=True)
class Move:
    at: float  # when the loop moved it
    due: float  # when it was due
    job_id: str


def check(schedules: Iterable[Schedule], observed: Observed, rules: Rules) -> Findings:
    schedules = list(schedules)
    by_template = {schedule.template_id: schedule for schedule in schedules}
    occurrences, unknown = _attribute(observed.pushes, by_template)
    moves = _moves(observed, by_template)
    violations = [
        *_duplicates(observed, by_template),
        *(Violation('unknown job', job_id, 'reached the queue; no row of the soak owns it') for job_id in unknown),
        *_early(moves),
        *_leftovers(observed, by_template),
    ]
    for schedule in schedules:
        if schedule.periodic:
            violations += _check_periodic(schedule, occurrences[schedule.template_id], moves, rules)
        else:
            violations += _check_one_off(schedule, observed, rules)
        violations += _check_feedback(schedule, observed, occurrences[schedule.template_id])
    return Findings(violations, _figures(schedules, observed, occurrences, moves, violations))


def _attribute(pushes: Counter[str], by_template: dict[str, Schedule]) -> tuple[dict[str, dict[int, int]], list[str]]:
    """Occurrences per template (fire ms → pushes; a one-off is its own single occurrence), and unknown ids."""
    occurrences: dict[str, dict[int, int]] = defaultdict(dict)
    unknown = []
    for job_id, count in pushes.items():
        template, separator, fire_ms = job_id.partition('_at_')
        schedule = by_template.get(template)
        if schedule and not separator and not schedule.periodic:
            occurrences[template][round((schedule.due or 0) * 1000)] = count
        elif schedule and separator and schedule.periodic and fire_ms.isdigit():
            occurrences[template][int(fire_ms)] = count
        else:
            unknown.append(job_id)
    return occurrences, sorted(unknown)


def _due_of(job_id: str, by_template: dict[str, Schedule]) -> float | None:
    _, separator, fire_ms = job_id.partition('_at_')
    if separator:
        return int(fire_ms) / 1000 if fire_ms.isdigit() else None
    schedule = by_template.get(job_id)
    return schedule.due if schedule else None


def _moves(observed: Observed, by_template: dict[str, Schedule]) -> list[Move]:
    moves = []
    for job_id, moved_at in observed.enqueued_at.items():
        due = _due_of(job_id, by_template)
        if due is not None:
            moves.append(Move(moved_at, due, job_id))
    return sorted(moves, key=lambda move: move.at)


def _duplicates(observed: Observed, by_template: dict[str, Schedule]) -> list[Violation]:
    out = []
    for job_id, count in sorted(observed.pushes.items()):
        if count > 1:
            # Its due time, and its last move (the only one its hash remembers): the evidence spans both.
            moments = (_due_of(job_id, by_template), observed.enqueued_at.get(job_id))
            detail = f'reached the queue {count} times'
            out.append(Violation('duplicated', job_id, detail, tuple(m for m in moments if m is not None)))
    return out


def _early(moves: list[Move]) -> list[Violation]:
    return [
        Violation('early', move.job_id, f'moved {move.due - move.at:.3f} s before it was due', (move.at, move.due))
        for move in moves
        if move.at < move.due - EARLY_TOLERANCE
    ]


def _leftovers(observed: Observed, by_template: dict[str, Schedule]) -> list[Violation]:
    out = [
        Violation('left scheduled', member, f'still in the schedule at {score:.3f} after the drain', (score,))
        for member, score in sorted(observed.scheduled.items())
    ]
    out += [
        Violation('dead letter', member, f'dead-lettered: {reason}') for member, reason in observed.dead_letters.items()
    ]
    out += [
        Violation('other queue', queue, f'{count} jobs on a queue no row uses')
        for queue, count in observed.elsewhere.items()
        if count
    ]
    return out


# -- one-offs ---------------------------------------------------------------------------------------------------


def _check_one_off(schedule: Schedule, observed: Observed, rules: Rules) -> list[Violation]:
    assert schedule.due is not None
    pushes = observed.pushes.get(schedule.template_id, 0)
    row = observed.rows.get(schedule.template_id)
    if row is None:
        return []  # reported by the feedback check
    if row['enabled'] and pushes == 0:
        return [Violation('lost', schedule.template_id, 'enabled at the end, never enqueued', (schedule.due,))]
    off_for_good = schedule.steady(schedule.due - rules.settle, INFINITY, enabled=False)
    if pushes and off_for_good:
        detail = f'disabled for good at least {rules.settle:.0f} s before it fell due, yet enqueued'
        return [Violation('ran while disabled', schedule.template_id, detail, (schedule.due,))]
    return []


# -- periodic rows ----------------------------------------------------------------------------------------------


def _check_periodic(schedule: Schedule, fired: dict[int, int], moves: list[Move], rules: Rules) -> list[Violation]:
    out = []
    tid = schedule.template_id
    for fire_ms in sorted(fired):
        moment = fire_ms / 1000
        if not schedule.is_slot(fire_ms):
            out.append(Violation('off slot', f'{tid}_at_{fire_ms}', 'not a fire time of its schedule', (moment,)))
        if moment <= schedule.created:
            out.append(Violation('before creation', f'{tid}_at_{fire_ms}', 'fire time before the row existed'))
        if schedule.steady(moment - rules.settle, moment, enabled=False):
            detail = f'its row was disabled from at least {rules.settle:.0f} s before this fire time'
            out.append(Violation('ran while disabled', f'{tid}_at_{fire_ms}', detail, (moment,)))
    if schedule.repeat is not None and len(fired) > schedule.repeat:
        detail = f'{len(fired)} distinct runs for repeat = {schedule.repeat}'
        runs = tuple(ms / 1000 for ms in sorted(fired)[schedule.repeat - 1 :])  # the last due run, and the extra ones
        out.append(Violation('over repeat', tid, detail, runs))
    out += _missed_slots(schedule, fired, moves, rules)
    out += _unfinished(schedule, fired, rules)
    return out


def _clear_slots(schedule: Schedule, rules: Rules) -> list[float]:
    """Slots of the row while it was steadily enabled and synced, after its creation and before the drain."""
    slots = schedule.slots(schedule.synced, rules.drain_start - rules.settle)
    blind = _blind_windows(schedule, rules)
    return [
        slot
        for slot in slots
        if schedule.steady(slot - rules.settle, slot + schedule.period_after(slot), enabled=True)
        and not any(low <= slot <= high for low, high in blind)
    ]


def _blind_windows(schedule: Schedule, rules: Rules) -> list[tuple[float, float]]:
    """The row's blind windows, each stretched over the faults it meets: the reconciliation that repairs a failed
    sync comes from a leader, and a leader killed or paused, or Redis down, puts it off."""
    out = []
    for low, high in schedule.blind:
        stretched = True
        while stretched:
            ends = [end + rules.settle for start, end in rules.faults if start <= high and end >= low]
            stretched = bool(ends) and max(ends) > high
            high = max([high, *ends])
        out.append((low, high))
    return out


def _missed_slots(schedule: Schedule, fired: dict[int, int], moves: list[Move], rules: Rules) -> list[Violation]:
    out = []
    times = [move.at for move in moves]
    runs_before = sorted(fired)
    for slot in _clear_slots(schedule, rules):
        if round(slot * 1000) in fired:
            continue
        if schedule.repeat is not None and bisect.bisect_left(runs_before, round(slot * 1000)) >= schedule.repeat:
            break
        period = schedule.period_after(slot)
        low = bisect.bisect_left(times, slot + WITNESS_MARGIN)
        high = bisect.bisect_left(times, slot + period - WITNESS_MARGIN)
        witness = next((move for move in moves[low:high] if move.due >= slot), None)
        if witness is not None:
            detail = (
                f'slot not run, though the loop moved {witness.job_id} (due {witness.due - slot:+.3f} s after the '
                f'slot) {witness.at - slot:.3f} s after it, before the next slot'
            )
            out.append(Violation('missed slot', f'{schedule.template_id}_at_{round(slot * 1000)}', detail, (slot,)))
    return out


def _unfinished(schedule: Schedule, fired: dict[int, int], rules: Rules) -> list[Violation]:
    if schedule.repeat is None or len(fired) >= schedule.repeat:
        return []
    clear = [slot for slot in _clear_slots(schedule, rules) if not _in_fault(slot, rules)]
    if len(clear) < schedule.repeat + 2:
        return []
    detail = f'{len(fired)} of {schedule.repeat} runs, with {len(clear)} clear slots to run them in'
    return [Violation('unfinished', schedule.template_id, detail, (clear[0], clear[-1]))]


def _in_fault(moment: float, rules: Rules) -> bool:
    return any(start <= moment <= end for start, end in rules.faults)


# -- run feedback -----------------------------------------------------------------------------------------------


def _check_feedback(schedule: Schedule, observed: Observed, fired: dict[int, int]) -> list[Violation]:
    row = observed.rows.get(schedule.template_id)
    if row is None:
        return [Violation('row missing', schedule.template_id, 'the soak created it; the database has no such row')]
    runs = len(fired)
    wrong = []
    if row['run_count'] != runs:
        wrong.append(f'run_count {row["run_count"]}')
    if schedule.kind == 'once' and row['has_run'] != (runs > 0):
        wrong.append(f'has_run {row["has_run"]}')
    if (row['last_run'] is None) != (runs == 0):
        wrong.append(f'last_run {row["last_run"]}')
    if row['next_run'] is not None:
        wrong.append(f'next_run {row["next_run"]} (nothing is scheduled any more)')
    if not wrong:
        return []
    detail = f'database says {", ".join(wrong)}; the queue got {runs} distinct runs'
    last_run = schedule.due if schedule.due else max(fired, default=0) / 1000
    return [Violation('feedback', schedule.template_id, detail, (last_run,) if last_run else ())]


# -- figures ----------------------------------------------------------------------------------------------------


def _figures(
    schedules: list[Schedule],
    observed: Observed,
    occurrences: dict[str, dict[int, int]],
    moves: list[Move],
    violations: list[Violation],
) -> dict[str, Any]:
    rules = Counter(violation.rule for violation in violations)
    lateness = _lateness(schedules, observed, moves)
    one_offs = [s for s in schedules if not s.periodic]
    return {
        'occurrences checked': len(one_offs) + sum(len(occurrences[s.template_id]) for s in schedules if s.periodic),
        'one-offs enqueued / created': f'{sum(bool(occurrences[s.template_id]) for s in one_offs)} / {len(one_offs)}',
        'periodic runs enqueued': sum(len(occurrences[s.template_id]) for s in schedules if s.periodic),
        'lost one-offs': rules['lost'],
        'missed periodic slots': rules['missed slot'],
        'duplicated ids': rules['duplicated'],
        'off-slot or early runs': rules['off slot'] + rules['early'] + rules['before creation'],
        'ran while disabled': rules['ran while disabled'],
        'over repeat / unfinished': f'{rules["over repeat"]} / {rules["unfinished"]}',
        'rows whose feedback disagrees': rules['feedback'],
        'left scheduled / dead letters': f'{rules["left scheduled"]} / {rules["dead letter"]}',
        'lateness p50 / p99 / max (ms) of the jobs moved once': _percentiles(lateness),
    }


def _lateness(schedules: list[Schedule], observed: Observed, moves: list[Move]) -> list[float]:
    """Seconds from when each job could first move (due, and its row created) to its move; jobs moved once only,
    of rows never disabled and always synced: the others wait for a user or a reconciliation on purpose."""
    by_template = {schedule.template_id: schedule for schedule in schedules}
    out = []
    for move in moves:
        schedule = by_template[template_of(move.job_id)]
        if observed.pushes[move.job_id] == 1 and not schedule.states and not schedule.blind:
            out.append(move.at - max(move.due, schedule.synced))
    return sorted(out)


def template_of(job_id: str) -> str:
    return job_id.partition('_at_')[0]


def _percentiles(values: list[float]) -> str:
    if not values:
        return '-'
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return f'{statistics.median(values) * 1000:.0f} / {p99 * 1000:.0f} / {values[-1] * 1000:.0f}'
