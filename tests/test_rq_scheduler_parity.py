"""Where rq-scheduler 0.14's own test suite found us behaving differently from it, and the fixed keys, the socket
timeouts of rqscheduler, the scheduler's clock and the millisecond precision guarantee."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.clock import ServerClock
from tests import tasks

UTC = timezone.utc
LATER = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture
def scheduler(fake_connection):
    return Scheduler(connection=fake_connection, name='parity')


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def test_positional_arguments_are_stored_as_a_tuple(scheduler, fake_connection):
    scheduler.enqueue_at(LATER, tasks.add, 1, 2, job_id='at')
    scheduler.schedule(LATER, tasks.add, args=[1, 2], interval=60, id='every')
    scheduler.cron('* * * * *', tasks.add, args=[1, 2], id='cron')
    for job_id in ('at', 'every', 'cron'):
        assert Job.fetch(job_id, connection=fake_connection).args == (1, 2)


def test_enqueue_job_updates_the_callers_job_in_place(scheduler, fake_connection):
    job = scheduler.enqueue_at(datetime.now(UTC), tasks.add, 1, 2, job_id='now')
    returned = scheduler.enqueue_job(job)
    assert job.get_status(refresh=False) == 'queued' and job.enqueued_at is not None
    assert returned.id == 'now' and queued(fake_connection) == ['now']


def test_enqueue_job_of_a_periodic_jobs_last_due_run_returns_the_run(scheduler, fake_connection):
    template = scheduler.schedule(datetime.now(UTC), tasks.add, args=[1, 2], interval=60, repeat=1, id='last')
    run = scheduler.enqueue_job(template)  # its template is deleted by this, its last run
    assert queued(fake_connection) == [run.id] and run.id.startswith('last_at_')


def test_enqueue_job_of_a_one_off_not_due_yet_enqueues_it_and_takes_it_out_of_the_schedule(scheduler, fake_connection):
    job = scheduler.enqueue_at(LATER, tasks.add, 1, 2, job_id='later')
    scheduler.enqueue_job(job)
    assert queued(fake_connection) == ['later'] and 'later' not in scheduler
    assert job.get_status(refresh=False) == 'queued'
    assert scheduler.enqueue_jobs() == []


def test_enqueue_job_of_a_periodic_job_not_due_yet_runs_it_now_and_keeps_the_pending_run(scheduler, fake_connection):
    template = scheduler.schedule(LATER, tasks.add, args=[1, 2], interval=60, repeat=3, id='every')
    score = fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'every')
    run = scheduler.enqueue_job(template)
    assert queued(fake_connection) == [run.id] and run.id.startswith('every_now_')
    assert run.args == (1, 2)
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'every') == score  # the pending run stays
    assert Job.fetch('every', connection=fake_connection).meta['repeat'] == 3  # an extra run, not one of the 3


def test_enqueue_job_of_an_rq_scheduler_periodic_job_not_due_yet_keeps_the_pending_run(scheduler, fake_connection):
    job = scheduler.enqueue_at(LATER, tasks.add, 1, 2, job_id='theirs')
    job.meta['interval'] = 60  # rq-scheduler's own format: the same id runs each time
    job.save_meta()
    score = fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'theirs')
    scheduler.enqueue_job(job)
    assert queued(fake_connection) == ['theirs']
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'theirs') == score


def test_a_signal_ends_run_with_system_exit_after_releasing_the_lease(fake_connection):
    scheduler = Scheduler(connection=fake_connection, name='signalled', interval=0.05)
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(SystemExit) as exit_info:
        scheduler.run()
    assert exit_info.value.code == 0
    assert fake_connection.get(keys.LOCK_KEY) is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_request_stop_ends_run_normally(fake_connection):
    scheduler = Scheduler(connection=fake_connection, name='asked', interval=0.05)
    threading.Timer(0.2, scheduler.request_stop).start()
    scheduler.run()  # no SystemExit: nobody sent a signal


def test_a_job_scheduled_for_now_is_due_now(scheduler):
    misses = 0
    for number in range(2000):
        scheduler.enqueue_at(datetime.now(UTC), tasks.add, number, 1, job_id=f'now-{number}')
        due = {job.id for job in scheduler.get_jobs_to_queue()}
        misses += f'now-{number}' not in due
        scheduler.cancel(f'now-{number}')
    assert misses == 0


def test_times_are_truncated_to_the_millisecond_never_rounded_up(scheduler, fake_connection):
    for microsecond, expected in ((999, 0.0), (1000, 0.001), (1999, 0.001), (999_999, 0.999)):
        when = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(microseconds=microsecond)
        scheduler.enqueue_at(when, tasks.add, job_id=f'm{microsecond}')
        score = fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, f'm{microsecond}')
        assert score - datetime(2030, 1, 1, tzinfo=UTC).timestamp() == pytest.approx(expected, abs=1e-6)
        assert score <= when.timestamp()


def test_an_explicit_move_leaves_no_instance_entry_behind_and_run_starts_after_it(fake_connection):
    scheduler = Scheduler(connection=fake_connection, name='explicit')
    scheduler.enqueue_jobs()
    scheduler.acquire_lock()
    scheduler.remove_lock()
    assert not fake_connection.exists(keys.instance_key('explicit'))
    runner = threading.Thread(target=scheduler.run, kwargs={'burst': True})
    runner.start()
    runner.join(5)
    assert not runner.is_alive()  # waited for ever on an entry without expiry before


def test_a_leftover_entry_without_birth_does_not_keep_the_name_taken(fake_connection):
    fake_connection.hset(keys.instance_key('leftover'), 'leader_since', time.time())  # an older release's leftover
    runner = threading.Thread(target=Scheduler(connection=fake_connection, name='leftover').run, kwargs={'burst': True})
    runner.start()
    runner.join(5)
    assert not runner.is_alive()


@pytest.mark.parametrize('name', ['scheduled_jobs_key', 'scheduler_lock_key', 'redis_scheduler_namespace_prefix'])
def test_the_keys_of_the_schedule_cannot_be_renamed(fake_connection, name):
    with pytest.raises(TypeError, match='fixed'):
        type('Renamed', (Scheduler,), {name: 'my:own:key'})
    scheduler = Scheduler(connection=fake_connection)
    with pytest.raises(AttributeError, match='fixed'):
        setattr(scheduler, name, 'my:own:key')
    type('Same', (Scheduler,), {name: getattr(Scheduler, name)})  # naming the same key is fine


def test_a_job_class_with_other_job_keys_is_refused(fake_connection):
    other = type('OtherJob', (Job,), {'redis_job_namespace_prefix': 'other:job:'})
    with pytest.raises(ValueError, match='job_class'):
        Scheduler(connection=fake_connection, job_class=other)


# -- rqscheduler's socket timeouts reach the scheduler's own connection ------------------------------------------


@pytest.mark.integration
def test_rqscheduler_bounds_the_socket_timeouts_of_the_connection_its_scheduler_uses(redis_url, settings):
    from django_rq_scheduled.management.commands.rqscheduler import Command

    address = urlparse(redis_url)
    settings.RQ_QUEUES = {
        'default': {
            'HOST': address.hostname, 'PORT': address.port, 'DB': 0,
            'REDIS_CLIENT_KWARGS': {'socket_timeout': None, 'socket_connect_timeout': None},
        }
    }  # fmt: skip
    options = {'queue': None, 'lease_ttl': 2.0, 'name': 'bounded', 'interval': None, 'batch_size': None}
    [scheduler] = Command()._build_schedulers(options)
    kwargs = scheduler.connection.connection_pool.connection_kwargs
    assert kwargs['socket_timeout'] == kwargs['socket_connect_timeout'] == 5.0


# -- one clock for every scheduler -------------------------------------------------------------------------------


class SkewedClock:
    """time.time() of a host whose clock runs ``skew`` seconds ahead."""

    def __init__(self, monkeypatch, skew):
        real = time.time
        monkeypatch.setattr(time, 'time', lambda: real() + skew)


@pytest.mark.integration
def test_a_scheduler_whose_clock_runs_ahead_enqueues_nothing_early(connection, monkeypatch):
    Scheduler(connection=connection).enqueue_at(datetime.now(UTC) + timedelta(seconds=10), tasks.add, job_id='soon')
    SkewedClock(monkeypatch, 30)  # this host thinks the job is 20 s overdue
    scheduler = Scheduler(connection=connection, name='ahead', interval=0.05)
    threading.Timer(0.5, scheduler.request_stop).start()
    scheduler.run()
    assert queued(connection) == []
    assert scheduler.clock.offset == pytest.approx(-30, abs=0.5)


@pytest.mark.integration
def test_a_scheduler_whose_clock_runs_behind_is_not_late(connection, monkeypatch):
    Scheduler(connection=connection).enqueue_at(datetime.now(UTC) + timedelta(seconds=0.3), tasks.add, job_id='soon')
    SkewedClock(monkeypatch, -30)
    scheduler = Scheduler(connection=connection, name='behind', interval=0.05)
    threading.Timer(1.5, scheduler.request_stop).start()
    scheduler.run()
    assert queued(connection) == ['soon']


@pytest.mark.integration
def test_the_clock_offset_is_measured_from_redis_time(connection, monkeypatch):
    clock = ServerClock(connection)
    assert clock.offset == 0.0
    clock.measure()
    assert abs(clock.offset) < 0.05
    SkewedClock(monkeypatch, 120)
    clock.measure()
    assert clock.offset == pytest.approx(-120, abs=0.05)
    assert abs(clock.now() - (time.time() - 120)) < 0.05
