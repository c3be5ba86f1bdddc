"""Cron expressions evaluated on the wall clock of an IANA time zone, with defined behaviour around DST changes."""

from __future__ import annotations

import functools
import re
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = [
    'CronError',
    'from_crontab_syntax',
    'get_zone',
    'latest_fire_time',
    'next_fire_time',
    'next_fire_times',
    'validate_cron_string',
]

_UTC = dt_timezone.utc
_ONE_SECOND = timedelta(seconds=1)
# Since 1900 no zone of the tz database changed its UTC offset twice within a day, nor by a whole day
# backwards; the DST handling below relies on both.
_TRANSITION_WINDOW = timedelta(days=1)
_LATEST_LOOKBACK = timedelta(days=400)
_SEARCH_YEARS = 50
_MAX_COUNT = 1000
_RANDOM_FIELD = re.compile(r'r(\(\d+-\d+\))?(/\d+)?', re.IGNORECASE)


class CronError(ValueError):
    """An invalid cron string, time zone or argument; the message starts with the name of the culprit."""


class _Schedule:
    """One parsed cron expression, matched against naive wall-clock datetimes."""

    def __init__(self, cron_string: str) -> None:
        self._matcher = croniter(cron_string, datetime(2000, 1, 1), max_years_between_matches=_SEARCH_YEARS)
        # croniter keeps its position in the object, and one object is shared by all threads.
        self._lock = threading.Lock()
        minute, hour = self._matcher.expressions[:2]
        self.fixed_time = not minute.startswith('*') and not hour.startswith('*')

    def wall_after(self, wall: datetime) -> datetime | None:
        """The first matching wall-clock time strictly after ``wall``."""
        with self._lock:
            try:
                # croniter converts to a float timestamp; whole seconds keep that exact, and matches are whole.
                return self._matcher.get_next(datetime, start_time=_floor_second(wall))
            except CroniterBadDateError:
                return None

    def wall_before(self, wall: datetime) -> datetime | None:
        """The last matching wall-clock time strictly before ``wall``."""
        with self._lock:
            try:
                # Rounded the other way for the same reason as in wall_after.
                return self._matcher.get_prev(datetime, start_time=_ceil_second(wall))
            except CroniterBadDateError:
                return None


def get_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise CronError(f'timezone: unknown time zone {name!r}')
    return _load_zone(name)


@functools.lru_cache(maxsize=256)
def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a name longer than a file name may be
        raise CronError(f'timezone: unknown time zone {name!r}') from exc


def validate_cron_string(cron_string: str, timezone: str = 'UTC', *, now: datetime | None = None) -> None:
    """Raise CronError unless ``cron_string`` is valid and fires at least once after ``now`` (default: now)."""
    schedule = _get_schedule(cron_string)
    zone = get_zone(timezone)
    start = _to_naive_utc(now, 'now') if now is not None else datetime.now(_UTC).replace(tzinfo=None)
    if _next_instant(schedule, zone, start) is None:
        raise CronError(
            f'cron_string: {cron_string!r} can never fire after {start:%Y-%m-%d %H:%M} UTC '
            f'(no match within {_SEARCH_YEARS} years)'
        )


def next_fire_time(cron_string: str, after: datetime, timezone: str = 'UTC') -> datetime | None:
    """The first fire time strictly after ``after`` (naive means UTC) as an aware UTC datetime.

    None when the expression never fires again.
    """
    return _cached(_next_fire_time, cron_string, _to_naive_utc(after, 'after'), timezone)


def latest_fire_time(cron_string: str, at_or_before: datetime, timezone: str = 'UTC') -> datetime | None:
    """The last fire time at or before ``at_or_before`` (naive means UTC) as an aware UTC datetime.

    None when there is none within the 400 days before ``at_or_before``.
    """
    return _cached(_latest_fire_time, cron_string, _to_naive_utc(at_or_before, 'at_or_before'), timezone)


