"""The run policies of periodic templates as pure planning (``moves.Planner``, no Redis): the window of validity,
jitter, catch-up after downtime and foreign policy values in the meta."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from rq.serializers import DefaultSerializer

from django_rq_scheduled.core import catchup, keys, limits, moves, payloads, policy_moves, run_policy
from django_rq_scheduled.core.jobs import template_meta

START = 1_000_000.0
DAY = 86_400


def planner(now: float, rand: Any = None) -> moves.Planner:
    return moves.Planner(
        now=now,
        enqueued_at='',
        serializer=DefaultSerializer,
        queue_info=lambda origin, queue_class: moves.QueueInfo(f'rq:queue:{origin}', None),
        default_timezone='UTC',
        random=rand or random.Random(7).random,
    )


def template(score: float = START, interval: float = 1, **ours: Any) -> moves.Parsed:
    kind = 'cron' if 'cron_string' in ours else 'interval'
    cron_string = ours.pop('cron_string', None)
    repeat = ours.pop('repeat', None)
    meta = template_meta(
        kind, interval=interval, cron_string=cron_string, timezone='UTC', repeat=repeat, record=True,
        owner='django_rq_scheduled.repeatablejob:1', version='v1', **ours,
    )  # fmt: skip
    return moves.Parsed(keys.template_id('repeatablejob', 1), score, {b'origin': b'default'}, meta)


def records(entry: moves.Entry) -> list[dict[str, Any]]:
    return [json.loads(c[2]) for c in entry.commands if c[0] == 'RPUSH' and c[1] == keys.RUNS_KEY]


def created(entry: moves.Entry) -> list[str]:
    """The occurrence jobs a move writes, in order."""
    return [c[1].removeprefix(keys.JOB_KEY_PREFIX) for c in entry.commands if c[0] == 'HSET' and '_at_' in c[1]]


def zadd(entry: moves.Entry) -> float | None:
    scores = [float(c[2]) for c in entry.commands if c[0] == 'ZADD' and c[1] == keys.SCHEDULED_JOBS_KEY]
    return scores[-1] if scores else None


def written_meta(entry: moves.Entry) -> dict[str, Any] | None:
    for command in entry.commands:
        if command[0] == 'HSET' and command[1] == keys.job_key(entry.member) and command[2] == 'meta':
            return payloads.read_meta(command[3], DefaultSerializer)
    return None


def next_state(parsed: moves.Parsed, entry: moves.Entry) -> moves.Parsed | None:
    """The template as the move leaves it (what the next move reads), None if it was retired."""
    score = zadd(entry)
    if score is None:
        return None
    meta = written_meta(entry) or parsed.meta
    return moves.Parsed(parsed.member, score, parsed.raw, meta)


def slot_of(job_id: str) -> float:
    return int(job_id.rpartition('_at_')[2]) / 1000


def skipped(entry: moves.Entry) -> list[tuple[float, str]]:
    return [(r['fire_time'], r.get('reason', '')) for r in records(entry) if r['outcome'].startswith('skipped')]


# -- window of validity -------------------------------------------------------------------------------------------


def test_slots_before_the_window_are_no_slots_the_template_waits_for_the_first_inside():
    entry = planner(START + 5.2).plan(template(interval=10, valid_from=START + 25.5))
    assert created(entry) == [] and records(entry) == []
    assert zadd(entry) == START + 30  # the first slot at or after valid_from, on the template's grid


def test_the_last_slot_in_the_window_runs_and_finishes_the_schedule_with_its_done_marker():
    entry = planner(START).plan(template(interval=10, valid_until=START + 5))
    assert [slot_of(job) for job in created(entry)] == [START]
    assert ('ZREM', keys.SCHEDULED_JOBS_KEY, entry.member) in entry.commands
    assert ('DEL', keys.job_key(entry.member)) in entry.commands
    [record] = records(entry)
    assert record['finished'] is True and record['next'] is None
    assert ('HSET', keys.VERSIONS_KEY, entry.member, keys.done_marker('v1', 1)) in entry.commands


def test_a_template_due_after_its_window_runs_nothing_and_finishes():
    entry = planner(START + 20).plan(template(interval=10, valid_until=START - 1))
    assert created(entry) == [] and entry.outcome == policy_moves.FINISHED
    [record] = records(entry)
    assert record['finished'] is True and record['job'] is None
    assert ('DEL', keys.job_key(entry.member)) in entry.commands


def test_slots_after_the_window_are_not_caught_up():
    entry = planner(START + 100.2).plan(template(interval=10, valid_until=START + 35, catchup='all'))
    assert [slot_of(job) for job in created(entry)] == [START, START + 10, START + 20, START + 30]
    assert zadd(entry) is None and records(entry)[-1]['finished'] is True


def test_a_cron_template_waits_for_its_window():
    entry = planner(START).plan(template(cron_string='0 * * * *', valid_from=START + 2 * 3600 + 1))
    assert zadd(entry) == (START // 3600 + 3) * 3600  # the first full hour at or after valid_from


# -- jitter ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(('interval', 'jitter'), [(10, 3), (10, 10), (10, 500), (0.5, 2), (3600, 86_400)])
def test_jitter_stays_in_bounds_and_never_reaches_the_next_slot_over_1000_slots(interval, jitter):
    policy = run_policy.RunPolicy(jitter=jitter)
    source = random.Random(interval * jitter)
    for index in range(1000):
        slot = START + index * interval
        delay = run_policy.jitter_delay(policy, slot, slot + interval, source.random)
        assert 0 <= delay < jitter
        assert slot + delay < slot + interval
        assert round(delay, 3) == delay  # whole milliseconds, as scores are


def test_jitter_close_to_one_never_rounds_up_to_the_next_slot():
    policy = run_policy.RunPolicy(jitter=60)
    delay = run_policy.jitter_delay(policy, START, START + 10, lambda: 0.9999999999)
    assert delay < 10 - limits.MIN_SECONDS


def test_a_jittered_schedule_over_1000_occurrences_runs_each_slot_once_late_by_its_delay():
    """Moves simulated one after the other, each at the instant the template is due: every slot runs once, with
    the occurrence id of its slot, enqueued at slot + delay, the delay within [0, jitter) and before the next slot."""
    interval, jitter = 10, 7
    parsed: moves.Parsed | None = template(interval=interval, jitter=jitter)
    source = random.Random(3)
    seen: list[float] = []
    while parsed is not None and len(seen) < 1000:
        entry = planner(parsed.score, source.random).plan(parsed)
        assert entry.outcome in (moves.ENQUEUED, policy_moves.POSTPONED), entry.reason
        for record in records(entry):
            if record['outcome'] == 'enqueued':
                slot = slot_of(record['job'])
                assert slot == record['fire_time'] == START + len(seen) * interval
                assert 0 <= record.get('delay', 0) < jitter
                assert record['at'] == pytest.approx(slot + record.get('delay', 0), abs=0.001)
                seen.append(slot)
        parsed = next_state(parsed, entry)
        assert parsed is not None and parsed.score < START + (len(seen) + 1) * interval  # before the next slot
    assert seen == [START + k * interval for k in range(1000)]


def test_the_delay_is_chosen_once_a_retried_move_finds_the_same_one():
    parsed = template(interval=10, jitter=5)
    first = planner(START, random.Random(1).random).plan(parsed)
    assert first.outcome == policy_moves.POSTPONED and created(first) == []
    waiting = next_state(parsed, first)
    assert waiting is not None
    delay = waiting.ours['delay']
    for seed in (2, 3):  # a retried move: another random draw must not change anything
        entry = planner(waiting.score, random.Random(seed).random).plan(waiting)
        assert created(entry) == [keys.occurrence_id(parsed.member, round(START * 1000))]
        assert [r.get('delay') for r in records(entry)] == [delay]
        assert entry.commands == planner(waiting.score, random.Random(seed).random).plan(waiting).commands


def test_a_template_moved_by_someone_else_forgets_its_pending_slot():
    parsed = template(START + 3, interval=10, jitter=5, slot=START, slot_due=START + 2, delay=2)
    entry = planner(START + 3, lambda: 0.0).plan(parsed)
    assert [slot_of(job) for job in created(entry)] == [START + 3]  # its score is its slot again


# -- catch-up ---------------------------------------------------------------------------------------------------------


def test_latest_runs_the_newest_missed_slot_and_records_the_others_as_coalesced():
    entry = planner(START + 10.2).plan(template())
    assert [slot_of(job) for job in created(entry)] == [START + 10]
    assert skipped(entry) == [(START + k, catchup.COALESCED) for k in range(10)]
    assert zadd(entry) == START + 11


def test_none_runs_nothing_for_missed_slots_only_the_one_on_time():
    entry = planner(START + 10.2).plan(template(catchup='none', catchup_limit=5))
    assert [slot_of(job) for job in created(entry)] == [START + 10]  # 0.2 s late: on time
    assert skipped(entry) == [(START + k, catchup.CATCHUP_NONE) for k in range(10)]


def test_none_skips_a_slot_missed_by_hours_and_the_next_slot_runs():
    entry = planner(START + 3600).plan(template(interval=DAY, catchup='none', catchup_limit=5))
    assert created(entry) == []
    assert skipped(entry) == [(START, catchup.CATCHUP_NONE)]
    assert zadd(entry) == START + DAY


def test_all_runs_the_newest_missed_slots_oldest_first_up_to_the_limit():
    entry = planner(START + 10.2).plan(template(catchup='all', catchup_limit=3))
    assert [slot_of(job) for job in created(entry)] == [START + 7, START + 8, START + 9, START + 10]
    assert entry.also_enqueued == created(entry)[:3] and entry.enqueued_id == created(entry)[-1]
    assert skipped(entry) == [(START + k, catchup.CATCHUP_LIMIT) for k in range(7)]
    assert records(entry)[-1]['runs'] == 4 == written_meta(entry)[keys.META_KEY]['runs']


def test_all_moves_a_bounded_number_of_slots_per_move_and_stays_due_at_the_next(monkeypatch):
    monkeypatch.setattr(limits, 'CATCHUP_RUNS_PER_MOVE', 2)
    parsed = template(catchup='all', catchup_limit=5)
    now = START + 10.2
    ran: list[float] = []
    accounted: list[float] = []
    for _ in range(10):
        entry = planner(now).plan(parsed)
        ran += [slot_of(job) for job in created(entry)]
        accounted += [slot for slot, _ in skipped(entry)]
        parsed = next_state(parsed, entry)
        if parsed.score > now:
            break
    assert ran == [START + k for k in range(5, 11)]  # the newest 5 missed slots, then the one on time
    assert sorted(ran + accounted) == [START + k for k in range(11)]  # every slot once


def test_misfire_grace_still_skips_a_slot_the_catch_up_would_run():
    entry = planner(START + 10.2).plan(template(catchup='all', catchup_limit=5, misfire_grace=2.5))
    assert [slot_of(job) for job in created(entry)] == [START + 8, START + 9, START + 10]
    assert [(START + k, catchup.MISFIRE) for k in (5, 6, 7)] == skipped(entry)[-3:]


def test_all_with_repeat_runs_no_more_than_the_runs_left():
    entry = planner(START + 10.2).plan(template(catchup='all', catchup_limit=5, repeat=2))
    assert [slot_of(job) for job in created(entry)] == [START + 5, START + 6]
    assert records(entry)[-1]['finished'] is True and zadd(entry) is None


def test_a_day_of_downtime_of_an_every_second_schedule_is_a_bounded_number_of_records():
    entry = planner(START + DAY + 0.5).plan(template())
    assert [slot_of(job) for job in created(entry)] == [START + DAY]
    one_by_one = skipped(entry)
    assert len(one_by_one) == limits.SKIPPED_RECORDS_PER_MOVE + 1
    summary_slot, summary = one_by_one[0]
    assert summary_slot == START
    assert summary.startswith('86,300 slots skipped (coalesced) from ')
    assert [slot for slot, _ in one_by_one[1:]] == [START + k for k in range(DAY - 100, DAY)]


def test_a_cron_schedule_catches_up_on_its_own_slots():
    first = math.ceil(START / 60) * 60
    entry = planner(first + 600 + 2).plan(template(first, cron_string='* * * * *', catchup='all', catchup_limit=3))
    assert [slot_of(job) for job in created(entry)] == [first + 60 * k for k in (7, 8, 9, 10)]
    assert [slot for slot, _ in skipped(entry)] == [first + 60 * k for k in range(7)]


def test_planning_twice_plans_the_same_writes():
    parsed = template(catchup='all', catchup_limit=4)
    assert planner(START + 30.1).plan(parsed).commands == planner(START + 30.1).plan(parsed).commands


# -- foreign values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('key', 'value'),
    [
        ('jitter', 'x'), ('jitter', -1), ('jitter', math.nan), ('jitter', math.inf), ('jitter', True),
        ('valid_until', 'never'), ('valid_from', math.nan), ('valid_until', -math.inf),
        ('catchup', 7), ('catchup', 'sometimes'), ('catchup_limit', -1), ('catchup_limit', 1.5),
        ('catchup_limit', math.inf),
    ],
)  # fmt: skip
def test_a_policy_value_of_the_wrong_type_dead_letters_the_template_naming_the_key(key, value):
    entry = planner(START).plan(template(**{key: value}))
    assert entry.outcome == moves.DEAD
    assert entry.reason.startswith(f'cannot plan: {key}:')
    assert ('HSET', keys.DEAD_LETTERS_KEY, entry.member) == entry.commands[1][:3]


def test_a_pending_slot_of_the_wrong_type_is_ignored():
    entry = planner(START).plan(template(slot='x', slot_due=math.nan, delay=None))
    assert [slot_of(job) for job in created(entry)] == [START]


def test_the_api_validates_each_policy_naming_the_argument():
    from datetime import datetime, timezone

    cases = {
        'jitter': {'jitter': -1},
        'valid_from': {'valid_from': 'tomorrow'},
        'valid_until': {'valid_from': datetime(2030, 1, 2, tzinfo=timezone.utc),
                        'valid_until': datetime(2030, 1, 1, tzinfo=timezone.utc)},
        'catchup': {'catchup': 'some'},
        'catchup_limit': {'catchup_limit': 0},
    }  # fmt: skip
    for name, arguments in cases.items():
        with pytest.raises(ValueError, match=f'^{name}:'):
            run_policy.api_meta(**arguments)


def test_a_slot_waiting_for_its_delay_runs_even_if_the_next_slot_came_meanwhile():
    """A delay may end a millisecond before the next slot: a loop a few ms late must not coalesce the slot away."""
    parsed = template(START + 0.999, interval=1, jitter=1, slot=START, slot_due=START + 0.999, delay=0.999)
    entry = planner(START + 1.004, lambda: 0.5).plan(parsed)
    assert [slot_of(job) for job in created(entry)] == [START] and skipped(entry) == []
    following = next_state(parsed, entry)
    assert following is not None and following.ours['slot'] == START + 1  # the next slot, with its own delay
    entry = planner(following.score, lambda: 0.5).plan(following)
    assert [slot_of(job) for job in created(entry)] == [START + 1]


def test_a_cron_schedules_older_skipped_slots_are_counted_up_to_a_bound():
    first = math.ceil(START)
    entry = planner(first + 5_000.5).plan(template(float(first), cron_string='* * * * * *'))
    summary_slot, summary = skipped(entry)[0]
    assert summary_slot == first
    assert summary.startswith(f'more than {limits.MAX_SLOTS_COUNTED:,} slots skipped (coalesced) from ')
    assert len(skipped(entry)) == limits.SKIPPED_RECORDS_PER_MOVE + 1
