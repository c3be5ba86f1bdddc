"""Counts, not clocks: Redis round trips per batch, and the loop waking for an earlier job."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import redis

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from django_rq_scheduled.servers import servers
from tests import tasks
from tests.processes import kill, scheduler_process, wait_for

pytestmark = pytest.mark.integration

UTC = timezone.utc


class CountingConnection(redis.Connection):
    round_trips = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.round_trips += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url):
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    pool.disconnect()


def round_trips(action):
    before = CountingConnection.round_trips
    action()
    return CountingConnection.round_trips - before


@pytest.mark.parametrize('kind', ['one-off', 'interval', 'cron'])
def test_a_batch_costs_two_or_three_round_trips_whatever_its_size(counted, kind):
    scheduler = Scheduler(connection=counted, batch_size=500)
    past = datetime.now(UTC) - timedelta(minutes=5)
    scheduler.enqueue_at(past, tasks.add, job_id='warm-up')
    scheduler.schedule(past, tasks.add, interval=3600, id='warm-up-template')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()  # loads the Lua scripts once (the fast path's and the planned path's)
    counted.flushdb()
    for i in range(300):
        if kind == 'one-off':
            scheduler.enqueue_at(past, tasks.add, 1, 2, job_id=f'j{i}')
        elif kind == 'interval':
            scheduler.schedule(past, tasks.add, interval=3600, id=f'j{i}')
        else:
            scheduler.cron('0 0 1 1 *', tasks.add, id=f'j{i}')
            counted.zadd(keys.SCHEDULED_JOBS_KEY, {f'j{i}': past.timestamp()})
    assert scheduler.acquire_lock()
    trips = round_trips(scheduler.move_due_jobs)
    assert counted.llen('rq:queue:default') == 300
    assert counted.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', '+inf') == (0 if kind == 'one-off' else 300)
    # One-offs of our API: one Lua call moves them whole (``fast_moves``), one Lua read finds nothing left.
    # Others: that call leaves them, then one Lua read of the due members and the fields their moves are planned
    # from, (for templates of ours, one pipelined read of the whole hashes copied into the runs), one Lua move.
    # rq-scheduler: 4 or 5 per job.
    assert trips == (2 if kind == 'one-off' else 3)


def test_batches_of_a_large_backlog(counted):
    scheduler = Scheduler(connection=counted, batch_size=100)
    past = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(1000):
        scheduler.enqueue_at(past, tasks.add, 1, 2, job_id=f'j{i}')
    assert scheduler.acquire_lock()
    trips = round_trips(scheduler.move_due_jobs)
    assert counted.llen('rq:queue:default') == 1000
    # One Lua call per batch moves it whole (``fast_moves``), one more finds none left, one planned read finding
    # nothing, the script's load if this Redis has not seen it yet (NOSCRIPT, SCRIPT LOAD), and the lease renewals
    # between batches when due.
    extra = trips - (10 + 1 + 1)
    assert 0 <= extra <= 2 + 9


def test_a_sleeping_loop_wakes_for_an_earlier_job(connection, redis_url):
    # A long interval and lease: without the wake-up, the loop would look again only seconds later.
    process = scheduler_process(redis_url, '--interval', '30', '--lease-ttl', '60', name='sleeper')
    try:
        wait_for(lambda: connection.get(keys.NEXT_WAKEUP_KEY), timeout=20)
        time.sleep(0.3)
        scheduler = Scheduler(connection=connection)
        due = datetime.now(UTC) + timedelta(milliseconds=200)
        scheduler.enqueue_at(due, tasks.add, 1, 2, job_id='early')
        wait_for(lambda: connection.llen('rq:queue:default'), timeout=8)
        enqueued = connection.hget(keys.job_key('early'), 'enqueued_at').decode()
        from rq.utils import utcparse

        lateness = utcparse(enqueued).replace(tzinfo=UTC) - due
        print(f'\n[figures] lateness of a job scheduled while the loop slept: {lateness.total_seconds() * 1000:.1f} ms')
        assert lateness < timedelta(seconds=5)  # far below the 20 s sleep it would otherwise take
    finally:
        kill(process)


@pytest.fixture
def counted_servers(redis_url):
    for scheduler in servers().schedulers.values():
        scheduler.connection.connection_pool.connection_class = CountingConnection
        scheduler.connection.connection_pool.reset()
    return servers()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize('kind', ['one-off', 'interval', 'cron'])
def test_creating_a_row_costs_one_round_trip(counted_servers, connection, kind):
    soon = datetime.now(UTC) + timedelta(hours=1)
    make = {
        'one-off': lambda n: ScheduledJob.objects.create(name=n, callable='tests.tasks.add', scheduled_time=soon),
        'interval': lambda n: RepeatableJob.objects.create(
            name=n, callable='tests.tasks.add', scheduled_time=soon, interval=5
        ),
        'cron': lambda n: CronJob.objects.create(name=n, callable='tests.tasks.add', cron_string='0 * * * *'),
    }[kind]
    make('warm-up')  # connects, and loads the sync script once per connection pool
    assert round_trips(lambda: make('counted')) == 1
    assert len(connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)) == 2


@pytest.mark.django_db(transaction=True)
def test_a_new_row_whose_id_redis_still_holds_is_read_and_written_right(connection):
    row = CronJob.objects.create(name='first', callable='tests.tasks.add', cron_string='0 * * * *')
    leftover = (
        connection.hget(keys.VERSIONS_KEY, row.template_id),
        connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id),
    )
    CronJob.objects.filter(pk=row.pk)._raw_delete(CronJob.objects.db)  # gone behind the app's back: Redis keeps it
    again = CronJob.objects.create(pk=row.pk, name='second', callable='tests.tasks.record', cron_string='30 * * * *')
    assert leftover[0] is not None and leftover[1] is not None
    assert connection.hget(keys.VERSIONS_KEY, again.template_id).decode() == again.version()
    assert fetch_template(connection, again.template_id).func_name == 'tests.tasks.record'
