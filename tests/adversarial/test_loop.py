"""The loop reading a hostile Redis: foreign members and hashes, keys deleted under it, Redis out of memory or
read-only. It never falls over, never loses a due job to an outage, and never queues a ghost. Grow this module."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.mover import MoveReport
from tests import tasks
from tests.redis_server import has_redis_server

pytestmark = pytest.mark.integration
UTC = timezone.utc
PAST = datetime(2020, 1, 1, tzinfo=UTC)
needs_redis_server = pytest.mark.skipif(not has_redis_server(), reason='needs a real redis-server (maxmemory)')


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


@pytest.fixture
def out_of_memory(connection):
    """Redis refusing every write that needs memory (maxmemory reached, noeviction), until ``free()``."""

    class OutOfMemory:
        def settle(self):
            while int(connection.info('memory').get('lazyfree_pending_objects', 0)):
                threading.Event().wait(0.05)  # memory an earlier test freed lazily would be freed under our feet

        def fill(self):
            connection.config_set('maxmemory-policy', 'noeviction')
            self.settle()
            for _ in range(100):  # memory freed lazily by earlier tests may still be counted: set until it bites
                connection.config_set('maxmemory', max(1, int(connection.info('memory')['used_memory']) - 200_000))
                try:
                    connection.set('drqs-test:oom-probe', 'x' * 1000)
                except redis.exceptions.OutOfMemoryError:
                    return
                connection.delete('drqs-test:oom-probe')
                threading.Event().wait(0.05)
            raise AssertionError('could not make Redis run out of memory')

        def free(self):
            connection.config_set('maxmemory', 0)

    oom = OutOfMemory()
    yield oom
    oom.free()


@needs_redis_server
def test_out_of_memory_dead_letters_nothing_and_every_job_moves_once_memory_is_freed(connection, out_of_memory):
    scheduler = Scheduler(connection=connection, batch_size=7)
    for number in range(50):
        scheduler.enqueue_at(PAST, tasks.add, number, 1, job_id=f'oom-{number}')
    scheduler.schedule(PAST, tasks.add, args=[1, 2], interval=3600, id='oom-every-hour')
    assert scheduler.acquire_lock()
    out_of_memory.fill()
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        scheduler.move_due_jobs()
    assert scheduler.dead_letters() == {}
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 51
    statuses = {connection.hget(keys.job_key(f'oom-{number}'), 'status') for number in range(50)}
    assert statuses == {b'scheduled'} and queued(connection) == []  # the refused call wrote nothing
    out_of_memory.free()
    moved = [job.id for job in scheduler.enqueue_jobs()]
    assert sorted(queued(connection)) == sorted(moved)
    assert len(moved) == 51 and scheduler.dead_letters() == {}


@needs_redis_server
def test_the_loop_waits_out_an_out_of_memory_redis_and_then_moves_everything_once(connection, out_of_memory, caplog):
    out_of_memory.settle()
    scheduler = Scheduler(connection=connection, batch_size=5, interval=0.05)
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    for number in range(20):
        scheduler.enqueue_at(due, tasks.add, number, 1, job_id=f'wait-{number}')
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        _wait_until(lambda: scheduler.is_leader)
        out_of_memory.fill()  # the jobs fall due while Redis refuses writes
        threading.Event().wait(2.5)
        assert queued(connection) == [] and scheduler.dead_letters() == {}
        out_of_memory.free()
        _wait_until(lambda: len(queued(connection)) == 20)
    finally:
        scheduler.request_stop()
        loop.join(10)
    assert sorted(queued(connection)) == sorted(f'wait-{number}' for number in range(20))
    assert scheduler.dead_letters() == {}
    assert 'maxmemory' in caplog.text


def _wait_until(condition, timeout=15.0):
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while not condition():
        assert datetime.now(UTC) < deadline, 'condition not met in time'
        threading.Event().wait(0.02)


@needs_redis_server
@pytest.mark.django_db(transaction=True)
def test_a_save_while_redis_is_out_of_memory_is_committed_and_reconciled_later(connection, out_of_memory, caplog):
    from django_rq_scheduled.models import ScheduledJob
    from django_rq_scheduled.sync import reconcile

    out_of_memory.fill()
    with caplog.at_level(logging.ERROR):
        rows = [
            ScheduledJob.objects.create(name=f'oom-row-{n}', callable='tests.tasks.add', scheduled_time=PAST)
            for n in range(5)
        ]
    assert ScheduledJob.objects.count() == 5  # every save returned; none raised after its commit
    out_of_memory.free()
    reconcile()
    assert {row.template_id for row in rows} <= {m.decode() for m in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}


def _plan_then(scheduler, connection, meddle):
    """Reads and plans the due jobs, lets ``meddle`` change Redis, then applies the planned move."""
    now = datetime.now(UTC).timestamp()
    pairs, fields = scheduler.mover.read_due(now)
    batch = scheduler.mover.plan_batch(pairs, fields, now)
    meddle()
    report = MoveReport()
    scheduler.mover.apply_batch(batch, report, fenced=False)
    return report


@pytest.mark.parametrize('kind', ['one-off', 'interval', 'rq-scheduler-periodic', 'with-ttl'])
def test_a_job_hash_deleted_between_the_read_and_the_move_is_never_queued_as_a_ghost(connection, kind):
    scheduler = Scheduler(connection=connection)
    if kind == 'one-off':
        scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='gone')
    elif kind == 'with-ttl':
        scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='gone', job_ttl=600, timeout=30)
    elif kind == 'interval':
        scheduler.schedule(PAST, tasks.add, args=[1, 2], interval=60, id='gone')
    else:
        job = scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='gone')
        job.meta['interval'] = 60  # rq-scheduler's own periodic format: no marker of ours
        job.save_meta()
    report = _plan_then(scheduler, connection, lambda: connection.delete(keys.job_key('gone')))
    assert report.enqueued == []
    assert queued(connection) == []
    assert not connection.exists(keys.job_key('gone'))
    assert 'deleted' in scheduler.dead_letters()['gone']


def test_a_hash_deleted_before_the_read_is_a_dead_letter_not_a_ghost(connection):
    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='no-hash')
    connection.delete(keys.job_key('no-hash'))
    assert scheduler.enqueue_jobs() == []
    assert not connection.exists(keys.job_key('no-hash')) and queued(connection) == []
    assert 'missing' in scheduler.dead_letters()['no-hash']


FOREIGN_MEMBERS = [b'\xff\xfe', b'caf\xc3', b'with space', b'', b'x' * 5000, b'a:b', 'é'.encode()]


@pytest.mark.parametrize('member', FOREIGN_MEMBERS)
def test_a_foreign_member_never_stops_the_loop_and_the_rest_of_the_schedule_moves(connection, member):
    scheduler = Scheduler(connection=connection)
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {member: PAST.timestamp()})
    scheduler.enqueue_at(PAST + timedelta(seconds=1), tasks.add, 1, 2, job_id='behind')
    assert [job.id for job in scheduler.enqueue_jobs()] == ['behind']
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, member) is None
    assert connection.hexists(keys.DEAD_LETTERS_KEY, member)


def test_a_non_utf8_member_does_not_crash_run(connection):
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {b'\xff': PAST.timestamp()})
    scheduler = Scheduler(connection=connection, name='survivor')
    scheduler.run(burst=True)  # raised UnicodeDecodeError on every start before
    assert connection.hexists(keys.DEAD_LETTERS_KEY, b'\xff')


def _raw_hash(connection, job_id, **fields):
    job = Job.create(tasks.add, args=(1, 2), id=job_id, connection=connection)
    job.origin = 'default'
    job.save()
    connection.hset(job.key, mapping=fields)


@pytest.mark.parametrize(
    'fields',
    [
        {'origin': b'\xff\xfe'},
        {'origin': ''},
        {'ttl': 'soon'},
        {'ttl': '1e400'},
        {'timeout': '\xff'},
        {'enqueue_at_front': '\xff'},
        {'data': b'\x00' * 10},
        {'data': ''},
        {'meta': b'\x80\x05\x95garbage'},
        {'meta': 'not a pickle'},
        {'dependency_ids': 'not json'},
    ],
    ids=lambda fields: repr(fields)[:40],
)
def test_a_corrupt_job_hash_is_dead_lettered_and_the_rest_moves(connection, fields):
    scheduler = Scheduler(connection=connection)
    _raw_hash(connection, 'corrupt', **fields)
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'corrupt': PAST.timestamp()})
    scheduler.enqueue_at(PAST + timedelta(seconds=1), tasks.add, 1, 2, job_id='behind')
    scheduler.run(burst=True)
    assert 'behind' in queued(connection)
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 'corrupt') is None


@pytest.mark.parametrize(
    ('meta', 'score'),
    [
        ({'interval': 'sixty'}, PAST.timestamp()),
        ({'interval': -5}, PAST.timestamp()),
        ({'interval': 1e-9}, PAST.timestamp()),
        ({'interval': float('nan')}, PAST.timestamp()),
        ({'interval': 60}, float('-inf')),  # every slot since the dawn of time
        ({'interval': 1e300}, PAST.timestamp()),
        ({'cron_string': '61 * * * *'}, PAST.timestamp()),
        ({'cron_string': 42}, PAST.timestamp()),
        ({'interval': 60, 'repeat': 'x'}, PAST.timestamp()),
        ({keys.META_KEY: {'kind': 'interval', 'interval': 'x'}, 'interval': 60}, PAST.timestamp()),
        ({keys.META_KEY: {'kind': 'cron', 'timezone': 'Mars/Olympus'}, 'cron_string': '* * * * *'}, 0),
        ({keys.META_KEY: 'not a dict'}, PAST.timestamp()),
        ({'queue_class_name': 'os.system'}, PAST.timestamp()),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_a_template_no_rule_can_plan_is_dead_lettered_never_fatal(connection, meta, score):
    scheduler = Scheduler(connection=connection)
    job = Job.create(tasks.add, args=(1, 2), id='bad-template', connection=connection, meta=meta)
    job.origin = 'default'
    job.save()
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'bad-template': score})
    scheduler.enqueue_at(PAST + timedelta(seconds=1), tasks.add, 1, 2, job_id='behind')
    scheduler.run(burst=True)
    assert 'behind' in queued(connection)


@pytest.mark.parametrize(
    ('key', 'wrong'),
    [
        (keys.DEAD_LETTERS_KEY, 'string'),
        ('rq:queue:default', 'hash'),
        ('rq:queues', 'string'),
        (keys.RUNS_KEY, 'string'),
        (keys.WAKEUP_KEY, 'hash'),
        (keys.NEXT_WAKEUP_KEY, 'list'),
        (keys.INSTANCES_KEY, 'string'),
    ],
)
def test_a_key_of_ours_holding_the_wrong_type_never_kills_the_loop(connection, key, wrong):
    writers = {
        'string': lambda: connection.set(key, 'x'),
        'hash': lambda: connection.hset(key, 'x', 'y'),
        'list': lambda: connection.rpush(key, 'x'),
    }
    writers[wrong]()
    scheduler = Scheduler(connection=connection, interval=0.05)
    scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='job')
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    threading.Event().wait(0.5)
    scheduler.request_stop()
    loop.join(10)
    assert not loop.is_alive()
