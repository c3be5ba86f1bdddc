"""Passwords stay secret, buttons need POST with CSRF, and a Redis with a password just works."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.redis_server import RedisServer, has_redis_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary (requirepass)'),
]

UTC = timezone.utc
PASSWORD = 'correct-horse-battery-staple'


@pytest.fixture
def secured(settings):
    server = RedisServer(password=PASSWORD).start()
    settings.RQ_QUEUES = {name: {'URL': server.url} for name in ('default', 'high')}
    yield server
    server.close()


@pytest.mark.django_db(transaction=True)
def test_a_redis_with_a_password_works_and_the_password_is_shown_nowhere(secured, caplog, client):
    caplog.set_level(logging.DEBUG)
    scheduler = Scheduler(queue_name='default', name='secured')
    scheduler.enqueue_at(datetime.now(UTC), tasks.add, 1, 2, job_id='with-password')
    assert [job.id for job in scheduler.enqueue_jobs()] == ['with-password']
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    page = client.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).content.decode()
    assert 'Scheduler status' in page
    assert PASSWORD not in page and PASSWORD not in caplog.text


def test_a_wrong_password_fails_with_a_message_that_does_not_repeat_it(secured):
    wrong = redis.Redis.from_url(secured.url.replace(PASSWORD, 'wrong-secret-value'))
    scheduler = Scheduler(connection=wrong)
    with pytest.raises(redis.RedisError) as excinfo:
        scheduler.enqueue_jobs()
    assert 'wrong-secret-value' not in str(excinfo.value) and PASSWORD not in str(excinfo.value)


@pytest.mark.django_db(transaction=True)
def test_admin_buttons_and_actions_need_post_with_csrf(redis_url, connection):
    from django_rq_scheduled.models import CronJob

    row = CronJob.objects.create(name='guarded', callable='tests.tasks.add', cron_string='* * * * *')
    Scheduler(connection=connection).enqueue_at(datetime(2031, 1, 1, tzinfo=UTC), tasks.add, job_id='api-job')
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    status_url = reverse('admin:django_rq_scheduled_schedulerstatus_changelist')
    assert (
        client.post(status_url, {'server': 'default, high', 'job_id': 'api-job', 'action': 'cancel'}).status_code == 403
    )
    cancel_url = reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk])
    assert client.post(cancel_url).status_code == 403
    changelist = reverse('admin:django_rq_scheduled_cronjob_changelist')
    assert client.post(changelist, {'action': 'disable_selected', '_selected_action': [row.pk]}).status_code == 403
    client.get(cancel_url)  # a GET never changes anything
    row.refresh_from_db()
    assert row.enabled and 'api-job' in Scheduler(connection=connection)
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None
