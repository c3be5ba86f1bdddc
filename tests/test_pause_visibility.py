"""Where a pause shows: the health check (a warning, not a problem; its overdue backlog is the pause's), the banner
above the change lists, and the ``rqscheduler_paused`` gauge."""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta, timezone

import prometheus_client
import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from django_rq_scheduled import Scheduler, metrics
from django_rq_scheduled.core import keys, pause
from tests.test_health import health, lead
from tests.test_metrics import value

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
AT = datetime(2030, 6, 1, 12, 0, tzinfo=UTC).timestamp()


def overdue(connection, queue, job_id, seconds=600):
    scheduler = Scheduler(connection=connection, name='producer')
    scheduler.enqueue_at(
        datetime.now(UTC) - timedelta(seconds=seconds), 'tests.tasks.add', job_id=job_id, queue_name=queue
    )


def test_everything_paused_is_a_warning_and_its_overdue_backlog_no_problem(connection):
    lead(connection)
    overdue(connection, 'default', 'a')
    overdue(connection, 'high', 'b')
    pause.pause(connection, None, by='alice', reason='deploy', now=AT)
    status, output = health()
    assert status == 0, output
    assert (
        'Warning: default, high: scheduling paused: every queue (by alice, since 2030-06-01 12:00:00 UTC: deploy); '
        '2 overdue job(s) of paused queues wait for the resume'
    ) in output
    assert health('--strict')[0] == 1
    report = json.loads(health('--json')[1])
    [server] = report['servers']
    assert report['verdict'] == 'healthy' and server['overdue'] == 2 and server['overdue_paused_only'] is True
    assert server['paused'] == {
        'everything': {'by': 'alice', 'at': AT, 'reason': 'deploy'},
        'queues': {},
        'problem': None,
    }


def test_a_paused_queue_excuses_only_its_own_overdue_jobs(connection):
    lead(connection)
    overdue(connection, 'high', 'paused-one')
    pause.pause(connection, ['high'], by='alice', reason='', now=AT)
    status, output = health()
    assert status == 0 and 'scheduling paused: queue high (by alice, since 2030-06-01 12:00:00 UTC)' in output
    overdue(connection, 'default', 'stuck-one', seconds=300)
    status, output = health()
    assert status == 1 and 'overdue backlog: 2 due job(s)' in output


def test_nothing_paused_says_nothing_of_a_pause(connection):
    lead(connection)
    report = json.loads(health('--json')[1])
    assert report['warnings'] == [] and report['servers'][0]['paused'] == {
        'everything': None,
        'queues': {},
        'problem': None,
    }


def test_a_pause_key_someone_else_wrote_is_reported_as_pausing_nothing(connection):
    lead(connection)
    connection.set(keys.PAUSED_KEY, 'junk')
    status, output = health()
    assert status == 0 and f'{keys.PAUSED_KEY} cannot be read (WRONGTYPE' in output and 'nothing is paused' in output


def test_the_banner_says_who_paused_what_since_when_and_why(client, connection):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    lead(connection)
    url = reverse('admin:django_rq_scheduled_cronjob_changelist')
    assert 'Scheduling paused' not in client.get(url).content.decode()
    pause.pause(connection, None, by='alice', reason='deploy <script>', now=AT)
    pause.pause(connection, ['high'], by='bob', reason='', now=AT)
    page = client.get(url).content.decode()
    assert 'deploy &lt;script&gt;' in page  # escaped
    assert (
        'Scheduling paused on default, high: every queue (by alice, since 2030-06-01 12:00:00 UTC: deploy <script>); '
        'queue high (by bob, since 2030-06-01 12:00:00 UTC).'
    ) in html.unescape(page)


def test_the_paused_gauge_per_scope(fake_connection):
    measured = metrics.Metrics(['default', 'high'])
    scheduler = Scheduler(queue_name='default', connection=fake_connection)
    observer = measured.observer_for(scheduler)
    observer.tick_done(scheduler)
    text = prometheus_client.generate_latest(measured.registry).decode()
    assert [value(text, 'rqscheduler_paused', server='default', scope=s) for s in ('all', 'default', 'high')] == [0] * 3
    pause.pause(fake_connection, ['high', 'not-in-settings'], by='alice', reason='', now=AT)
    observer.set_paused(pause.read_pause(fake_connection))
    text = prometheus_client.generate_latest(measured.registry).decode()
    assert value(text, 'rqscheduler_paused', server='default', scope='high') == 1
    assert value(text, 'rqscheduler_paused', server='default', scope='other') == 1
    assert value(text, 'rqscheduler_paused', server='default', scope='all') == 0
    assert 'not-in-settings' not in text
