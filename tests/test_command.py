"""``manage.py rqscheduler`` options, signals and the system checks."""

from __future__ import annotations

import signal
from datetime import datetime, timezone

import pytest
import redis
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.processes import scheduler_process, stop, wait_for

UTC = timezone.utc


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        (['--interval', '0'], 'interval'),
        (['--interval', 'soon'], 'interval'),
        (['--lease-ttl', '-1'], 'lease-ttl'),
        (['--batch-size', '0'], 'batch-size'),
        (['--queue', 'nope'], 'nope'),
    ],
)
def test_bad_options_are_command_errors(redis_url, options, message):
    with pytest.raises(CommandError, match=message):
        call_command('rqscheduler', *options)


@pytest.mark.django_db(transaction=True)
def test_burst_moves_due_jobs_and_releases_the_lease(connection, tmp_path):
    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_at(datetime.now(UTC), tasks.add, 1, 2, job_id='burst')
    pid_file = tmp_path / 'scheduler.pid'
    call_command('rqscheduler', '--burst', '--pid', str(pid_file), '--name', 'burst-test')
    assert connection.lrange('rq:queue:default', 0, -1) == [b'burst']
    assert not connection.exists(keys.LOCK_KEY)
    assert connection.hexists(keys.instance_key('burst-test'), 'death')
    assert not pid_file.exists()


def test_one_process_serves_each_distinct_redis_once(redis_url, settings):
    from django_rq_scheduled.management.commands.rqscheduler import Command

    settings.RQ_QUEUES = {
        'default': {'URL': redis_url},
        'high': {'URL': redis_url},
        'other': {'URL': redis_url.rsplit('/', 1)[0] + '/1'},
    }
    command = Command()
    built = command._build_schedulers(
        {'queue': None, 'name': 'n', 'interval': None, 'lease_ttl': None, 'batch_size': None}
    )
    assert [s.queue_name for s in built] == ['default', 'other']
    assert [s.name for s in built] == ['n-0', 'n-1']
    only = command._build_schedulers(
        {'queue': ['high'], 'name': 'n', 'interval': None, 'lease_ttl': None, 'batch_size': None}
    )
    assert [s.queue_name for s in only] == ['high']


@pytest.mark.integration
def test_sigterm_finishes_releases_and_exits_zero(redis_url, connection):
    process = scheduler_process(redis_url, '--interval', '0.2', name='term')
    wait_for(lambda: connection.get(keys.LOCK_KEY))
    assert stop(process, signal.SIGTERM) == 0
    assert not connection.exists(keys.LOCK_KEY)
    assert connection.hexists(keys.instance_key('term'), 'death')


def our_checks():
    return [m.id for m in run_checks() if m.id.startswith('django_rq_scheduled.')]


def test_app_order_warning():
    base = ['django.contrib.contenttypes', 'django.contrib.auth']
    with override_settings(INSTALLED_APPS=[*base, 'django_rq', 'django_rq_scheduled']):
        assert our_checks() == ['django_rq_scheduled.W001']
    with override_settings(INSTALLED_APPS=[*base, 'django_rq_scheduled', 'django_rq']):
        assert our_checks() == []


@pytest.mark.parametrize(
    ('value', 'fragment'),
    [
        ({'INTERVAL': 0}, 'INTERVAL'),
        ({'LEASE_TTL': 'long'}, 'LEASE_TTL'),
        ({'BATCH_SIZE': 0}, 'BATCH_SIZE'),
        ({'TIMEZONE': 'Nowhere/Land'}, 'TIMEZONE'),
        ({'INTERVALL': 1}, 'INTERVALL'),
    ],
)
def test_bad_settings_are_reported_by_checks(value, fragment):
    with override_settings(RQ_SCHEDULED=value):
        messages = [m for m in run_checks() if m.id.startswith('django_rq_scheduled.')]
    assert [m.id for m in messages] == ['django_rq_scheduled.E002']
    assert fragment in messages[0].msg


def test_settings_not_a_dict():
    with override_settings(RQ_SCHEDULED=[1]):
        assert our_checks() == ['django_rq_scheduled.E001']


def test_command_is_ours_not_django_rqs():
    from django.core.management import get_commands

    assert get_commands()['rqscheduler'] == 'django_rq_scheduled'


def test_redis_connection_identity_distinguishes_databases(redis_url):
    from django_rq_scheduled.core.queues import connection_identity

    a = redis.Redis.from_url(redis_url)
    b = redis.Redis.from_url(redis_url.rsplit('/', 1)[0] + '/2')
    assert connection_identity(a) != connection_identity(b)
    assert connection_identity(a) == connection_identity(redis.Redis.from_url(redis_url))


@pytest.mark.django_db(transaction=True)
def test_run_puts_back_the_signal_handlers_it_replaced(connection):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    Scheduler(connection=connection).run(burst=True)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize(
    ('configured', 'lease_ttl', 'expected'),
    [(None, 2.0, 5.0), (None, 30.0, 30.0), (1.5, 30.0, 1.5)],
)
def test_the_loop_never_waits_on_redis_without_a_timeout(configured, lease_ttl, expected):
    from django_rq_scheduled.management.commands.rqscheduler import bound_socket_timeouts

    connection = redis.Redis(socket_timeout=configured, socket_connect_timeout=configured)
    bound_socket_timeouts(connection, lease_ttl)
    kwargs = connection.connection_pool.connection_kwargs
    assert kwargs['socket_timeout'] == kwargs['socket_connect_timeout'] == expected  # a project's own value wins
