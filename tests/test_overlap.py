"""Overlap policies through the Scheduler API and the move script (fakeredis, frozen clock): a buffered run is
enqueued as soon as the awaited run ends, once, under its own slot; cancel_other cancels a queued run and sends
RQ's stop-job command to the worker of a running one; foreign data in the buffer and Redis errors in the worker's
capture stop nothing."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq.job import Job

from django_rq_scheduled.core import buffers, capture, keys, overlap
from django_rq_scheduled.core.errors import LeadershipLost
from django_rq_scheduled.core.mover import MoveReport
from tests import tasks
from tests.frozen import T0

UTC = timezone.utc


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run_id(template: str, seconds: float) -> str:
    return keys.occurrence_id(template, round(at(seconds).timestamp() * 1000))


def queued(connection) -> list[str]:
    return [member.decode() for member in connection.lrange('rq:queue:default', 0, -1)]


def moved(scheduler, clock, seconds: float) -> list[str]:
    clock.move_to(at(seconds))
    return [job.id for job in scheduler.enqueue_jobs()]


def set_status(connection, job_id: str, status: str, **fields: str) -> None:
    connection.hset(keys.job_key(job_id), mapping={'status': status, **fields})


# -- buffer_one -------------------------------------------------------------------------------------------------


def test_buffer_one_keeps_one_slot_waiting_and_enqueues_it_once_the_run_ends(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    assert moved(scheduler, clock, 0) == [run_id('b', 0)]
    assert moved(scheduler, clock, 10) == []  # the first run still waits in its queue: this slot waits for it
    assert moved(scheduler, clock, 20) == []  # one is waiting already: this slot is skipped
    assert moved(scheduler, clock, 25) == []
    assert queued(fake_connection) == [run_id('b', 0)]
    set_status(fake_connection, run_id('b', 0), 'finished')
    assert moved(scheduler, clock, 25.5) == [run_id('b', 10)]  # at once, under its own slot: not at 30
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'b') == at(30).timestamp()
    assert Job.fetch(run_id('b', 10), connection=fake_connection).meta[keys.META_KEY]['fire_time'] == at(10).timestamp()
    assert moved(scheduler, clock, 26) == []  # exactly once
    assert not fake_connection.exists(keys.BUFFERED_KEY)
    assert moved(scheduler, clock, 30) == []  # the released run is queued: the slot at 30 waits for it
    assert fake_connection.hget(keys.BUFFERED_KEY, 'b') == run_id('b', 10).encode()
    set_status(fake_connection, run_id('b', 10), 'failed')
    assert moved(scheduler, clock, 31) == [run_id('b', 30)]
    set_status(fake_connection, run_id('b', 30), 'finished')
    assert moved(scheduler, clock, 40) == [run_id('b', 40)]  # nothing busy: a slot runs as usual
    assert queued(fake_connection) == [run_id('b', s) for s in (0, 10, 30, 40)]


def test_a_buffered_run_whose_callable_the_allow_list_now_refuses_is_never_released(fake_connection, clock):
    from django_rq_scheduled import Scheduler

    allowed = Scheduler(connection=fake_connection, name='test')
    allowed.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    assert moved(allowed, clock, 0) == [run_id('b', 0)]
    assert moved(allowed, clock, 10) == []  # this slot waits for the first run
    set_status(fake_connection, run_id('b', 0), 'finished')
    strict = Scheduler(connection=fake_connection, name='test', callable_allowed=lambda path: False)
    assert moved(strict, clock, 10.5) == []  # the release reads the template through the allow-list too
    assert not fake_connection.hexists(keys.BUFFERED_KEY, 'b')  # the wait is forgotten, not released
    assert moved(strict, clock, 20) == []  # and the template's next slot takes it out of the schedule
    assert queued(fake_connection) == [run_id('b', 0)]
    assert 'callable refused' in strict.dead_letters()['b']


def test_the_workers_report_ends_the_wait_before_rq_writes_the_final_status(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    moved(scheduler, clock, 0)
    moved(scheduler, clock, 10)
    set_status(fake_connection, run_id('b', 0), 'started')
    first = Job.fetch(run_id('b', 0), connection=fake_connection)
    capture.record_success(first, fake_connection, 3)  # RQ calls it while the status still says 'started'
    assert fake_connection.hget(keys.BUFFERED_KEY, 'b') == (keys.RUN_ENDED_PREFIX + first.id).encode()
    assert fake_connection.lrange(keys.WAKEUP_KEY, 0, -1) == [b'1']  # the sleeping leader wakes
    assert json.loads(fake_connection.lindex(keys.OUTCOMES_KEY, 0))['job'] == first.id
    assert moved(scheduler, clock, 11) == [run_id('b', 10)]


def test_a_report_of_another_run_ends_no_wait(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    moved(scheduler, clock, 0)
    moved(scheduler, clock, 10)
    set_status(fake_connection, run_id('b', 0), 'started')
    stranger = Job.create(tasks.add, args=[1, 2], id='b_now_1', connection=fake_connection)
    stranger.meta[keys.META_KEY] = {'template': 'b'}
    capture.record_success(stranger, fake_connection, 3)  # a run by hand of the same schedule
    assert fake_connection.hget(keys.BUFFERED_KEY, 'b') == run_id('b', 0).encode()
    assert moved(scheduler, clock, 11) == []


def test_a_retried_run_that_reported_its_failure_keeps_the_slot_waiting(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    moved(scheduler, clock, 0)
    moved(scheduler, clock, 10)
    first = Job.fetch(run_id('b', 0), connection=fake_connection)
    capture.record_failure(first, fake_connection, ValueError, ValueError('x'), None)
    set_status(fake_connection, first.id, 'queued')  # RQ's retry queued it again
    assert moved(scheduler, clock, 11) == []
    set_status(fake_connection, first.id, 'failed')
    assert moved(scheduler, clock, 12) == [run_id('b', 10)]


def test_a_users_edit_written_while_a_release_is_planned_is_never_overwritten(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    moved(scheduler, clock, 0)
    moved(scheduler, clock, 10)
    set_status(fake_connection, run_id('b', 0), 'finished')
    clock.move_to(at(11))
    planner = scheduler.mover.planner(at(11).timestamp())
    [(score, raw)] = buffers.read_templates(fake_connection, ['b'])
    entry = buffers.plan_release(planner, planner.parse('b', score, raw))
    edited = Job.fetch('b', connection=fake_connection)
    edited.meta['edited'] = True  # a sync writing the row's edit, at the same score
    edited.save_meta()
    report = MoveReport()
    assert scheduler.acquire_lock()
    scheduler.mover._apply_entries(planner, [entry], report, fenced=True)
    assert report.enqueued == [] and queued(fake_connection) == [run_id('b', 0)]
    assert moved(scheduler, clock, 12) == [run_id('b', 10)]  # read again, the release goes through
    assert Job.fetch('b', connection=fake_connection).meta['edited'] is True


# -- cancel_other -----------------------------------------------------------------------------------------------


def test_cancel_other_takes_a_queued_run_out_of_its_queue(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='c', overlap='cancel_other')
    moved(scheduler, clock, 0)
    assert moved(scheduler, clock, 10) == [run_id('c', 10)]
    assert queued(fake_connection) == [run_id('c', 10)]
    assert Job.fetch(run_id('c', 0), connection=fake_connection).get_status() == 'canceled'


def test_cancel_other_sends_rqs_stop_job_command_to_the_worker_of_a_running_run(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='c', overlap='cancel_other')
    moved(scheduler, clock, 0)
    fake_connection.lpop('rq:queue:default')  # a worker took it
    set_status(fake_connection, run_id('c', 0), 'started', worker_name='w1')
    subscriber = fake_connection.pubsub()
    subscriber.subscribe('rq:pubsub:w1')
    assert subscriber.get_message(timeout=1)['type'] == 'subscribe'
    assert moved(scheduler, clock, 10) == [run_id('c', 10)]
    message = subscriber.get_message(timeout=1)
    assert json.loads(message['data']) == {'command': 'stop-job', 'job_id': run_id('c', 0)}
    assert Job.fetch(run_id('c', 0), connection=fake_connection).get_status() == 'started'  # its worker says stopped


def test_cancel_other_leaves_a_run_that_ended_meanwhile_alone(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='c', overlap='cancel_other')
    moved(scheduler, clock, 0)
    clock.move_to(at(10))
    now = at(10).timestamp()
    batch = scheduler.mover.plan_batch([('c', now)], None, now)  # planned while the first run still waits
    fake_connection.lpop('rq:queue:default')
    set_status(fake_connection, run_id('c', 0), 'finished')  # then a worker ran it
    assert scheduler.acquire_lock()
    report = MoveReport()
    scheduler.mover.apply_batch(batch, report, fenced=True)
    assert report.enqueued == [run_id('c', 10)]
    assert fake_connection.hget(keys.job_key(run_id('c', 0)), 'status') == b'finished'
    assert queued(fake_connection) == [run_id('c', 10)]


def test_a_deposed_leader_cancels_nothing(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='c', overlap='cancel_other')
    moved(scheduler, clock, 0)
    clock.move_to(at(10))
    assert scheduler.acquire_lock()
    fake_connection.set(keys.LOCK_KEY, 'someone else')
    with pytest.raises(LeadershipLost):
        scheduler.move_due_jobs()
    assert queued(fake_connection) == [run_id('c', 0)]
    assert Job.fetch(run_id('c', 0), connection=fake_connection).get_status() == 'queued'


# -- foreign data and Redis errors ------------------------------------------------------------------------------


def test_waits_for_templates_that_are_gone_or_not_ours_are_forgotten(scheduler, fake_connection, clock):
    scheduler.enqueue_at(at(3600), tasks.add, 1, 2, job_id='one-off')  # in the schedule, but no template of ours
    fake_connection.hset(keys.job_key('theirs'), mapping={'origin': 'default', 'data': b'x'})
    fake_connection.zadd(keys.SCHEDULED_JOBS_KEY, {'theirs': at(3600).timestamp()})
    waits = {'gone': 'gone_at_1', 'one-off': 'x_at_1', 'theirs': 'y_at_1', b'\xff\xfe': 'z_at_1'}
    fake_connection.hset(keys.BUFFERED_KEY, mapping=waits)
    assert moved(scheduler, clock, 0) == []
    assert not fake_connection.exists(keys.BUFFERED_KEY)
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'one-off') == at(3600).timestamp()
    assert queued(fake_connection) == []


def test_a_buffered_time_of_the_wrong_type_dead_letters_that_schedule_alone(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='ok')
    job = Job.fetch('b', connection=fake_connection)
    job.meta[keys.META_KEY][overlap.BUFFERED_META] = 'soon'
    job.save_meta()
    fake_connection.hset(keys.BUFFERED_KEY, 'b', 'nothing_at_1')  # its wait is over: the release reads it first
    assert moved(scheduler, clock, 0) == [run_id('ok', 0)]
    assert 'overlap buffered' in scheduler.dead_letters()['b']


def test_a_buffer_key_someone_broke_holds_up_no_move_and_no_report(scheduler, fake_connection, clock, caplog):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='a')
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=10, id='b', overlap='buffer_one')
    fake_connection.set(keys.BUFFERED_KEY, 'foreign')
    assert sorted(moved(scheduler, clock, 0)) == [run_id('a', 0), run_id('b', 0)]
    with caplog.at_level(logging.WARNING):
        assert moved(scheduler, clock, 10) == [run_id('a', 10)]  # b cannot wait: dead-lettered, naming the key
    assert 'WRONGTYPE rq:drqs:buffered' in scheduler.dead_letters()['b']
    assert buffers.ended_waits(fake_connection) == []
    assert 'Cannot read the buffered runs' in caplog.text
    job = Job.fetch(run_id('a', 0), connection=fake_connection)
    job.meta[keys.META_KEY] = {'template': 'a'}
    capture.record_success(job, fake_connection, 3)
    assert fake_connection.llen(keys.OUTCOMES_KEY) == 1


class Unreachable(redis.Redis):
    def execute_command(self, *args, **options):
        raise redis.ConnectionError('Redis is away')


def test_redis_errors_in_the_capture_never_fail_the_users_job(fake_connection, caplog):
    job = Job.create(tasks.add, args=[1, 2], id='drqs-repeatablejob-1_at_1', connection=fake_connection)
    job.meta[keys.META_KEY] = {'template': 'drqs-repeatablejob-1'}
    away = Unreachable()
    with caplog.at_level(logging.ERROR, logger=capture.__name__):
        capture.record_success(job, away, 3)
        capture.record_failure(job, away, ValueError, ValueError('x'), None)
        capture.record_stopped(job, away)
    assert caplog.text.count('Could not record the end of job') == 3


def test_the_capture_loads_its_script_again_after_a_redis_restart(fake_connection):
    job = Job.create(tasks.add, args=[1, 2], id='j', connection=fake_connection)
    capture.record_success(job, fake_connection, 3)
    fake_connection.script_flush()
    capture.record_success(job, fake_connection, 3)
    assert fake_connection.llen(keys.OUTCOMES_KEY) == 2


@pytest.mark.parametrize('meta', [{}, {keys.META_KEY: 'x'}, {keys.META_KEY: {'template': 7}}])
def test_a_run_without_a_readable_template_is_recorded_all_the_same(fake_connection, meta):
    job = Job.create(tasks.add, args=[1, 2], id='j', connection=fake_connection, meta=meta)
    capture.record_success(job, fake_connection, 3)
    assert fake_connection.llen(keys.OUTCOMES_KEY) == 1
