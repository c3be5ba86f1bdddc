"""Fuzzed input: every value is either accepted and round-trips, or refused with ValueError and nothing written."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks

UTC = timezone.utc
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=3)),
)
job_ids = st.one_of(st.none(), st.text(max_size=30), st.from_regex(r'[A-Za-z0-9_-]{1,30}', fullmatch=True))
queues = st.one_of(st.sampled_from(['default', 'high']), st.text(max_size=10), st.none())
datetimes = st.one_of(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    anything,
)


def fresh_scheduler():
    return Scheduler(connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))


def assert_nothing_written(scheduler):
    assert scheduler.connection.dbsize() == 0


@FUZZ
@given(when=datetimes, job_id=job_ids, queue=queues, timeout=anything, ttl=anything, result_ttl=anything)
def test_enqueue_at(when, job_id, queue, timeout, ttl, result_ttl):
    scheduler = fresh_scheduler()
    options = {'job_id': job_id, 'queue_name': queue, 'timeout': timeout, 'job_ttl': ttl, 'job_result_ttl': result_ttl}
    try:
        job = scheduler.enqueue_at(when, tasks.add, 1, 2, **options)
    except ValueError as exc:
        event('refused')
        assert str(exc).split(':')[0] in {'scheduled_time', 'id', 'queue_name', 'timeout', 'ttl', 'result_ttl'}
        assert_nothing_written(scheduler)
        return
    stored = Job.fetch(job.id, connection=scheduler.connection)
    assert stored.args == (1, 2) and stored.origin == (queue or 'default')
    score = scheduler.connection.zscore(keys.SCHEDULED_JOBS_KEY, job.id)
    expected = when if when.tzinfo else when.replace(tzinfo=UTC)
    assert 0 <= expected.timestamp() - score < 0.001 + 1e-6  # truncated to the millisecond, never later


@FUZZ
@given(
    interval=anything,
    repeat=anything,
    misfire_grace=anything,
    overlap=st.one_of(st.sampled_from(['allow', 'skip']), anything),
)
def test_schedule(interval, repeat, misfire_grace, overlap):
    scheduler = fresh_scheduler()
    try:
        job = scheduler.schedule(
            datetime.now(UTC), tasks.add, interval=interval, repeat=repeat, misfire_grace=misfire_grace, overlap=overlap
        )
    except ValueError as exc:
        event('refused')
        assert str(exc).split(':')[0] in {'interval', 'repeat', 'misfire_grace', 'overlap'}
        assert_nothing_written(scheduler)
        return
    meta = Job.fetch(job.id, connection=scheduler.connection).meta
    if interval is None:
        assert 'interval' not in meta
        return
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
    assert math.isfinite(seconds) and seconds > 0
    assert meta[keys.META_KEY]['interval'] == pytest.approx(round(seconds, 3))
    assert meta.get('repeat') == repeat


cron_fields = st.sampled_from(['*', '*/5', '0', '1-5', '7', '59', '61', '*/0', 'a', 'L', '?', '1,2', '-1', 'H'])


@FUZZ
@given(
    fields=st.lists(cron_fields, min_size=0, max_size=8),
    zone=st.one_of(st.sampled_from(['UTC', 'Europe/Paris', 'America/New_York', 'Mars/Base', '', '../etc']), anything),
)
def test_cron(fields, zone):
    scheduler = fresh_scheduler()
    cron_string = ' '.join(fields)
    try:
        job = scheduler.cron(cron_string, tasks.add, timezone=zone if isinstance(zone, str) else None)
    except ValueError as exc:
        event('refused')
        assert str(exc).split(':')[0] in {'cron_string', 'timezone'}
        assert_nothing_written(scheduler)
        return
    score = scheduler.connection.zscore(keys.SCHEDULED_JOBS_KEY, job.id)
    assert score > datetime.now(UTC).timestamp() - 1
    assert Job.fetch(job.id, connection=scheduler.connection).meta['cron_string'] == cron_string


@pytest.mark.django_db
@FUZZ
@given(
    callable_path=st.one_of(
        st.sampled_from(['tests.tasks.add', 'tests.tasks.nope', 'os.getcwd']), st.text(max_size=20)
    ),
    args=st.one_of(st.lists(st.integers(), max_size=3), anything, st.dictionaries(st.text(max_size=3), st.integers())),
    kwargs=st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), anything),
    cron_string=st.lists(cron_fields, min_size=4, max_size=6).map(' '.join),
    repeat=st.one_of(st.none(), st.integers(min_value=-2, max_value=5)),
)
def test_cron_job_model(callable_path, args, kwargs, cron_string, repeat):
    from django.core.exceptions import ValidationError

    from django_rq_scheduled.models import CronJob

    row = CronJob(name='fuzz', callable=callable_path, args=args, kwargs=kwargs, cron_string=cron_string, repeat=repeat)
    try:
        row.full_clean()
    except ValidationError as exc:
        event('refused')
        assert set(exc.message_dict) <= {'callable', 'args', 'kwargs', 'cron_string', 'repeat', 'timezone'}
        return
    assert isinstance(row.args, list) and isinstance(row.kwargs, dict)
    assert all(isinstance(key, str) and key.isidentifier() for key in row.kwargs)
    assert repeat is None or repeat >= 1
    assert row.next_runs(1)


CORRUPTIONS = st.sampled_from(
    [
        'truncate data', 'garbage meta', 'delete hash', 'hash is a string', 'queue is a string', 'huge meta',
        'meta is a list', 'foreign member', 'member with odd characters', 'no origin', 'interval of zero',
        'cron string garbage',
    ]
)  # fmt: skip


def corrupt(connection, job_id, how):
    key = keys.job_key(job_id)
    if how == 'truncate data':
        connection.hset(key, 'data', connection.hget(key, 'data')[:7])
    elif how == 'garbage meta':
        connection.hset(key, 'meta', b'\x80\x05garbage')
    elif how == 'delete hash':
        connection.delete(key)
    elif how == 'hash is a string':
        connection.delete(key)
        connection.set(key, 'not a hash')
    elif how == 'queue is a string':
        connection.set('rq:queue:high', 'not a list')
        connection.hset(key, 'origin', 'high')
    elif how == 'huge meta':
        import pickle

        connection.hset(key, 'meta', pickle.dumps({'blob': 'x' * 2_000_000}))
    elif how == 'meta is a list':
        import pickle

        connection.hset(key, 'meta', pickle.dumps([1, 2]))
    elif how == 'foreign member':
        connection.zadd(keys.SCHEDULED_JOBS_KEY, {f'foreign-{job_id}': 1})
    elif how == 'member with odd characters':
        connection.zadd(keys.SCHEDULED_JOBS_KEY, {f'odd: é {job_id}': 1})
    elif how == 'no origin':
        connection.hdel(key, 'origin')
    elif how == 'interval of zero':
        import pickle

        connection.hset(
            key, 'meta', pickle.dumps({'interval': 0.0001, keys.META_KEY: {'kind': 'interval', 'interval': 0}})
        )
    elif how == 'cron string garbage':
        import pickle

        connection.hset(key, 'meta', pickle.dumps({'cron_string': 'nonsense', keys.META_KEY: {'kind': 'cron'}}))


@FUZZ
@given(damage=st.lists(st.tuples(st.integers(min_value=0, max_value=9), CORRUPTIONS), max_size=6))
def test_corrupt_redis_data_never_stops_the_loop(damage):
    scheduler = fresh_scheduler()
    connection = scheduler.connection
    past = datetime.now(UTC) - timedelta(seconds=5)
    ids = [f'job-{i}' for i in range(10)]
    for job_id in ids:
        scheduler.enqueue_at(past, tasks.add, 1, 2, job_id=job_id)
    broken = set()
    for index, how in damage:
        try:
            corrupt(connection, ids[index], how)
        except (redis.ResponseError, TypeError):
            continue  # this damage needs a hash an earlier one already destroyed
        broken.add(ids[index])
    assert scheduler.acquire_lock()
    report = scheduler.move_due_jobs()
    untouched = set(ids) - broken
    assert untouched <= set(report.enqueued)
    assert connection.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', datetime.now(UTC).timestamp()) == 0
    assert set(report.enqueued).isdisjoint(report.dead)