def _cached(answer: Any, cron_string: Any, moment: datetime, timezone: Any) -> datetime | None:
    # Thousands of templates on one expression ("0 * * * *") ask the same question in one move: asked once. Only
    # text is cached (anything else is refused by the uncached call, with its own message).
    if isinstance(cron_string, str) and isinstance(timezone, str):
        return cast('datetime | None', answer(cron_string, moment, timezone))
    return cast('datetime | None', answer.__wrapped__(cron_string, moment, timezone))


@functools.lru_cache(maxsize=4096)
def _next_fire_time(cron_string: str, after: datetime, timezone: str) -> datetime | None:
    return _as_aware_utc(_next_instant(_get_schedule(cron_string), get_zone(timezone), after))


@functools.lru_cache(maxsize=4096)
def _latest_fire_time(cron_string: str, at_or_before: datetime, timezone: str) -> datetime | None:
    return _as_aware_utc(_latest_instant(_get_schedule(cron_string), get_zone(timezone), at_or_before))


def next_fire_times(cron_string: str, after: datetime, timezone: str = 'UTC', count: int = 5) -> list[datetime]:
    """The next ``count`` (1 to 1000) fire times after ``after``; fewer when the expression runs out."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_COUNT:
        raise CronError(f'count: must be an integer from 1 to {_MAX_COUNT}, not {count!r}')
    schedule = _get_schedule(cron_string)
    zone = get_zone(timezone)
    fire_times: list[datetime] = []
    upcoming = _next_instant(schedule, zone, _to_naive_utc(after, 'after'))
    while upcoming is not None and len(fire_times) < count:
        fire_times.append(upcoming.replace(tzinfo=_UTC))
        upcoming = _next_instant(schedule, zone, upcoming) if len(fire_times) < count else None
    return fire_times


def from_crontab_syntax(cron_string: str) -> str:
    """Translate a cron string of the ``crontab`` package (rq-scheduler's grammar) into croniter's grammar.

    The two disagree on 6 and 7 fields: crontab reads ``m h dom mon dow year`` and ``s m h dom mon dow year``,
    croniter ``m h dom mon dow s`` and ``m h dom mon dow s year``. Whitespace is normalised to single spaces.
    """
    if not isinstance(cron_string, str):
        raise CronError(f'cron_string: expected a string, not {type(cron_string).__name__}')
    fields = [field.replace('?', '*') for field in cron_string.split()]
    if len(fields) == 6:
        minute, hour, day, month, weekday, year = fields
        fields = [minute, hour, day, month, weekday, '0', year]
    elif len(fields) == 7:
        second, minute, hour, day, month, weekday, year = fields
        fields = [minute, hour, day, month, weekday, second, year]
    return ' '.join(fields)


def _get_schedule(cron_string: str) -> _Schedule:
    if not isinstance(cron_string, str):
        raise CronError(f'cron_string: expected a string, not {type(cron_string).__name__}')
    return _parse(cron_string)


@functools.lru_cache(maxsize=1024)
def _parse(cron_string: str) -> _Schedule:
    if any(_RANDOM_FIELD.fullmatch(field) for field in cron_string.split()):
        # Each scheduler process would draw its own value, so they would disagree about the fire times.
        raise CronError(f'cron_string: {cron_string!r} uses random (R) values, which are not supported')
    try:
        return _Schedule(cron_string)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CronError(f'cron_string: {cron_string!r} is not a valid cron expression: {exc}') from exc


def _next_instant(schedule: _Schedule, zone: ZoneInfo, after: datetime) -> datetime | None:
    offset = _offset_at(after, zone)
    wall = after + offset
    window_end = after + _TRANSITION_WINDOW
    offset_at_window_end = _offset_at(window_end, zone)
    if offset_at_window_end < offset:
        # The clock falls back soon, so a wall earlier than now's may still show again after the transition:
        # first look before the transition, then resume from the first wall shown after it.
        transition = _transition_in(after, window_end, zone)
        first_wall = schedule.wall_after(wall)
        if first_wall is None:
            return None
        if first_wall < transition + offset:
            return first_wall - offset
        wall = transition + offset_at_window_end - _ONE_SECOND
    # Walls map to instants in increasing order from here on, so the first one that fires later is the answer.
    next_wall = schedule.wall_after(wall)
    while next_wall is not None:
        later = [instant for instant in _fire_instants(next_wall, zone, schedule.fixed_time) if instant > after]
        if later:
            return later[0]
        next_wall = schedule.wall_after(next_wall)
    return None


def _latest_instant(schedule: _Schedule, zone: ZoneInfo, at_or_before: datetime) -> datetime | None:
    offset = _offset_at(at_or_before, zone)
    ceiling = _floor_second(at_or_before + offset) + _ONE_SECOND
    window_start = at_or_before - _TRANSITION_WINDOW
    offset_at_window_start = _offset_at(window_start, zone)
    if offset_at_window_start > offset:
        # The mirror image of _next_instant; fixed-time jobs do not fire in the second pass of the fold.
        transition = _transition_in(window_start, at_or_before, zone)
        last_wall = schedule.wall_before(ceiling)
        if last_wall is None:
            return None
        if last_wall >= transition + (offset_at_window_start if schedule.fixed_time else offset):
            return last_wall - offset
        ceiling = transition + offset_at_window_start
    oldest = at_or_before - _LATEST_LOOKBACK
    oldest_wall = oldest + _offset_at(oldest, zone) - _TRANSITION_WINDOW
    wall = schedule.wall_before(ceiling)
    while wall is not None and wall >= oldest_wall:
        earlier = [instant for instant in _fire_instants(wall, zone, schedule.fixed_time) if instant <= at_or_before]
        if earlier:
            return earlier[-1] if earlier[-1] >= oldest else None
        wall = schedule.wall_before(wall)
    return None


def _fire_instants(wall: datetime, zone: ZoneInfo, fixed_time: bool) -> tuple[datetime, ...]:
    """The real instants (naive UTC, ascending) at which a job matching the wall-clock time ``wall`` fires."""
    first = wall - _utcoffset(wall.replace(tzinfo=zone))
    second = wall - _utcoffset(wall.replace(tzinfo=zone, fold=1))
    if first == second:
        return (first,)
    if first < second:
        # The clock shows this time twice; a fixed-time job runs once a day, so only at the first showing.
        return (first,) if fixed_time else (first, second)
    # The clock skips this time: fire when the skipped stretch ends.
    return (_transition_in(second, first, zone),)


def _transition_in(start: datetime, end: datetime, zone: ZoneInfo) -> datetime:
    """The instant in ``(start, end]`` at which the UTC offset of ``zone`` changes (it must change once)."""
    offset_before = _offset_at(start, zone)
    low, high = start, end
    while high - low > _ONE_SECOND:
        middle = low + (high - low) // 2
        if _offset_at(middle, zone) == offset_before:
            low = middle
        else:
            high = middle
    # Transitions of the tz database fall on whole seconds.
    return _floor_second(low) + _ONE_SECOND


def _offset_at(instant: datetime, zone: ZoneInfo) -> timedelta:
    return _utcoffset(zone.fromutc(instant.replace(tzinfo=zone)))


def _utcoffset(aware: datetime) -> timedelta:
    offset = aware.utcoffset()
    assert offset is not None  # a datetime in a ZoneInfo always has one
    return offset


def _to_naive_utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise CronError(f'{name}: expected a datetime, not {type(moment).__name__}')
    offset = moment.utcoffset()
    if offset is None:
        return moment
    return moment.replace(tzinfo=None) - offset


def _as_aware_utc(instant: datetime | None) -> datetime | None:
    return None if instant is None else instant.replace(tzinfo=_UTC)


def _floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _ceil_second(moment: datetime) -> datetime:
    return moment if moment.microsecond == 0 else _floor_second(moment) + _ONE_SECOND
