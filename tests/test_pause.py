"""The global pause in the core (fakeredis, frozen clock): what the loop's read and move leave alone, that paused
entries never block the others behind them, fencing mid-batch, the catch-up on resume, and hostile pause keys."""

from __future__ import annotations

import json
import logging
import random
import threading
from datetime import timedelta, timezone

import pytest

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys, limits, pause, scripts
from django_rq_scheduled.core.jobs import template_meta
from django_rq_scheduled.core.loop import Loop
from tests import tasks
from tests.frozen import T0

UTC = timezone.utc


@pytest.fixture
def scheduler(fake_connection, clock):
    return Scheduler(connection=fake_connection, name='test', batch_size=3)


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def one_offs(scheduler, queue, count, start=T0, prefix=None):
    for n in range(count):
        scheduler.enqueue_at(
            start + timedelta(milliseconds=n), tasks.add, n, job_id=f'{prefix or queue}-{n}', queue_name=queue
        )


def tick(scheduler):
    """One pass of the leader; the frozen clock jumps further than the lease lasts, so it takes the lease again."""
    assert scheduler.acquire_lock()
    return scheduler.move_due_jobs()


def pause_now(connection, queues=None, reason='deploy'):
    return pause.pause(connection, queues, by='alice', reason=reason, now=T0.timestamp())


def our_template(scheduler, template_id, queue, every=60):
    """A template of ours (catch-up ``latest`` by default), as sync writes one."""
    job = scheduler.jobs.create(tasks.add, args=[1], id=template_id, queue_name=queue, commit=False)
    job.meta.update(template_meta('interval', interval=every))
    job.save()
    scheduler.connection.zadd(keys.SCHEDULED_JOBS_KEY, {template_id: T0.timestamp()})


def test_pausing_everything_moves_nothing_and_keeps_every_entry_due_with_its_score(scheduler, fake_connection, clock):
    one_offs(scheduler, 'default', 2)
    one_offs(scheduler, 'high', 2)
    before = fake_connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1, withscores=True)
    assert pause_now(fake_connection) == {keys.PAUSE_ALL: True}
    clock.move_to(T0 + timedelta(hours=1))
    report = tick(scheduler)
    assert report.paused == -1 and report.count == 0
    assert queued(fake_connection) == queued(fake_connection, 'high') == []
    assert fake_connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1, withscores=True) == before
    assert scheduler.count() == 4 and len(scheduler.get_jobs()) == 4  # still shown, still due

    assert pause.resume(fake_connection, None) == {keys.PAUSE_ALL: True}
    tick(scheduler)
    assert queued(fake_connection) == ['default-0', 'default-1'] and queued(fake_connection, 'high') == [
        'high-0',
        'high-1',
    ]
    assert tick(scheduler).count == 0  # once each


def test_a_paused_queue_never_blocks_the_entries_of_other_queues_behind_it(scheduler, fake_connection, clock):
    one_offs(scheduler, 'high', 10)  # earlier than every entry of default, more than three batches of them
    one_offs(scheduler, 'default', 5, start=T0 + timedelta(seconds=1))
    pause_now(fake_connection, ['high'])
    clock.move_to(T0 + timedelta(seconds=2))
    report = tick(scheduler)
    assert queued(fake_connection) == [f'default-{n}' for n in range(5)]
    assert queued(fake_connection, 'high') == []
    assert report.paused == 10 and report.batches == 2
    assert fake_connection.zcard(keys.SCHEDULED_JOBS_KEY) == 10

    pause.resume(fake_connection, ['high'])
    tick(scheduler)
    assert queued(fake_connection, 'high') == [f'high-{n}' for n in range(10)]
    assert queued(fake_connection) == [f'default-{n}' for n in range(5)]  # nothing twice


@pytest.mark.parametrize('interleaved', [False, True])
def test_a_paused_backlog_larger_than_one_read_steps_over_is_read_past(
    scheduler, fake_connection, clock, monkeypatch, interleaved
):
    monkeypatch.setattr(limits, 'MAX_PAUSED_SCAN', 4)
    one_offs(scheduler, 'high', 25)
    start = T0 + timedelta(milliseconds=3) if interleaved else T0 + timedelta(seconds=1)
    one_offs(scheduler, 'default', 8, start=start)
    pause_now(fake_connection, ['high'])
    clock.move_to(T0 + timedelta(seconds=2))
    report = tick(scheduler)
    assert sorted(queued(fake_connection)) == sorted(f'default-{n}' for n in range(8))
    assert report.paused == 25 and queued(fake_connection, 'high') == []


def test_a_pause_set_between_the_read_and_the_move_holds_for_that_batch(scheduler, fake_connection, clock):
    one_offs(scheduler, 'default', 2)
    one_offs(scheduler, 'high', 1)
    clock.move_to(T0 + timedelta(seconds=1))
    assert scheduler.acquire_lock()
    pairs, fields = scheduler.mover.read_due(T0.timestamp() + 1)
    assert len(pairs) == 3
    pause_now(fake_connection, ['high'])
    report = scheduler.mover.move_members(pairs, fenced=True, fields=fields)
    assert report.enqueued == ['default-0', 'default-1'] and queued(fake_connection, 'high') == []
    pause_now(fake_connection)
    one_offs(scheduler, 'default', 1, prefix='late')
    pairs, fields = scheduler.mover.read_due(T0.timestamp() + 1)
    assert scheduler.mover.move_members(pairs, fenced=True, fields=fields).count == 0
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'late-0') is not None


