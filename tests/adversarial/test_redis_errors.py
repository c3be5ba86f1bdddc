"""Every class of Redis error at every entry point: the loop waits it out and loses nothing, saves are committed and
reconciled later, the admin answers, the API says what went wrong and writes nothing half. Out-of-memory cases are
in test_loop.py; keys of the wrong type in test_loop.py and test_status_page.py. Grow this module."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from django.contrib.auth.models import User
from django.urls import reverse

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import CronJob, ScheduledJob
from django_rq_scheduled.sync import reconcile
from tests import tasks
from tests.redis_server import RedisServer, has_redis_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not has_redis_server(), reason='needs real redis-server processes'),
]
UTC = timezone.utc
PAST = datetime(2020, 1, 1, tzinfo=UTC)


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def wait_until(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'condition not met in time'
        time.sleep(0.02)


@pytest.fixture
def private_server(settings):
    server = RedisServer().start()
    settings.RQ_QUEUES = {name: {'URL': server.url} for name in ('default', 'high')}
    yield server
    server.close()


@pytest.fixture
def failover_pair():
    """A primary with a replica: a scheduler pointed at the replica meets READONLY until it is promoted."""
    primary = RedisServer().start()
    replica = RedisServer(extra_args=('--replicaof', '127.0.0.1', str(primary.port))).start()
    yield primary, replica
    replica.close()
    primary.close()


def test_a_loop_on_a_replica_waits_out_readonly_and_moves_everything_once_promoted(failover_pair, caplog):
    primary, replica = failover_pair
    writer = redis.Redis.from_url(primary.url)
    producer = Scheduler(connection=writer)
    for number in range(30):
        producer.enqueue_at(PAST, tasks.add, number, 1, job_id=f'ro-{number}')
    producer.schedule(PAST, tasks.add, args=[1, 2], interval=3600, id='ro-every-hour')
    reader = redis.Redis.from_url(replica.url)
    wait_until(lambda: reader.zcard(keys.SCHEDULED_JOBS_KEY) == 31)  # replicated
    scheduler = Scheduler(connection=reader, name='on-replica', interval=0.05, batch_size=7)
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        time.sleep(1.5)
        assert queued(reader) == [] and scheduler.dead_letters() == {}
        assert reader.zcard(keys.SCHEDULED_JOBS_KEY) == 31
        reader.replicaof('NO', 'ONE')  # the failover: the replica becomes the primary
        wait_until(lambda: len(queued(reader)) == 31)
    finally:
        scheduler.request_stop()
        loop.join(15)
    ids = queued(reader)
    assert len(ids) == len(set(ids)) == 31 and scheduler.dead_letters() == {}
    assert 'READONLY' in caplog.text or 'read only' in caplog.text or 'read-only' in caplog.text


def test_scripts_flushed_again_and_again_while_moving_a_backlog_lose_and_repeat_nothing(connection):
    producer = Scheduler(connection=connection)
    for number in range(2000):
        producer.enqueue_at(PAST, tasks.add, number, 1, job_id=f'ns-{number}')
    scheduler = Scheduler(connection=connection, name='flushed', interval=0.05, batch_size=50)
    stop = threading.Event()

    def flush_scripts():
        while not stop.is_set():
            connection.script_flush()
            time.sleep(0.005)

    flusher = threading.Thread(target=flush_scripts)
    flusher.start()
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        wait_until(lambda: connection.llen('rq:queue:default') == 2000, timeout=60)
    finally:
        stop.set()
        flusher.join()
        scheduler.request_stop()
        loop.join(15)
    ids = queued(connection)
    assert len(ids) == len(set(ids)) == 2000 and scheduler.dead_letters() == {}


@pytest.mark.django_db(transaction=True)
def test_a_sync_after_redis_forgot_its_scripts_loads_them_again(connection):
    CronJob.objects.create(name='first', callable='tests.tasks.add', cron_string='0 * * * *')
    connection.script_flush()
    row = CronJob.objects.create(name='second', callable='tests.tasks.add', cron_string='0 * * * *')
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None


@pytest.mark.django_db(transaction=True)
def test_saves_while_redis_is_down_are_committed_and_reconciled_when_it_is_back(private_server, caplog):
    private_server.stop()
    with caplog.at_level(logging.ERROR):
        created = ScheduledJob.objects.create(name='while-down', callable='tests.tasks.add', scheduled_time=PAST)
        edited = CronJob.objects.create(name='edited-while-down', callable='tests.tasks.add', cron_string='0 * * * *')
        edited.description = 'changed'
        edited.save()
        CronJob.objects.filter(pk=edited.pk).disable()
        CronJob.objects.filter(pk=edited.pk).enable()
    assert ScheduledJob.objects.filter(pk=created.pk).exists()
    assert 'could not bring them into Redis' in caplog.text and 'next reconciliation' in caplog.text
    private_server.start()
    reconcile()
    connection = redis.Redis.from_url(private_server.url)
    members = {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}
    assert {created.template_id, edited.template_id} <= members


@pytest.mark.django_db(transaction=True)
def test_saves_on_a_read_only_replica_are_committed_and_logged(settings, failover_pair, caplog):
    _, replica = failover_pair
    settings.RQ_QUEUES = {name: {'URL': replica.url} for name in ('default', 'high')}
    with caplog.at_level(logging.ERROR):
        row = ScheduledJob.objects.create(name='on-replica', callable='tests.tasks.add', scheduled_time=PAST)
    assert ScheduledJob.objects.filter(pk=row.pk).exists()
    assert 'could not bring them into Redis' in caplog.text and 'next reconciliation' in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_admin_answers_while_redis_is_down(private_server, client):
    row = CronJob.objects.create(name='listed', callable='tests.tasks.add', cron_string='0 * * * *')
    private_server.stop()
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    changelist = reverse('admin:django_rq_scheduled_cronjob_changelist')
    for query in ('', '?status=scheduled', '?status=missing', '?status=paused'):
        page = client.get(changelist + query)
        assert page.status_code == 200, query
    assert 'Redis did not answer' in client.get(changelist).content.decode()
    assert client.get(reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk])).status_code == 200
    response = client.post(changelist, {'action': 'run_selected_now', '_selected_action': [row.pk]}, follow=True)
    assert response.status_code == 200 and 'was not run' in response.content.decode()
    response = client.post(changelist, {'action': 'disable_selected', '_selected_action': [row.pk]}, follow=True)
    assert response.status_code == 200
    assert not CronJob.objects.get().enabled  # the database changed; Redis catches up by reconciliation


def test_the_api_says_redis_is_down_and_writes_nothing_half(private_server):
    connection = redis.Redis.from_url(private_server.url, socket_timeout=1)
    scheduler = Scheduler(connection=connection)
    private_server.stop()
    with pytest.raises(redis.ConnectionError):
        scheduler.enqueue_at(PAST, tasks.add, 1, 2, job_id='lost')
    private_server.start()
    assert not connection.exists(keys.job_key('lost'))
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 'lost') is None


def test_the_loop_survives_redis_stopping_mid_backlog_and_moves_everything_once(private_server):
    connection = redis.Redis.from_url(private_server.url)
    producer = Scheduler(connection=connection)
    for number in range(3000):
        producer.enqueue_at(PAST, tasks.add, number, 1, job_id=f'down-{number}')
    connection.config_set('appendonly', 'yes')
    connection.config_set('appendfsync', 'always')
    wait_until(lambda: connection.info('persistence')['aof_rewrite_in_progress'] == 0)
    scheduler = Scheduler(connection=connection, name='interrupted', interval=0.05, batch_size=20)
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        wait_until(lambda: connection.llen('rq:queue:default') > 200)
        private_server.kill()  # kill -9 mid-backlog; the AOF has every move that was acknowledged
        time.sleep(0.5)
        private_server.extra_args = ('--appendonly', 'yes')
        private_server.start()
        wait_until(lambda: connection.llen('rq:queue:default') == 3000, timeout=60)
    finally:
        scheduler.request_stop()
        loop.join(15)
    ids = queued(connection)
    assert len(ids) == len(set(ids)) == 3000
    assert not loop.is_alive()


def test_an_unreachable_redis_at_start_is_waited_for(settings):
    server = RedisServer()  # not started yet
    connection = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    scheduler = Scheduler(connection=connection, name='early', interval=0.05)
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        time.sleep(1.0)
        assert loop.is_alive()
        server.start()
        Scheduler(connection=connection).enqueue_at(
            datetime.now(UTC) + timedelta(milliseconds=100), tasks.add, job_id='x'
        )
        wait_until(lambda: queued(connection) == ['x'], timeout=30)
    finally:
        scheduler.request_stop()
        loop.join(15)
        server.close()
