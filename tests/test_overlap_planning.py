"""Overlap policies, planned without Redis: every branch of ``buffer_one`` and ``cancel_other``, a buffered run's
release, and what someone else's data in our meta does (the schedule is dead-lettered, naming the field)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import rq.command
from rq.serializers import DefaultSerializer

from django_rq_scheduled.core import buffers, keys, moves, overlap, payloads
from django_rq_scheduled.core.jobs import template_meta

NOW = 10_000.0
START = 1_000.0
INTERVAL = 10.0
SLOT = 10_000.0  # the slot due at NOW (START + 900 intervals)
PREVIOUS = keys.occurrence_id('t', round((SLOT - INTERVAL) * 1000))


def planner() -> moves.Planner:
    return moves.Planner(
        now=NOW,
        enqueued_at='2030-01-01T00:00:00.000000Z',
        serializer=DefaultSerializer,
        queue_info=lambda origin, queue_class: moves.QueueInfo(f'rq:queue:{origin}', None),
        default_timezone='UTC',
    )


def template(policy: str, *, score: float = SLOT, **ours: Any) -> moves.Parsed:
    meta = template_meta('interval', interval=INTERVAL, overlap=policy, last_run_id=PREVIOUS, record=True, **ours)
    raw = {b'origin': b'default', b'data': b'payload', b'meta': payloads.dumps_meta(meta, DefaultSerializer)}
    return moves.Parsed('t', score, raw, meta)


def commands_named(entry: moves.Entry, name: str) -> list[tuple[Any, ...]]:
    return [command for command in entry.commands if command[0] == name]


def written_meta(entry: moves.Entry) -> dict[str, Any]:
    [(_, _, _, dumped)] = [c for c in commands_named(entry, 'HSET') if c[1] == keys.job_key('t')]
    return payloads.read_meta(dumped, DefaultSerializer)[keys.META_KEY]


def records(entry: moves.Entry) -> list[dict[str, Any]]:
    return [json.loads(command[2]) for command in commands_named(entry, 'RPUSH') if command[1] == keys.RUNS_KEY]


def next_score(entry: moves.Entry) -> float | None:
    scores = [float(c[2]) for c in commands_named(entry, 'ZADD') if c[1] == keys.SCHEDULED_JOBS_KEY]
    return scores[0] if scores else None


def run_of(fire_time: float) -> str:
    return keys.occurrence_id('t', round(fire_time * 1000))


# -- buffer_one -------------------------------------------------------------------------------------------------


def test_buffer_one_a_slot_while_the_previous_run_is_busy_waits_for_it():
    entry = planner().plan(template('buffer_one'), b'started')
    assert (entry.outcome, entry.enqueued_id) == (overlap.BUFFERED, None)
    assert written_meta(entry)[overlap.BUFFERED_META] == SLOT
    assert ('HSET', keys.BUFFERED_KEY, 't', PREVIOUS) in entry.commands  # it waits for that run
    assert not commands_named(entry, 'RPUSH')[:-1]  # no occurrence pushed: only the loop's record
    assert [r['outcome'] for r in records(entry)] == [overlap.BUFFERED]
    assert next_score(entry) == SLOT + INTERVAL  # the template goes on to its next regular slot


def test_buffer_one_a_slot_while_one_already_waits_is_skipped_and_the_waiting_one_stays():
    entry = planner().plan(template('buffer_one', buffered=SLOT - INTERVAL), b'queued')
    assert (entry.outcome, entry.enqueued_id) == (overlap.SKIPPED_WAITING, None)
    assert written_meta(entry)[overlap.BUFFERED_META] == SLOT - INTERVAL
    assert not commands_named(entry, 'HDEL') and keys.BUFFERED_KEY not in {c[1] for c in entry.commands}
    [record] = records(entry)
    assert (record['outcome'], record['fire_time'], record['job']) == (overlap.SKIPPED_WAITING, SLOT, None)


def test_buffer_one_a_slot_with_nothing_busy_runs_as_usual():
    entry = planner().plan(template('buffer_one'), b'finished')
    assert (entry.outcome, entry.enqueued_id) == (moves.ENQUEUED, run_of(SLOT))
    assert overlap.BUFFERED_META not in written_meta(entry)
    assert keys.BUFFERED_KEY not in {c[1] for c in entry.commands}


def test_buffer_one_a_wait_that_ended_unseen_runs_the_buffered_slot_and_this_one_waits_for_it():
    buffered = SLOT - INTERVAL
    entry = planner().plan(template('buffer_one', buffered=buffered), None)  # the run expired, say
    assert (entry.outcome, entry.enqueued_id) == (moves.ENQUEUED, run_of(buffered))  # its own slot, its own id
    ours = written_meta(entry)
    assert (ours[overlap.BUFFERED_META], ours['last_run_id']) == (SLOT, run_of(buffered))
    assert ('HSET', keys.BUFFERED_KEY, 't', run_of(buffered)) in entry.commands
    assert records(entry)[0]['fire_time'] == buffered  # the record tells of the run it enqueued


def test_a_release_enqueues_the_buffered_slot_and_keeps_the_templates_next_slot():
    buffered = SLOT - INTERVAL
    parsed = template('buffer_one', score=SLOT + INTERVAL, buffered=buffered, runs=3)
    entry = buffers.plan_release(planner(), parsed)
    assert (entry.outcome, entry.enqueued_id, entry.score) == (moves.ENQUEUED, run_of(buffered), repr(SLOT + INTERVAL))
    assert entry.requires_hash
    assert entry.commands[0] == (overlap.EXPECT_COMMAND, keys.job_key('t'), 'meta', parsed.raw[b'meta'])
    assert ('HDEL', keys.BUFFERED_KEY, 't') in entry.commands
    ours = written_meta(entry)
    assert overlap.BUFFERED_META not in ours and (ours['runs'], ours['last_run_id']) == (4, run_of(buffered))
    assert next_score(entry) is None  # the score it was planned with (guarded) stays
    [record] = records(entry)
    assert (record['job'], record['fire_time'], record['next'], record['runs']) == (
        run_of(buffered), buffered, SLOT + INTERVAL, 4
    )  # fmt: skip


def test_a_release_later_than_the_misfire_grace_is_recorded_as_skipped():
    parsed = template('buffer_one', score=SLOT + INTERVAL, buffered=SLOT - 100, misfire_grace=30)
    entry = buffers.plan_release(planner(), parsed)
    assert (entry.outcome, entry.enqueued_id) == (moves.SKIPPED_MISFIRE, None)
    assert overlap.BUFFERED_META not in written_meta(entry)


def test_a_release_of_the_last_repeat_retires_the_template():
    parsed = template('buffer_one', score=SLOT + INTERVAL, buffered=SLOT, repeat=1)
    entry = buffers.plan_release(planner(), parsed)
    assert entry.enqueued_id == run_of(SLOT)
    assert ('DEL', keys.job_key('t')) in entry.commands and records(entry)[0]['finished'] is True


@pytest.mark.parametrize(
    'parsed',
    [
        pytest.param(template('allow', buffered=SLOT), id='edited-to-another-policy'),
        pytest.param(template('buffer_one'), id='nothing-buffered'),
        pytest.param(moves.Parsed('t', SLOT, {b'origin': b'default'}, {'interval': 10}), id='not-ours'),
    ],
)
def test_a_release_of_a_template_not_buffering_only_forgets_the_wait(parsed):
    entry = buffers.plan_release(planner(), parsed)
    assert entry.commands == [('HDEL', keys.BUFFERED_KEY, 't')]
    assert (entry.outcome, entry.score, entry.requires_hash) == (overlap.RELEASE_DROPPED, '*', False)


@pytest.mark.parametrize('junk', ['soon', True, -1, math.inf, [SLOT], {'at': SLOT}])
def test_a_buffered_time_written_by_someone_else_dead_letters_the_schedule_naming_the_field(junk):
    for entry in (
        planner().plan(template('buffer_one', buffered=junk), b'started'),
        planner().plan(template('buffer_one', buffered=junk), None),
        buffers.plan_release(planner(), template('buffer_one', buffered=junk)),
    ):
        assert entry.outcome == moves.DEAD
        assert 'overlap buffered' in entry.reason and 'epoch seconds' in entry.reason


def test_an_unknown_policy_in_our_meta_is_taken_as_allow():
    entry = planner().plan(template('replace-them-all'), b'started')
    assert entry.enqueued_id == run_of(SLOT)
    assert moves.Parsed('t', SLOT, {}, template_meta('interval', interval=1, overlap=7)).previous_run_to_check is None


# -- cancel_other -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('status', [b'queued', b'started', b'deferred', b'scheduled'])
def test_cancel_other_ends_the_busy_previous_run_then_runs_the_slot(status):
    entry = planner().plan(template('cancel_other', runs=5), status)
    assert (entry.outcome, entry.enqueued_id) == (moves.ENQUEUED, run_of(SLOT))
    [replace] = commands_named(entry, overlap.REPLACE_COMMAND)
    assert entry.commands.index(replace) == 0  # before the new run is pushed
    _, queue_key, job_key, run_id, runs_key, canceled, prefix, stop = replace
    assert (queue_key, job_key, run_id, runs_key) == (
        'rq:queue:default',
        keys.job_key(PREVIOUS),
        PREVIOUS,
        keys.RUNS_KEY,
    )
    assert prefix + 'w1' == rq.command.PUBSUB_CHANNEL_TEMPLATE % 'w1'
    assert json.loads(stop) == {'command': 'stop-job', 'job_id': PREVIOUS}
    record = json.loads(canceled)
    assert (record['outcome'], record['canceled'], record['job'], record['runs']) == (
        overlap.CANCELED_OVERLAP, PREVIOUS, None, 5
    )  # fmt: skip
    assert record['next'] == SLOT + INTERVAL


def test_cancel_other_without_run_records_cancels_without_one():
    parsed = template('cancel_other')
    del parsed.ours['record']
    [replace] = commands_named(planner().plan(parsed, b'queued'), overlap.REPLACE_COMMAND)
    assert replace[5] == ''


@pytest.mark.parametrize('status', [None, b'finished', b'failed', b'stopped', b'canceled'])
def test_cancel_other_with_nothing_busy_runs_as_usual(status):
    entry = planner().plan(template('cancel_other'), status)
    assert entry.enqueued_id == run_of(SLOT) and not commands_named(entry, overlap.REPLACE_COMMAND)


# -- waits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('status', 'reported', 'over'),
    [
        (None, False, True),  # expired or deleted
        (b'finished', False, True),
        (b'failed', False, True),  # a killed worker's run, failed by RQ's cleanup
        (b'started', False, False),
        (b'started', True, True),  # its worker reported the end; RQ writes the status after the callbacks
        (b'queued', True, False),  # queued again (RQ's retry) after it reported a failure
        (b'queued', False, False),
    ],
)
def test_a_wait_is_over_when_the_run_has_ended(status, reported, over):
    assert overlap.wait_is_over(status, reported) is over


def test_the_previous_run_is_read_for_every_policy_that_looks_at_it():
    for policy, reads in [('allow', False), ('skip', True), ('buffer_one', True), ('cancel_other', True)]:
        assert (template(policy).previous_run_to_check == PREVIOUS) is reads