def test_run_now_by_hand_is_not_held_by_a_pause(scheduler, fake_connection, clock):
    one_offs(scheduler, 'default', 1, start=T0 + timedelta(hours=1))
    pause_now(fake_connection)
    job = scheduler.enqueue_job(scheduler.job_class.fetch('default-0', connection=fake_connection))
    assert job.id == 'default-0' and queued(fake_connection) == ['default-0']


def test_on_resume_a_periodic_template_runs_once_for_the_slots_of_the_pause(scheduler, fake_connection, clock):
    our_template(scheduler, 'drqs-intervaljob-1', 'high')
    pause_now(fake_connection, ['high'])
    clock.move_to(T0 + timedelta(minutes=10, seconds=5))  # ten slots fall inside the pause
    tick(scheduler)
    assert queued(fake_connection, 'high') == []
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'drqs-intervaljob-1') == T0.timestamp()
    pause.resume(fake_connection, ['high'])
    tick(scheduler)
    tick(scheduler)
    assert len(queued(fake_connection, 'high')) == 1  # catch-up 'latest': one run for the missed slots
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'drqs-intervaljob-1') > T0.timestamp() + 600


def test_pausing_twice_keeps_who_and_when_and_takes_the_new_reason(fake_connection):
    assert pause.pause(fake_connection, None, by='alice', reason='deploy', now=1000.0) == {keys.PAUSE_ALL: True}
    assert pause.pause(fake_connection, None, by='bob', reason='', now=2000.0) == {keys.PAUSE_ALL: False}
    assert pause.read_pause(fake_connection).everything == pause.PauseRecord('alice', 1000.0, 'deploy')
    pause.pause(fake_connection, None, by='bob', reason='migration runs long', now=3000.0)
    assert pause.read_pause(fake_connection).everything == pause.PauseRecord('alice', 1000.0, 'migration runs long')


def test_resuming_a_queue_does_not_lift_a_pause_of_everything(fake_connection):
    pause.pause(fake_connection, None, by='alice', reason='', now=1000.0)
    pause.pause(fake_connection, ['high'], by='alice', reason='', now=1000.0)
    assert pause.resume(fake_connection, ['high', 'default']) == {'high': True, 'default': False}
    state = pause.read_pause(fake_connection)
    assert state.everything is not None and state.queues == {} and state.paused('high')
    pause.pause(fake_connection, ['high'], by='alice', reason='', now=1000.0)
    assert pause.resume(fake_connection, None) == {keys.PAUSE_ALL: True, 'high': True}
    assert not pause.read_pause(fake_connection).any


def test_a_reason_too_long_is_refused_and_nothing_is_written(fake_connection):
    with pytest.raises(ValueError, match=r'^reason: '):
        pause.pause(fake_connection, None, by='alice', reason='x' * (limits.MAX_PAUSE_REASON + 1), now=1.0)
    assert not fake_connection.exists(keys.PAUSED_KEY)


@pytest.mark.parametrize('junk', [b'not json', b'[1, 2]', b'{"by": 7, "at": "yesterday", "reason": null}', b'\xff'])
def test_junk_in_a_pause_record_still_pauses_its_scope(scheduler, fake_connection, clock, junk):
    fake_connection.hset(keys.PAUSED_KEY, 'high', junk)
    one_offs(scheduler, 'high', 1)
    one_offs(scheduler, 'default', 1)
    clock.move_to(T0 + timedelta(seconds=1))
    tick(scheduler)
    assert queued(fake_connection) == ['default-0'] and queued(fake_connection, 'high') == []
    assert pause.read_pause(fake_connection).queues == {'high': pause.PauseRecord()}
    pause.pause(fake_connection, ['high'], by='alice', reason='fixed', now=5.0)  # a junk record is replaced
    assert pause.read_pause(fake_connection).queues['high'] == pause.PauseRecord('alice', 5.0, 'fixed')


def test_a_pause_key_of_the_wrong_type_pauses_nothing_and_is_logged_once(scheduler, fake_connection, clock, caplog):
    fake_connection.set(keys.PAUSED_KEY, 'someone else wrote this')
    one_offs(scheduler, 'default', 2)
    loop = Loop(scheduler, threading.Event())
    clock.move_to(T0 + timedelta(seconds=1))
    with caplog.at_level(logging.ERROR, logger='django_rq_scheduled.core.loop'):
        for _ in range(3):
            loop._note_pause(tick(scheduler))
    assert queued(fake_connection) == ['default-0', 'default-1']
    assert [r.message for r in caplog.records].count(
        f'The pause key {keys.PAUSED_KEY} cannot be read '
        '(WRONGTYPE Operation against a key holding the wrong kind of value): nothing is paused'
    ) == 1
    assert 'WRONGTYPE' in pause.read_pause(fake_connection).problem
    with pytest.raises(Exception, match='WRONGTYPE'):
        pause_now(fake_connection)


