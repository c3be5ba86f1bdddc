"""The pause on the admin's scheduler status page (Django's test client): the buttons, permissions, CSRF, the
LogEntry of each pause and resume, who/when/why shown; and the banner above the change lists."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_rq_scheduled.core import keys, pause
from tests.test_admin import staff, table_cells

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures('redis_url')]

URL = 'admin:django_rq_scheduled_schedulerstatus_changelist'
SERVER = 'default, high'


@pytest.fixture
def admin_client_(client):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def post(client, **data):
    return client.post(reverse(URL), {'server': SERVER, **data}, follow=True)


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context['messages']]


def test_pause_and_resume_buttons_record_who_when_why_and_a_log_entry_each(admin_client_, connection):
    page = admin_client_.get(reverse(URL)).content.decode()
    assert table_cells(page, 'drqs-paused') == [['Nothing is paused: every queue is scheduled.']]
    assert 'value="pause"' in page and 'value="resume"' in page

    response = post(admin_client_, action='pause', queue='', reason='deploy <b>v2</b>')
    assert shown_messages(response) == ['Paused every queue on Redis of queues default, high: deploy <b>v2</b>.']
    record = json.loads(connection.hget(keys.PAUSED_KEY, keys.PAUSE_ALL))
    assert record['by'] == 'admin' and record['reason'] == 'deploy <b>v2</b>'
    [cells] = table_cells(response.content.decode(), 'drqs-paused')
    assert cells[0] == 'every queue' and cells[1] == 'admin' and cells[3] == 'deploy &lt;b&gt;v2&lt;/b&gt;'

    post(admin_client_, action='pause', queue='high', reason='')
    response = post(admin_client_, action='resume', queue='high')
    assert shown_messages(response) == [
        'Resumed queue high on Redis of queues default, high.',
        'Every queue is still paused on Redis of queues default, high.',
    ]
    response = post(admin_client_, action='resume', queue='')
    assert shown_messages(response) == ['Resumed every queue on Redis of queues default, high.']
    assert not connection.exists(keys.PAUSED_KEY)
    assert [entry.change_message for entry in LogEntry.objects.order_by('pk')] == [
        'Paused every queue on Redis of queues default, high: deploy <b>v2</b>',
        'Paused queue high on Redis of queues default, high',
        'Resumed queue high on Redis of queues default, high',
        'Resumed every queue on Redis of queues default, high',
    ]
    assert {(entry.user.username, entry.object_id, entry.get_admin_url()) for entry in LogEntry.objects.all()} == {
        ('admin', None, None)
    }
    assert {entry.content_type.model for entry in LogEntry.objects.all()} == {'schedulerstatus'}


def test_a_second_pause_keeps_the_first_record_and_logs_only_a_new_reason(admin_client_, connection):
    pause.pause(connection, None, by='alice', reason='first', now=1000.0)
    response = post(admin_client_, action='pause', queue='', reason='')
    assert shown_messages(response) == ['Every queue was paused already.'] and not LogEntry.objects.exists()
    response = post(admin_client_, action='pause', queue='', reason='second')
    assert shown_messages(response) == [
        'Paused every queue on Redis of queues default, high already; reason now: second.'
    ]
    assert pause.read_pause(connection).everything == pause.PauseRecord('alice', 1000.0, 'second')
    assert LogEntry.objects.count() == 1


def test_an_unknown_server_or_queue_or_a_reason_too_long_changes_nothing(admin_client_, connection):
    assert shown_messages(post(admin_client_, action='pause', server='nope')) == ['server: unknown Redis server.']
    [message] = shown_messages(post(admin_client_, action='pause', queue='nope'))
    assert message.startswith("queue: unknown queue(s) 'nope'")
    [message] = shown_messages(post(admin_client_, action='pause', reason='x' * 501))
    assert message.startswith('reason: expected at most 500 characters')
    assert not connection.exists(keys.PAUSED_KEY) and not LogEntry.objects.exists()


def test_view_only_staff_sees_the_pause_but_no_buttons_and_cannot_post(client, connection):
    pause.pause(connection, ['high'], by='alice', reason='flaky', now=1000.0)
    viewer = staff(client, 'view_schedulerstatus')
    page = viewer.get(reverse(URL)).content.decode()
    assert table_cells(page, 'drqs-paused')[0][::3] == ['high', 'flaky'] and 'value="pause"' not in page
    assert viewer.post(reverse(URL), {'server': SERVER, 'action': 'resume', 'queue': ''}).status_code == 403
    assert connection.hexists(keys.PAUSED_KEY, 'high')


def test_staff_with_the_change_permission_may_pause(client, connection):
    user = staff(client, 'view_schedulerstatus', 'change_schedulerstatus')
    assert post(user, action='pause', queue='default').status_code == 200
    assert connection.hexists(keys.PAUSED_KEY, 'default')


def test_a_post_without_the_csrf_token_is_refused(connection):
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    response = client.post(reverse(URL), {'server': SERVER, 'action': 'pause', 'queue': ''})
    assert response.status_code == 403 and not connection.exists(keys.PAUSED_KEY)


def test_a_pause_key_someone_else_wrote_is_shown_as_a_problem_and_the_button_says_redis_failed(
    admin_client_, connection
):
    connection.set(keys.PAUSED_KEY, 'junk')
    page = admin_client_.get(reverse(URL)).content.decode()
    assert 'The pause key cannot be read, so nothing is paused' in page
    [message] = shown_messages(post(admin_client_, action='pause', queue=''))
    assert message.startswith('Redis failed (WRONGTYPE')
