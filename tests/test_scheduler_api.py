"""The Scheduler's producer API on fakeredis: rq-scheduler's data layout, validation, and its defects fixed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks

UTC = timezone.utc


@pytest.fixture
def scheduler(fake_connection):
    return Scheduler(connection=fake_connection)


def zset(connection):
    return {m.decode(): s for m, s in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1, withscores=True)}


def test_importable_from_package_root():
    from django_rq_scheduled.scheduler import Scheduler as Direct

    assert Scheduler is Direct


def test_enqueue_at_writes_rq_scheduler_layout(scheduler, fake_connection):
    when = datetime(2030, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)
    job = scheduler.enqueue_at(when, tasks.add, 1, 2, job_id='add-1', queue_name='high', timeout=30)
    assert zset(fake_connection) == {'add-1': pytest.approx(when.timestamp())}
    assert fake_connection.zscore(keys.SCHEDULED_JOBS_KEY, 'add-1') == 1893499200.25  # millisecond precision
    stored = Job.fetch('add-1', connection=fake_connection)
    assert stored.get_status() == 'scheduled'
    assert stored.origin == 'high'
    assert stored.args == (1, 2)  # a tuple, as rq-scheduler stores them
    assert stored.timeout == 30
    assert job.id == 'add-1'


def test_naive_datetimes_mean_utc(scheduler, fake_connection):
    scheduler.enqueue_at(datetime(2030, 1, 1, 12, 0), tasks.add, 1, 2, job_id='naive')
    scheduler.enqueue_at(datetime(2030, 1, 1, 7, 0, tzinfo=ZoneInfo('America/New_York')), tasks.add, job_id='aware')
    scores = zset(fake_connection)
    assert scores['naive'] == scores['aware'] == datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()


def test_reserved_kwargs_are_job_options_and_the_rest_goes_to_the_function(scheduler):
    job = scheduler.enqueue_in(
        timedelta(minutes=5),
        tasks.record,
        'x',
        job_description='desc',
        job_ttl=60,
        job_result_ttl=10,
        meta={'owner': 'me'},
        label_kw='kept',
    )
    stored = Job.fetch(job.id, connection=scheduler.connection)
    assert stored.description == 'desc'
    assert stored.ttl == 60
    assert stored.result_ttl == 10
    assert stored.meta == {'owner': 'me'}
    assert stored.kwargs == {'label_kw': 'kept'}


def test_at_front_is_persisted_for_every_method(scheduler):
    # rq-scheduler saves before setting at_front for enqueue_at/enqueue_in, so it is silently lost there.
    now = datetime.now(UTC)
    jobs = [
        scheduler.enqueue_at(now, tasks.add, 1, 2, at_front=True),
        scheduler.enqueue_in(timedelta(seconds=1), tasks.add, 1, 2, at_front=True),
        scheduler.schedule(now, tasks.add, interval=60, at_front=True),
        scheduler.cron('* * * * *', tasks.add, at_front=True),
    ]
    for job in jobs:
        assert Job.fetch(job.id, connection=scheduler.connection).enqueue_at_front is True


def test_callers_meta_is_copied_not_mutated(scheduler):
    meta = {'owner': 'me'}
    scheduler.cron('* * * * *', tasks.add, meta=meta)
    job = scheduler.enqueue_at(datetime.now(UTC), tasks.add, meta=meta)
    assert meta == {'owner': 'me'}
    assert 'cron_string' not in Job.fetch(job.id, connection=scheduler.connection).meta


def test_schedule_stores_interval_and_repeat_meta(scheduler):
    job = scheduler.schedule(datetime.now(UTC), tasks.add, args=[1, 2], interval=90.5, repeat=3, id='every')
    meta = Job.fetch('every', connection=scheduler.connection).meta
    assert meta['interval'] == 90  # what rq-scheduler reads
    assert meta['repeat'] == 3
    assert meta[keys.META_KEY]['interval'] == 90.5
    assert meta[keys.META_KEY]['kind'] == 'interval'
    assert job.id == 'every'


def test_cron_first_run_is_the_next_match_in_its_time_zone(scheduler, fake_connection):
    scheduler.cron('0 7 * * *', tasks.add, id='morning', timezone='Europe/Paris')
    score = zset(fake_connection)['morning']
    first = datetime.fromtimestamp(score, tz=ZoneInfo('Europe/Paris'))
    assert (first.hour, first.minute) == (7, 0)
    assert 0 < score - datetime.now(UTC).timestamp() <= 86400
    meta = Job.fetch('morning', connection=fake_connection).meta
    assert meta['cron_string'] == '0 7 * * *'
    assert meta[keys.META_KEY]['timezone'] == 'Europe/Paris'


def test_same_id_replaces_the_schedule_entry(scheduler, fake_connection):
    scheduler.cron('* * * * *', tasks.add, id='dedup')
    scheduler.cron('*/5 * * * *', tasks.add, id='dedup')
    assert list(zset(fake_connection)) == ['dedup']


@pytest.mark.parametrize(
    ('call', 'argument'),
    [
        (lambda s: s.enqueue_at('tomorrow', tasks.add), 'scheduled_time'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_id='bad id'), 'id'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_id='a:b'), 'id'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, queue_name='nope'), 'queue_name'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, timeout=0), 'timeout'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_ttl=-5), 'ttl'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_ttl='soon'), 'ttl'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, meta=['x']), 'meta'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_result_ttl=float('nan')), 'result_ttl'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, job_result_ttl=1.5), 'result_ttl'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, timeout=True), 'timeout'),
        (lambda s: s.enqueue_at(datetime.now(UTC), tasks.add, timeout=[60]), 'timeout'),
        (lambda s: s.enqueue_at(datetime.now(UTC), 'nodots'), 'func'),
        (lambda s: s.enqueue_at(datetime.now(UTC), int), 'func'),
        (lambda s: s.enqueue_in(5, tasks.add), 'time_delta'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=0), 'interval'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=-3), 'interval'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval='often'), 'interval'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=10, repeat=0), 'repeat'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=10, repeat=-1), 'repeat'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, repeat=2), 'repeat'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, args='1,2'), 'args'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, kwargs=[1]), 'kwargs'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=5, overlap='never'), 'overlap'),
        (lambda s: s.schedule(datetime.now(UTC), tasks.add, interval=5, misfire_grace=0), 'misfire_grace'),
        (lambda s: s.cron('61 * * * *', tasks.add), 'cron_string'),
        (lambda s: s.cron('not a cron', tasks.add), 'cron_string'),
        (lambda s: s.cron('0 0 1 1 * 0 2020', tasks.add), 'cron_string'),
        (lambda s: s.cron('* * * * *', tasks.add, timezone='Mars/Base'), 'timezone'),
        (lambda s: s.cron('* * * * *', tasks.add, repeat=0), 'repeat'),
        (lambda s: s.cancel('bad id'), 'job'),
        (lambda s: s.change_execution_time('missing', 'later'), 'date_time'),
        (lambda s: s.count(until='later'), 'until'),
        (lambda s: s.get_jobs(offset=1), 'offset'),
    ],
)
def test_bad_input_names_the_argument_and_writes_nothing(scheduler, fake_connection, call, argument):
    with pytest.raises(ValueError, match=argument):
        call(scheduler)
    assert fake_connection.dbsize() == 0


def test_constructor_rejects_bad_options(fake_connection):
    with pytest.raises(ValueError, match='interval'):
        Scheduler(connection=fake_connection, interval=0)
    with pytest.raises(ValueError, match='queue_name'):
        Scheduler(connection=fake_connection, queue_name='nope')
    with pytest.raises(ValueError, match='batch_size'):
        Scheduler(connection=fake_connection, batch_size=0)
    with pytest.raises(ValueError, match='timezone'):
        Scheduler(connection=fake_connection, timezone='Nowhere/Land')


def test_without_connection_uses_django_rq(redis_url):
    scheduler = Scheduler(queue_name='high')
    assert scheduler.connection.connection_pool.connection_kwargs['port'] == int(redis_url.split(':')[2].split('/')[0])


def test_cancel_removes_entry_and_hash_but_not_a_queued_job(scheduler, fake_connection):
    job = scheduler.enqueue_at(datetime.now(UTC) + timedelta(hours=1), tasks.add, 1, 2)
    assert job.id in scheduler
    assert scheduler.cancel(job) is True
    assert job.id not in scheduler
    assert not fake_connection.exists(keys.job_key(job.id))  # rq-scheduler leaks this hash (#149)
    assert scheduler.cancel(job.id) is False


def test_change_execution_time_moves_only_scheduled_jobs(scheduler, fake_connection):
    job = scheduler.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), tasks.add)
    scheduler.change_execution_time(job, datetime(2031, 1, 1, tzinfo=UTC))
    assert zset(fake_connection)[job.id] == datetime(2031, 1, 1, tzinfo=UTC).timestamp()
    scheduler.cancel(job)
    with pytest.raises(ValueError, match='not in scheduled jobs'):
        scheduler.change_execution_time(job, datetime(2032, 1, 1, tzinfo=UTC))
    assert job.id not in scheduler  # the atomic version never puts a removed job back


def test_count_and_get_jobs(scheduler):
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(5):
        scheduler.enqueue_at(base + timedelta(hours=i), tasks.add, i, i, job_id=f'j{i}')
    assert scheduler.count() == 5
    assert scheduler.count(until=base + timedelta(hours=2)) == 3
    assert [j.id for j in scheduler.get_jobs(until=base + timedelta(hours=1))] == ['j0', 'j1']
    page = scheduler.get_jobs(offset=1, length=2, with_times=True)
    assert [(j.id, t) for j, t in page] == [('j1', datetime(2030, 1, 1, 1)), ('j2', datetime(2030, 1, 1, 2))]
    assert scheduler.get_jobs_to_queue() == []


def test_get_jobs_skips_missing_hashes_without_changing_the_schedule(scheduler, fake_connection):
    scheduler.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), tasks.add, job_id='gone')
    fake_connection.delete(keys.job_key('gone'))
    assert scheduler.get_jobs() == []
    assert 'gone' in scheduler


def test_lock_is_a_token_lease(fake_connection):
    first = Scheduler(connection=fake_connection, name='one')
    second = Scheduler(connection=fake_connection, name='two')
    assert first.acquire_lock() is True
    assert second.acquire_lock() is False  # rq-scheduler returns None here
    assert second.remove_lock() is False  # not its lock: left alone
    assert fake_connection.exists(keys.LOCK_KEY)
    assert first.remove_lock() is True
    assert second.acquire_lock() is True


def test_register_birth_refuses_a_live_duplicate_name(fake_connection):
    Scheduler(connection=fake_connection, name='same').register_birth()
    with pytest.raises(ValueError, match='already an active RQ scheduler'):
        Scheduler(connection=fake_connection, name='same').register_birth()
    Scheduler(connection=fake_connection, name='same').register_death()
    Scheduler(connection=fake_connection, name='same').register_birth()
