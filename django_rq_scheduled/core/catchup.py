"""Catch-up after downtime, as pure planning: of the slots of a periodic template due by now, which one this move
decides on, which older ones it runs first (catch-up ``all``), and which it records as skipped, and why.

A move records at most ``limits.SKIPPED_RECORDS_PER_MOVE`` skipped slots one by one (the newest) and the older ones
as one summary record; catch-up ``all`` runs at most ``limits.CATCHUP_RUNS_PER_MOVE`` slots per move and leaves
the template due at the next one. Both bound the size of one move, whatever the downtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from . import cron, limits, scores
from .run_policy import ALL, NONE, RunPolicy
from .scores import utc_datetime

COALESCED = 'coalesced'
CATCHUP_NONE = 'catch-up none'
CATCHUP_LIMIT = 'catch-up limit'
MISFIRE = 'misfire grace'
HALF_MS = 0.0005
"""Slots are whole milliseconds: the slot before ``t`` is the last at or before ``t - HALF_MS``."""


class Slots(Protocol):
    """The slots of one template from its due score (``first``) on."""

    first: float

    def after(self, moment: float) -> float | None: ...
    def at_or_before(self, moment: float) -> float | None: ...
    def newest(self, last: float, count: int) -> list[float]: ...
    def count(self, last: float) -> tuple[int, bool]: ...


class IntervalSlots:
    """``first + k * interval``: every question is arithmetic."""

    def __init__(self, first: float, interval: float) -> None:
        self.first = first
        self.interval = interval

    def _index(self, moment: float) -> int:
        index = scores.slots_in(moment - self.first, self.interval)
        while index >= 0 and scores.slot(self.first, self.interval, index) > moment:
            index -= 1
        while scores.slot(self.first, self.interval, index + 1) <= moment:
            index += 1
        return index

    def _slot(self, index: int) -> float:
        return scores.slot(self.first, self.interval, index)

    def after(self, moment: float) -> float | None:
        return self._slot(max(0, self._index(moment) + 1))

    def at_or_before(self, moment: float) -> float | None:
        index = self._index(moment)
        return self._slot(index) if index >= 0 else None

    def newest(self, last: float, count: int) -> list[float]:
        end = self._index(last)
        return [self._slot(index) for index in range(max(0, end - count + 1), end + 1)]

    def count(self, last: float) -> tuple[int, bool]:
        return self._index(last) + 1, True


class CronSlots:
    """A cron string's fire times from ``first`` on (``first`` itself counts, even off the expression's grid: a
    template edited while due keeps its due score). Counting walks, so it stops at ``limits.MAX_SLOTS_COUNTED``."""

    def __init__(self, first: float, expression: str, zone: str) -> None:
        self.first = first
        self.expression = expression
        self.zone = zone

    def after(self, moment: float) -> float | None:
        upcoming = cron.next_fire_time(self.expression, utc_datetime(moment), self.zone)
        return upcoming.timestamp() if upcoming else None

    def at_or_before(self, moment: float) -> float | None:
        if moment < self.first:
            return None
        latest = cron.latest_fire_time(self.expression, utc_datetime(moment), self.zone)
        return max(self.first, latest.timestamp()) if latest else self.first

    def newest(self, last: float, count: int) -> list[float]:
        found = [last]
        while len(found) < count:
            previous = self.at_or_before(found[-1] - HALF_MS)
            if previous is None:
                break
            found.append(previous)
        return found[::-1]

    def count(self, last: float) -> tuple[int, bool]:
        counted, current = 1, self.first
        while counted < limits.MAX_SLOTS_COUNTED:
            upcoming = self.after(current)
            if upcoming is None or upcoming > last:
                return counted, True
            counted, current = counted + 1, upcoming
        return counted, False


@dataclass(frozen=True)
class Summary:
    """Skipped slots recorded as one record: the oldest, the newest, how many (``exact``: or more)."""

    first: float
    last: float
    count: int
    exact: bool
    reason: str

    @property
    def text(self) -> str:
        count = f'{self.count:,}' if self.exact else f'more than {self.count:,}'
        start, end = (utc_datetime(moment).isoformat() for moment in (self.first, self.last))
        return f'{count} slots skipped ({self.reason}) from {start} to {end}'


@dataclass
class CatchUp:
    """What one move does with the slots due by now."""

    fire_time: float | None
    """The slot this move decides on (run it, unless misfire grace or overlap skip it); None: the window closed."""
    on_time: bool = True
    fire_skip: str = ''
    """Why the catch-up policy skips ``fire_time`` itself ('' if it does not)."""
    earlier_runs: list[float] = field(default_factory=list)
    """Catch-up ``all``: older slots run by this move before ``fire_time``, oldest first."""
    skipped: list[tuple[float, str]] = field(default_factory=list)
    """Slots recorded as skipped one by one, oldest first, with the reason."""
    summary: Summary | None = None
    resume: float | None = None
    """Catch-up ``all``: the next slot to run, already due; the template stays due there."""


def decide(slots: Slots, now: float, policy: RunPolicy, *, max_runs: object = None) -> CatchUp:
    """The catch-up of the slots from ``slots.first`` (the due score) to now, within the window of ``policy``;
    ``max_runs``: the runs a ``repeat`` leaves (catch-up ``all`` runs no more)."""
    base = slots.first
    end = now if policy.valid_until is None else min(now, policy.valid_until)
    if base > end:
        return CatchUp(None)
    newest = max(base, slots.at_or_before(end) or base)
    on_time = now - newest <= limits.ON_TIME_SECONDS
    if policy.catchup == ALL:
        runs_left = max_runs if isinstance(max_runs, int) and max_runs >= 1 else limits.CATCHUP_RUNS_PER_MOVE
        return _all(slots, newest, on_time, policy.catchup_limit, min(runs_left, limits.CATCHUP_RUNS_PER_MOVE))
    reason = CATCHUP_NONE if policy.catchup == NONE else COALESCED
    catchup = CatchUp(newest, on_time, fire_skip='' if on_time or policy.catchup != NONE else CATCHUP_NONE)
    _skip_before(slots, newest, reason, catchup)
    return catchup


def _all(slots: Slots, newest: float, on_time: bool, limit: int, per_move: int) -> CatchUp:
    """Each missed slot once, oldest first: the newest ``limit`` missed slots (and the one on time), ``per_move``
    of them in this move."""
    to_run = slots.newest(newest, limit + (1 if on_time else 0))
    step = to_run[:per_move]
    catchup = CatchUp(step[-1], on_time and step[-1] == newest, earlier_runs=step[:-1])
    if len(to_run) > len(step):
        catchup.resume = to_run[len(step)]
    _skip_before(slots, to_run[0], CATCHUP_LIMIT, catchup)
    return catchup


def _skip_before(slots: Slots, stop: float, reason: str, catchup: CatchUp) -> None:
    """Records the slots from the first to before ``stop`` as skipped: the newest one by one, the rest summed up."""
    if stop <= slots.first:
        return
    last = slots.at_or_before(stop - HALF_MS)
    if last is None:
        return
    one_by_one = slots.newest(last, limits.SKIPPED_RECORDS_PER_MOVE)
    catchup.skipped = [(slot, reason) for slot in one_by_one]
    if one_by_one[0] > slots.first:
        older_last = slots.at_or_before(one_by_one[0] - HALF_MS)
        assert older_last is not None
        count, exact = slots.count(older_last)
        catchup.summary = Summary(slots.first, older_last, count, exact, reason)


def slots_of(first: float, interval: float | None, cron_of: tuple[str, str] | None) -> Slots:
    if cron_of is not None:
        return CronSlots(first, *cron_of)
    assert interval is not None and math.isfinite(interval)
    return IntervalSlots(first, interval)
