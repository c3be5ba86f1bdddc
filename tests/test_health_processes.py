"""The health check against real ``manage.py rqscheduler`` processes: a leader, none, a frozen one, Redis down."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.urls import reverse

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.health import check
from tests import tasks
from tests.processes import ROOT, kill, process_env, scheduler_process, stop, wait_for
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def health_process(url, *options):
    """``manage.py schedules health`` in a process of its own: its exit status and output."""
    command = [sys.executable, '-m', 'django', 'schedules', 'health', '--settings', 'tests.settings', *options]
    done = subprocess.run(command, cwd=ROOT, env=process_env(url), capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_user('ops', password='pw', is_staff=True))
    return client


def view_status(client):
    return client.get(reverse('django_rq_scheduled:health')).status_code


def test_a_running_rqscheduler_is_healthy_and_none_is_no_leader(connection, redis_url, staff):
    process = scheduler_process(redis_url, '--interval', '0.2', name='healthy-one')
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        status, output = health_process(redis_url)
        assert status == 0, output
        assert view_status(staff) == 200
    finally:
        assert stop(process) == 0
    status, output = health_process(redis_url)
    assert status == 1 and 'default, high: no leader' in output
    assert view_status(staff) == 503


def test_a_frozen_leader_has_a_stale_heartbeat(connection, redis_url, staff):
    # Its lease outlives the check's staleness limit (LEASE_TTL in the checking process): a frozen leader keeps
    # the lease, and with it every standby away, for up to a lease's lifetime.
    process = scheduler_process(redis_url, '--interval', '0.2', '--lease-ttl', '60', name='frozen')
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        process.send_signal(signal.SIGSTOP)
        with override_settings(RQ_SCHEDULED={'LEASE_TTL': 1}):
            problems = wait_for(lambda: check().problems, timeout=10)
            assert problems[0].startswith("default, high: stale heartbeat: the leader 'frozen' last beat")
            assert view_status(staff) == 503
        assert connection.get(keys.LOCK_KEY)  # it still holds the lease
    finally:
        process.send_signal(signal.SIGCONT)
        kill(process)


def test_an_overdue_backlog_without_a_leader_names_its_size_and_age(connection, redis_url, staff):
    scheduler = Scheduler(connection=connection)
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    for n in range(3):
        scheduler.enqueue_at(past, tasks.add, n, n, job_id=f'late-{n}')
    status, output = health_process(redis_url, '--max-lateness', '120')
    assert status == 1
    assert 'no leader' in output
    assert 'overdue backlog: 3 due job(s) waiting longer than 120 s (3 due in all); the oldest has waited 30' in output
    assert view_status(staff) == 503


def test_redis_down_is_unhealthy(settings, staff):
    server = RedisServer().start()
    try:
        settings.RQ_QUEUES = {'default': {'URL': server.url}}
        server.stop()
        status, output = health_process(server.url)
        assert status == 1 and 'Redis unreachable (ConnectionError)' in output
        assert view_status(staff) == 503
    finally:
        server.close()


def test_anonymous_requests_are_refused_whatever_the_health(client, connection, redis_url):
    process = scheduler_process(redis_url, '--interval', '0.2', name='anon')
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        assert view_status(client) == 403
    finally:
        stop(process)
    assert view_status(client) == 403