def test_due_entries_of_a_paused_queue_do_not_wake_the_loop_at_once(scheduler, fake_connection, clock):
    one_offs(scheduler, 'high', 1)
    one_offs(scheduler, 'default', 1, start=T0 + timedelta(seconds=30))
    pause_now(fake_connection, ['high'])
    clock.move_to(T0 + timedelta(seconds=1))
    report = tick(scheduler)
    assert report.paused == 1
    arm = fake_connection.register_script(scripts.ARM_WAKEUP)
    latest = T0.timestamp() + 60
    earliest, together = arm(keys=list(keys.WAKEUP_KEYS), args=[repr(latest), 60_000, repr(report.read_at)])
    assert (float(earliest), together) == ((T0 + timedelta(seconds=30)).timestamp(), 1)  # default's, not 'high-0'
    assert float(arm(keys=list(keys.WAKEUP_KEYS), args=[repr(latest), 60_000])[0]) == T0.timestamp()


def test_the_records_are_json_a_person_can_read(fake_connection):
    pause.pause(fake_connection, ['high'], by='alice', reason='deploy', now=1000.5)
    assert json.loads(fake_connection.hget(keys.PAUSED_KEY, 'high')) == {
        'by': 'alice',
        'at': 1000.5,
        'reason': 'deploy',
    }


STATES = {'nothing': (), 'everything': None, 'high': ('high',), 'default': ('default',), 'both': ('default', 'high')}


def set_state(connection, state):
    pause.resume(connection, None)
    if STATES[state] != ():
        pause_now(connection, None if STATES[state] is None else list(STATES[state]))


def paused_queues(state):
    return {'default', 'high'} if STATES[state] is None else set(STATES[state])


@pytest.mark.parametrize('seed', range(8))
def test_pauses_toggled_between_and_during_passes_lose_nothing_and_move_nothing_twice(
    scheduler, fake_connection, clock, monkeypatch, seed
):
    """Random pauses, set before a pass and while it plans its batches (read-ahead included), over interleaved
    one-offs of two queues, passes cut short at random, a read that steps over at most 5 paused entries per call:
    every job reaches its queue exactly once, and a queue paused all through a pass gains nothing in it."""
    rng = random.Random(seed)
    monkeypatch.setattr(limits, 'MAX_PAUSED_SCAN', 5)
    expected: dict[str, list[str]] = {'default': [], 'high': []}
    for n in range(150):
        queue = rng.choice(['default', 'high'])
        scheduler.enqueue_at(T0 + timedelta(milliseconds=n), tasks.add, n, job_id=f'job-{n}', queue_name=queue)
        expected[queue].append(f'job-{n}')
    plan_batch = scheduler.mover.plan_batch
    states_seen: list[str] = []

    def toggling_plan_batch(*args):
        if rng.random() < 0.3:
            states_seen.append(rng.choice(list(STATES)))
            set_state(fake_connection, states_seen[-1])
        if rng.random() < 0.2:
            scheduler.mover.stop.set()  # the pass ends after this batch
        return plan_batch(*args)

    monkeypatch.setattr(scheduler.mover, 'plan_batch', toggling_plan_batch)
    clock.move_to(T0 + timedelta(seconds=1))
    passes = 0
    while fake_connection.zcard(keys.SCHEDULED_JOBS_KEY) and passes < 300:
        passes += 1
        states_seen[:] = [rng.choice(list(STATES))]
        set_state(fake_connection, states_seen[0])
        lengths = {queue: len(queued(fake_connection, queue)) for queue in expected}
        tick(scheduler)
        scheduler.mover.stop.clear()
        for queue in set.intersection(*(paused_queues(state) for state in states_seen)):
            assert len(queued(fake_connection, queue)) == lengths[queue]
    for queue, ids in expected.items():
        assert sorted(queued(fake_connection, queue)) == sorted(ids)  # each once: nothing lost, nothing twice
    assert fake_connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_a_buffered_run_of_a_paused_queue_waits_for_the_resume_and_then_runs_once(scheduler, fake_connection, clock):
    from tests.test_overlap import moved, run_id, set_status

    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    assert moved(scheduler, clock, 0) == [run_id('b', 0)]
    assert moved(scheduler, clock, 10) == []  # this slot waits for the first run
    pause_now(fake_connection, ['default'])
    set_status(fake_connection, run_id('b', 0), 'finished')
    assert moved(scheduler, clock, 11) == []  # its wait is over, but its queue is paused: the release waits too
    assert fake_connection.hexists(keys.BUFFERED_KEY, 'b')
    pause.resume(fake_connection, None)
    assert moved(scheduler, clock, 12) == [run_id('b', 10)]
    assert moved(scheduler, clock, 13) == []  # once
