"""The status page against hostile Redis data and hostile requests: it always renders, and buttons act exactly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rq import Queue, SimpleWorker
from rq.job import Job

from django_rq_scheduled import Scheduler, keys
from tests import tasks

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc


@pytest.fixture
def superuser(client, redis_url):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def status_url() -> str:
    return reverse('admin:django_rq_scheduled_schedulerstatus_changelist')


def server_name(client) -> str:
    return client.get(status_url()).context['servers'][0]['name']


def snapshot(connection) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing in Redis changed."""
    return {key: connection.dump(key) for key in connection.keys('*')}


@pytest.fixture
def finished_job(connection) -> str:
    """The id of a job that was scheduled, moved onto its queue, and run by a worker."""
    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), tasks.add, 1, 2, job_id='finished-job')
    assert [job.id for job in scheduler.enqueue_jobs()] == ['finished-job']
    SimpleWorker([Queue('default', connection=connection)], connection=connection).work(burst=True)
    assert Job.fetch('finished-job', connection=connection).get_status() == 'finished'
    return 'finished-job'


# -- retry re-schedules dead letters only -----------------------------------------------------------------------


def test_retrying_a_finished_job_through_the_api_changes_nothing(connection, finished_job):
    before = snapshot(connection)
    assert Scheduler(connection=connection).retry_dead_letter(finished_job) is False
    assert snapshot(connection) == before


def test_retrying_a_finished_job_through_the_page_changes_nothing(superuser, connection, finished_job):
    server = server_name(superuser)
    before = snapshot(connection)
    response = superuser.post(status_url(), {'server': server, 'job_id': finished_job, 'action': 'retry'}, follow=True)
    assert response.status_code == 200
    assert f'“{finished_job}” was not a dead letter.' in response.content.decode()
    assert snapshot(connection) == before


def test_retrying_a_dead_letter_schedules_it_now_and_wakes_the_loop(connection):
    scheduler = Scheduler(connection=connection)
    connection.hset(keys.DEAD_LETTERS_KEY, 'poisoned', '{"reason": "corrupt", "score": 1, "at": 2}')
    connection.set(keys.NEXT_WAKEUP_KEY, datetime(2031, 1, 1, tzinfo=UTC).timestamp())
    assert scheduler.retry_dead_letter('poisoned') is True
    assert 'poisoned' in scheduler and scheduler.dead_letters() == {}
    assert connection.llen(keys.WAKEUP_KEY) == 1
