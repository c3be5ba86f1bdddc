"""Time as the schedule holds it: scores are UTC epoch seconds with millisecond precision, and interval slots.

rq-scheduler writes whole seconds; we write milliseconds and read any precision. An interval schedule's slots are
``start + k * interval`` (k = 0, 1, ...): the next run is a whole number of intervals after the first, never "the
last run plus the interval", so runs do not drift.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone

UTC = timezone.utc


def to_score(value: datetime, argument: str = 'scheduled_time') -> float:
    """Epoch seconds of a datetime, truncated to the millisecond; a naive datetime means UTC, as in rq-scheduler.

    Truncated, not rounded: a job scheduled for now is due now, never half a millisecond later.
    """
    if not isinstance(value, datetime):
        raise ValueError(f'{argument}: expected a datetime, got {type(value).__name__} {value!r}')
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return floor_ms(value.timestamp())


def floor_ms(seconds: float) -> float:
    # Rounded to a microsecond first: 1.001 * 1000 is 1000.9999999999999 in floating point.
    return math.floor(round(seconds * 1000, 3)) / 1000


def from_score(score: float) -> datetime:
    """A naive UTC datetime, as rq-scheduler returns them; a score beyond what a datetime holds gives its limit."""
    try:
        return datetime.fromtimestamp(score, tz=UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return datetime.max if score > 0 else datetime.min


def until_score(until: object) -> float | str:
    """The latest score of a range: a datetime, a timedelta from now, epoch seconds, or None for no limit."""
    if until is None:
        return '+inf'
    if isinstance(until, datetime):
        return to_score(until, 'until')
    if isinstance(until, timedelta):
        return round(time.time() + until.total_seconds(), 3)
    if isinstance(until, (int, float)) and not isinstance(until, bool):
        return until
    raise ValueError(f'until: expected a datetime, timedelta or epoch seconds, got {until!r}')


def utc_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def format_score(value: float) -> str:
    """A score as written: milliseconds."""
    return repr(round(value, 3))


def guard_score(value: float) -> str:
    """The exact score as read, for the move script's "still scheduled at this time?" check.

    Never rounded: a score written by another client with more than millisecond precision must still match.
    """
    return repr(float(value))


# -- interval slots ---------------------------------------------------------------------------------------------


def slots_in(elapsed: float, interval: float) -> int:
    """How many whole intervals fit in ``elapsed`` seconds (negative before the start): slot ``slots_in(...)``
    is the last at or before that moment, and the one after it the first strictly after."""
    return math.floor(elapsed / interval)


def slot(start: float, interval: float, index: int) -> float:
    """Slot ``index`` of a schedule, as a score."""
    return round(start + index * interval, 3)


def latest_slot(start: float, interval: float, now: float) -> float:
    """The last slot at or before ``now``, at least the first: a run late by several intervals runs once."""
    return slot(start, interval, max(0, slots_in(now - start, interval)))


def next_slot(start: float, interval: float, after: float) -> float:
    """The first slot strictly after ``after``, and after the first slot."""
    index = max(1, slots_in(after - start, interval) + 1)
    upcoming = slot(start, interval, index)
    while upcoming <= after:  # rounding to milliseconds must never bring it back to a due time
        index += 1
        upcoming = slot(start, interval, index)
    return upcoming


def slot_at_or_after(start: float, interval: float, moment: float) -> float:
    """The first slot at or after ``moment`` (``start`` itself if ``moment`` is not after it)."""
    if moment <= start:
        return start
    index = max(0, math.ceil((moment - start) / interval) - 1)
    upcoming = slot(start, interval, index)
    while upcoming < moment:  # rounding to milliseconds: step until it is truly at or after
        index += 1
        upcoming = slot(start, interval, index)
    return upcoming


def first_due_slot(start: float, interval: float, now: float, *, begun: bool) -> float:
    """When a schedule is next due, as its template is written at ``now`` (by a save or a reconciliation).

    A first run still ahead is due at ``start``. A first run at or before now is due at once, and once: the latest
    slot at or before now stands for every slot since ``start``, and the slots after it follow ``start``. A
    schedule that has begun (it ran or skipped a slot) resumes at the first slot strictly after now, since a slot
    at this very instant may just have run.
    """
    if start >= now:
        return start
    return next_slot(start, interval, now) if begun else latest_slot(start, interval, now)
