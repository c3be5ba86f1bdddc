"""Tests of django_rq_scheduled.cron: validation, DST behaviour and the crontab-grammar translation."""

from __future__ import annotations

import bisect
import itertools
import threading
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from django_rq_scheduled.core.cron import (
    CronError,
    from_crontab_syntax,
    get_zone,
    latest_fire_time,
    next_fire_time,
    next_fire_times,
    validate_cron_string,
)

UTC = timezone.utc
NEW_YORK = 'America/New_York'
ZONES = [NEW_YORK, 'Europe/London', 'Australia/Sydney']
SPRING_FORWARD_DAY = {
    NEW_YORK: date(2025, 3, 9),
    'Europe/London': date(2025, 3, 30),
    'Australia/Sydney': date(2025, 10, 5),
}
FALL_BACK_DAY = {
    NEW_YORK: date(2025, 11, 2),
    'Europe/London': date(2025, 10, 26),
    'Australia/Sydney': date(2025, 4, 6),
}
ONE_MICROSECOND = timedelta(microseconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires_between(cron_string: str, start: datetime, end: datetime, zone_name: str) -> list[datetime]:
    """Every fire time in ``(start, end)``, found by iterating next_fire_time."""
    fires: list[datetime] = []
    moment: datetime | None = start
    while (moment := next_fire_time(cron_string, moment, zone_name)) is not None and moment < end:
        fires.append(moment)
    return fires


def fires_on_local_day(cron_string: str, day: date, zone_name: str) -> list[datetime]:
    zone = ZoneInfo(zone_name)
    start = datetime.combine(day, time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return fires_between(cron_string, start - ONE_MICROSECOND, end, zone_name)


def days_of_2025() -> list[date]:
    return [date(2025, 1, 1) + timedelta(days=offset) for offset in range(365)]


def assert_strictly_increasing_utc(fires: list[datetime]) -> None:
    assert all(fire.tzinfo is UTC for fire in fires)
    assert all(earlier < later for earlier, later in itertools.pairwise(fires))


def year_of_fires(cron_string: str, zone_name: str) -> list[datetime]:
    zone = ZoneInfo(zone_name)
    return fires_between(cron_string, datetime(2025, 1, 1, tzinfo=zone), datetime(2026, 1, 1, tzinfo=zone), zone_name)


# --- fixed-time jobs over a whole year ---------------------------------------------------------------------


@pytest.mark.parametrize('zone_name', ZONES)
def test_fixed_time_job_fires_once_per_local_day_at_0230(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    fires = year_of_fires('30 2 * * *', zone_name)

    assert_strictly_increasing_utc(fires)
    assert [fire.astimezone(zone).date() for fire in fires] == days_of_2025()
    # London's gap is 01:00-02:00, so 02:30 exists there; New York's and Sydney's is 02:00-03:00.
    spring_time = time(2, 30) if zone_name == 'Europe/London' else time(3, 0)
    for fire in fires:
        local = fire.astimezone(zone)
        expected = spring_time if local.date() == SPRING_FORWARD_DAY[zone_name] else time(2, 30)
        assert local.time() == expected, local


@pytest.mark.parametrize('zone_name', ZONES)
def test_fixed_time_job_fires_once_per_local_day_at_0130(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    fires = year_of_fires('30 1 * * *', zone_name)

    assert_strictly_increasing_utc(fires)
    assert [fire.astimezone(zone).date() for fire in fires] == days_of_2025()
    spring_time = time(2, 0) if zone_name == 'Europe/London' else time(1, 30)
    for fire in fires:
        local = fire.astimezone(zone)
        expected = spring_time if local.date() == SPRING_FORWARD_DAY[zone_name] else time(1, 30)
        assert local.time() == expected, local


@pytest.mark.parametrize(
    ('zone_name', 'cron_string', 'wall_time'),
    [
        (NEW_YORK, '30 1 * * *', time(1, 30)),
        ('Europe/London', '30 1 * * *', time(1, 30)),
        ('Australia/Sydney', '30 2 * * *', time(2, 30)),
    ],
)
def test_fixed_time_job_fires_at_the_first_occurrence_of_an_ambiguous_time(
    zone_name: str, cron_string: str, wall_time: time
) -> None:
    zone = ZoneInfo(zone_name)
    day = FALL_BACK_DAY[zone_name]
    first = datetime.combine(day, wall_time, tzinfo=zone).replace(fold=0).astimezone(UTC)
    second = datetime.combine(day, wall_time, tzinfo=zone).replace(fold=1).astimezone(UTC)
    assert first < second

    assert fires_on_local_day(cron_string, day, zone_name) == [first]
    assert next_fire_time(cron_string, first, zone_name) > second


def test_fixed_time_job_in_the_gap_fires_when_the_gap_ends() -> None:
    assert next_fire_time('30 2 * * *', utc(2025, 3, 9), NEW_YORK) == utc(2025, 3, 9, 7)
    assert fires_on_local_day('0 9 * * 1-5', date(2025, 3, 10), NEW_YORK) == [utc(2025, 3, 10, 13)]


# --- wildcard and step jobs on transition days ---------------------------------------------------------------


@pytest.mark.parametrize('zone_name', ZONES)
@pytest.mark.parametrize(
    ('cron_string', 'step', 'spring_count', 'fall_count'),
    [('0 * * * *', timedelta(hours=1), 23, 25), ('*/30 * * * *', timedelta(minutes=30), 46, 50)],
)
def test_wildcard_job_follows_real_time_on_transition_days(
    zone_name: str, cron_string: str, step: timedelta, spring_count: int, fall_count: int
) -> None:
    for day, count in [(SPRING_FORWARD_DAY[zone_name], spring_count), (FALL_BACK_DAY[zone_name], fall_count)]:
        fires = fires_on_local_day(cron_string, day, zone_name)

        assert len(fires) == count, day
        assert {later - earlier for earlier, later in itertools.pairwise(fires)} == {step}


def test_hourly_job_fires_at_both_passes_of_the_repeated_hour() -> None:
    fires = fires_between('0 * * * *', utc(2025, 11, 2, 4, 30), utc(2025, 11, 2, 7, 30), NEW_YORK)

    assert fires == [utc(2025, 11, 2, 5), utc(2025, 11, 2, 6), utc(2025, 11, 2, 7)]
    assert [fire.astimezone(ZoneInfo(NEW_YORK)).hour for fire in fires] == [1, 1, 2]


def test_step_job_collapses_the_gap_into_one_fire_at_its_end() -> None:
    fires = fires_between('*/15 * * * *', utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 7, 45), NEW_YORK)

    assert fires == [utc(2025, 3, 9, 6, 45), utc(2025, 3, 9, 7), utc(2025, 3, 9, 7, 15), utc(2025, 3, 9, 7, 30)]


def test_every_minute_job_runs_through_both_transitions_minute_by_minute() -> None:
    for start in [utc(2025, 3, 9, 6), utc(2025, 11, 2, 4, 30)]:
        fires = fires_between('* * * * *', start, start + timedelta(hours=3), NEW_YORK)

        assert len(fires) == 179
        assert {later - earlier for earlier, later in itertools.pairwise(fires)} == {timedelta(minutes=1)}


def test_every_second_job_crosses_a_gap_and_a_fold_without_skipping_or_repeating() -> None:
    assert next_fire_time('* * * * * *', utc(2025, 3, 9, 6, 59, 59), NEW_YORK) == utc(2025, 3, 9, 7)
    assert next_fire_time('* * * * * *', utc(2025, 11, 2, 5, 59, 59), NEW_YORK) == utc(2025, 11, 2, 6)
    assert latest_fire_time('* * * * * *', utc(2025, 11, 2, 6, 0, 0, 500), NEW_YORK) == utc(2025, 11, 2, 6)


def _oracle_fires(cron_string: str, zone_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Fire times in ``[start, end)`` found by walking real time minute by minute (5-field strings only)."""
    zone = ZoneInfo(zone_name)
    minute, hour = cron_string.split()[:2]
    fixed_time = not minute.startswith('*') and not hour.startswith('*')
    matcher = croniter(cron_string, (start - timedelta(days=2)).replace(tzinfo=None))
    matching_walls: set[datetime] = set()
    while (wall := matcher.get_next(datetime)) < (end + timedelta(days=2)).replace(tzinfo=None):
        matching_walls.add(wall)

    fires: set[datetime] = set()
    walls_seen: set[datetime] = set()
    instants_and_walls: list[tuple[datetime, datetime]] = []
    instant = start
    while instant < end:
        local = instant.astimezone(zone)
        wall = local.replace(tzinfo=None)
        walls_seen.add(wall)
        instants_and_walls.append((instant, wall))
        if wall in matching_walls and not (fixed_time and local.fold):
            fires.add(instant)
        instant += timedelta(minutes=1)
    lowest_wall, highest_wall = min(walls_seen), max(walls_seen)
    for skipped in matching_walls - walls_seen:
        if lowest_wall < skipped < highest_wall:
            fires.add(next(instant for instant, wall in instants_and_walls if wall > skipped))
    return sorted(fires)


def _transitions_in_2025(zone_name: str) -> list[datetime]:
    zone = ZoneInfo(zone_name)
    hours = [utc(2025, 1, 1) + timedelta(hours=index) for index in range(365 * 24)]
    return [
        later
        for earlier, later in itertools.pairwise(hours)
        if earlier.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset()
    ]


@pytest.mark.parametrize(
    'zone_name',
    [*ZONES, 'Australia/Lord_Howe', 'America/Santiago', 'Europe/Dublin', 'Antarctica/Troll'],
)
def test_fire_times_around_every_2025_transition_match_a_real_time_walk(zone_name: str) -> None:
    cron_strings = [
        '30 2 * * *',
        '0 0 * * *',
        '0 * * * *',
        '*/20 * * * *',
        '15,45 0-3 * * *',
        '* 1 * * *',
        '0 23 * * 6,0',
    ]
    transitions = _transitions_in_2025(zone_name)
    assert len(transitions) == 2
    for transition in transitions:
        start, end = transition - timedelta(hours=30), transition + timedelta(hours=30)
        for cron_string in cron_strings:
            expected = _oracle_fires(cron_string, zone_name, start, end)

            assert fires_between(cron_string, start - ONE_MICROSECOND, end, zone_name) == expected, cron_string
            for previous, fire in itertools.pairwise(expected):
                assert latest_fire_time(cron_string, fire, zone_name) == fire
                assert latest_fire_time(cron_string, fire - ONE_MICROSECOND, zone_name) == previous
            _assert_probes_agree_with(expected, cron_string, zone_name, start, end)


def _assert_probes_agree_with(
    expected: list[datetime], cron_string: str, zone_name: str, start: datetime, end: datetime
) -> None:
    """next_fire_time and latest_fire_time from arbitrary moments, e.g. between the two passes of a fold."""
    probe = start
    while probe < end:
        index = bisect.bisect_right(expected, probe)
        if index < len(expected):
            assert next_fire_time(cron_string, probe, zone_name) == expected[index], (cron_string, probe)
        if index > 0:
            assert latest_fire_time(cron_string, probe, zone_name) == expected[index - 1], (cron_string, probe)
        probe += timedelta(minutes=23, seconds=17, microseconds=1)


# --- exhaustion and validation ---------------------------------------------------------------------------------


def test_expression_with_a_past_year_is_exhausted() -> None:
    assert next_fire_time('0 0 1 1 * 0 2020', utc(2025, 1, 1)) is None
    assert next_fire_times('0 0 1 1 * 0 2020', utc(2025, 1, 1)) == []
    with pytest.raises(CronError, match='cron_string'):
        validate_cron_string('0 0 1 1 * 0 2020', now=utc(2025, 1, 1))


def test_expression_with_a_future_year_is_valid_until_it_fires() -> None:
    validate_cron_string('0 0 1 1 * 0 2020', now=utc(2019, 6, 1))
    assert next_fire_time('0 0 1 1 * 0 2020', utc(2019, 6, 1)) == utc(2020, 1, 1)
    assert next_fire_time('0 0 1 1 * 0 2020', utc(2020, 1, 1)) is None


def test_day_that_never_exists_is_rejected() -> None:
    with pytest.raises(CronError, match=r'cron_string.*never fire'):
        validate_cron_string('0 0 31 2 *')
    assert next_fire_time('0 0 31 2 *', utc(2025, 1, 1)) is None
    validate_cron_string('0 0 29 2 *', now=utc(2025, 3, 1))


@pytest.mark.parametrize(
    'cron_string', ['61 * * * *', '*/0 * * * *', '', 'a b c d e', '* * *', None, 5, 'H H * * *', 'R * * * *']
)
def test_invalid_cron_string_is_rejected_everywhere(cron_string: object) -> None:
    for call in [
        lambda: validate_cron_string(cron_string),
        lambda: next_fire_time(cron_string, utc(2025, 1, 1)),
        lambda: latest_fire_time(cron_string, utc(2025, 1, 1)),
        lambda: next_fire_times(cron_string, utc(2025, 1, 1)),
    ]:
        with pytest.raises(CronError, match='cron_string'):
            call()


@pytest.mark.parametrize('name', ['Mars/Base', '', None, '../etc/passwd', 7])
def test_unknown_time_zone_is_rejected(name: object) -> None:
    with pytest.raises(CronError, match='timezone'):
        get_zone(name)
    with pytest.raises(CronError, match='timezone'):
        validate_cron_string('* * * * *', name)
    with pytest.raises(CronError, match='timezone'):
        next_fire_time('* * * * *', utc(2025, 1, 1), name)


def test_get_zone_returns_a_cached_zoneinfo() -> None:
    assert get_zone('Europe/Paris') is get_zone('Europe/Paris')
    assert get_zone('Europe/Paris') == ZoneInfo('Europe/Paris')


def test_validate_accepts_ordinary_strings_and_aliases() -> None:
    for cron_string in ['*/5 * * * *', '0 9 * * 1-5', '@daily', '@hourly', '0 0 * * * */10', '0 12 L * *']:
        validate_cron_string(cron_string, 'Europe/Paris', now=utc(2025, 1, 1))


def test_non_datetime_moment_is_rejected() -> None:
    with pytest.raises(CronError, match='after'):
        next_fire_time('* * * * *', '2025-01-01')
    with pytest.raises(CronError, match='at_or_before'):
        latest_fire_time('* * * * *', date(2025, 1, 1))


# --- next_fire_time, latest_fire_time, next_fire_times -----------------------------------------------------------


def test_next_fire_time_is_strictly_after() -> None:
    assert next_fire_time('0 12 * * *', utc(2025, 1, 1, 12)) == utc(2025, 1, 2, 12)
    assert next_fire_time('0 12 * * *', utc(2025, 1, 1, 11, 59, 59, 999999)) == utc(2025, 1, 1, 12)


def test_naive_datetimes_mean_utc() -> None:
    assert next_fire_time('0 12 * * *', datetime(2025, 1, 1, 11)) == utc(2025, 1, 1, 12)
    assert latest_fire_time('0 12 * * *', datetime(2025, 1, 1, 13)) == utc(2025, 1, 1, 12)


def test_aware_datetimes_in_other_zones_are_converted() -> None:
    after = datetime(2025, 1, 1, 12, tzinfo=ZoneInfo('Asia/Tokyo'))

    assert next_fire_time('0 * * * *', after) == utc(2025, 1, 1, 4)


def test_cron_string_is_read_in_the_given_zone() -> None:
    assert next_fire_time('0 9 * * 1-5', utc(2025, 6, 6, 8), 'Europe/Paris') == utc(2025, 6, 9, 7)
    assert next_fire_time('0 9 * * 1-5', utc(2025, 1, 3, 8), 'Europe/Paris') == utc(2025, 1, 6, 8)


def test_seconds_field_keeps_full_precision() -> None:
    assert next_fire_time('* * * * * */10', utc(2025, 1, 1, 10, 0, 5, 500000)) == utc(2025, 1, 1, 10, 0, 10)
    assert next_fire_time('* * * * * */10', utc(2025, 1, 1, 10, 0, 10)) == utc(2025, 1, 1, 10, 0, 20)
    assert latest_fire_time('* * * * * */10', utc(2025, 1, 1, 10, 0, 19, 999999)) == utc(2025, 1, 1, 10, 0, 10)


def test_latest_fire_time_includes_its_bound() -> None:
    paris = 'Europe/Paris'

    assert latest_fire_time('0 9 * * 1-5', utc(2025, 6, 9, 8), paris) == utc(2025, 6, 9, 7)
    assert latest_fire_time('0 9 * * 1-5', utc(2025, 6, 9, 7), paris) == utc(2025, 6, 9, 7)
    assert latest_fire_time('0 9 * * 1-5', utc(2025, 6, 9, 7) - ONE_MICROSECOND, paris) == utc(2025, 6, 6, 7)


def test_latest_fire_time_looks_back_a_bounded_time() -> None:
    assert latest_fire_time('0 0 1 1 *', utc(2025, 12, 31)) == utc(2025, 1, 1)
    assert latest_fire_time('0 0 1 1 * 0 2020', utc(2020, 6, 1)) == utc(2020, 1, 1)
    assert latest_fire_time('0 0 1 1 * 0 2020', utc(2025, 1, 1)) is None
    assert latest_fire_time('0 0 1 1 * 0 2030', utc(2025, 1, 1)) is None


def test_latest_fire_time_coalesces_downtime_across_a_fold() -> None:
    assert latest_fire_time('30 1 * * *', utc(2025, 11, 2, 8), NEW_YORK) == utc(2025, 11, 2, 5, 30)
    assert latest_fire_time('*/30 * * * *', utc(2025, 11, 2, 6, 45), NEW_YORK) == utc(2025, 11, 2, 6, 30)


def test_sparse_wildcard_job_fires_in_both_passes_of_the_fold() -> None:
    both_passes = [utc(2025, 11, 2, 5), utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6), utc(2025, 11, 2, 6, 30)]

    assert next_fire_times('*/30 1 2 11 *', utc(2025, 10, 1), NEW_YORK, count=4) == both_passes
    assert latest_fire_time('*/30 1 2 11 *', utc(2025, 11, 20), NEW_YORK) == both_passes[-1]
    assert latest_fire_time('30 1 2 11 *', utc(2025, 11, 20), NEW_YORK) == both_passes[1]


def test_next_fire_times_lists_consecutive_fires() -> None:
    assert next_fire_times('*/5 * * * *', utc(2025, 1, 1, 10, 1), count=3) == [
        utc(2025, 1, 1, 10, 5),
        utc(2025, 1, 1, 10, 10),
        utc(2025, 1, 1, 10, 15),
    ]
    assert next_fire_times('0 0 1 1 * 0 2030-2031', utc(2025, 1, 1), count=5) == [utc(2030, 1, 1), utc(2031, 1, 1)]
    assert len(next_fire_times('* * * * *', utc(2025, 1, 1), count=1000)) == 1000


@pytest.mark.parametrize('count', [0, -1, 1001, True, 2.5, '3', None])
def test_next_fire_times_rejects_a_bad_count(count: object) -> None:
    with pytest.raises(CronError, match='count'):
        next_fire_times('* * * * *', utc(2025, 1, 1), count=count)


def test_shared_schedule_is_safe_across_threads() -> None:
    starts = [utc(2025, 1, 1) + timedelta(minutes=7 * index) for index in range(200)]
    expected = [next_fire_time('*/11 3-20 * * *', start, NEW_YORK) for start in starts]
    results: dict[int, list[datetime | None]] = {}

    def compute(worker: int) -> None:
        results[worker] = [next_fire_time('*/11 3-20 * * *', start, NEW_YORK) for start in starts]

    threads = [threading.Thread(target=compute, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(result == expected for result in results.values())


# --- crontab grammar ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('crontab_string', 'croniter_string'),
    [
        ('*/5 * * * *', '*/5 * * * *'),
        ('@daily', '@daily'),
        ('@hourly', '@hourly'),
        ('0 12 * * * 2030', '0 12 * * * 0 2030'),
        ('0 12 1 1 * *', '0 12 1 1 * 0 *'),
        ('30 0 12 * * * 2030', '0 12 * * * 30 2030'),
        ('0 12 ? * mon', '0 12 * * mon'),
        ('0  12 *  * ?', '0 12 * * *'),
    ],
)
def test_from_crontab_syntax(crontab_string: str, croniter_string: str) -> None:
    assert from_crontab_syntax(crontab_string) == croniter_string


def test_translated_crontab_strings_fire_as_crontab_meant() -> None:
    year_form = from_crontab_syntax('0 12 1 1 * 2030')
    seconds_form = from_crontab_syntax('30 0 12 1 1 * 2030')

    assert next_fire_times(year_form, utc(2025, 1, 1), count=2) == [utc(2030, 1, 1, 12)]
    assert next_fire_times(seconds_form, utc(2025, 1, 1), count=2) == [utc(2030, 1, 1, 12, 0, 30)]


def test_from_crontab_syntax_rejects_non_strings() -> None:
    with pytest.raises(CronError, match='cron_string'):
        from_crontab_syntax(None)
