"""Admin actions under change-list filters, and what Run now costs in Redis connections."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.urls import reverse

from django_rq_scheduled.models import CronJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHANGELIST = 'admin:django_rq_scheduled_cronjob_changelist'


@pytest.fixture
def superuser(client, redis_url):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def rows(count: int, *, enabled: bool = True) -> list[CronJob]:
    return [
        CronJob.objects.create(
            name=f'row-{enabled}-{i}', callable='tests.tasks.add', args=[1, 2], cron_string='0 7 * * *', enabled=enabled
        )
        for i in range(count)
    ]


def selected(schedules: list[CronJob]) -> list[str]:
    return [str(row.pk) for row in schedules]


def logged(message: str) -> list[int]:
    return sorted(int(entry.object_id) for entry in LogEntry.objects.filter(change_message=message))


# -- every touched row gets its log entry, whatever the change list's filter ------------------------------------


def test_disabling_rows_filtered_by_enabled_logs_each_row(superuser):
    chosen = rows(2)
    url = reverse(CHANGELIST) + '?enabled__exact=1'
    superuser.post(url, {'action': 'disable_selected', '_selected_action': selected(chosen)})
    assert not CronJob.objects.filter(enabled=True).exists()
    assert logged('Disabled') == [row.pk for row in chosen]


def test_enabling_rows_filtered_by_disabled_logs_each_row(superuser):
    chosen = rows(2, enabled=False)
    url = reverse(CHANGELIST) + '?enabled__exact=0'
    superuser.post(url, {'action': 'enable_selected', '_selected_action': selected(chosen)})
    assert not CronJob.objects.filter(enabled=False).exists()
    assert logged('Enabled') == [row.pk for row in chosen]


def test_cancelling_rows_filtered_by_enabled_logs_each_row(superuser):
    chosen = rows(2)
    url = reverse(CHANGELIST) + '?enabled__exact=1'
    confirm = superuser.post(url, {'action': 'cancel_selected', '_selected_action': selected(chosen)})
    assert 'Yes, cancel them' in confirm.content.decode()
    superuser.post(url, {'action': 'cancel_selected', '_selected_action': selected(chosen), 'confirmed': 'yes'})
    assert not CronJob.objects.filter(enabled=True).exists()
    assert logged('Cancelled') == [row.pk for row in chosen]


def test_the_cancel_screen_of_one_row_logs_it(superuser):
    (row,) = rows(1)
    superuser.post(reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk]))
    row.refresh_from_db()
    assert not row.enabled and logged('Cancelled') == [row.pk]


def test_only_the_selected_rows_change(superuser):
    chosen = rows(2)
    other = CronJob.objects.create(name='other', callable='tests.tasks.add', cron_string='0 7 * * *')
    url = reverse(CHANGELIST) + '?enabled__exact=1'
    superuser.post(url, {'action': 'disable_selected', '_selected_action': selected(chosen)})
    other.refresh_from_db()
    assert other.enabled and logged('Disabled') == [row.pk for row in chosen]


# -- run now reuses the server's client -------------------------------------------------------------------------


def connections_opened(connection, action) -> int:
    """How many connections the Redis server accepted while ``action`` ran."""
    before = connection.info('stats')['total_connections_received']
    action()
    return connection.info('stats')['total_connections_received'] - before


def test_run_now_on_many_rows_opens_no_more_connections_than_on_one(superuser, connection):
    one, many = rows(1), rows(20, enabled=False)
    url = reverse(CHANGELIST)
    superuser.get(url)  # the change list warms the cached per-server clients up

    def run(schedules):
        return lambda: superuser.post(url, {'action': 'run_selected_now', '_selected_action': selected(schedules)})

    on_one = connections_opened(connection, run(one))
    on_many = connections_opened(connection, run(many))
    assert connection.llen('rq:queue:default') == 21
    assert on_many <= on_one


def test_run_now_enqueues_on_the_rows_own_queue_through_the_shared_client(superuser, connection):
    row = CronJob.objects.create(name='high', callable='tests.tasks.add', cron_string='0 7 * * *', queue='high')
    superuser.post(reverse(CHANGELIST), {'action': 'run_selected_now', '_selected_action': [row.pk]})
    assert connection.llen('rq:queue:high') == 1 and connection.llen('rq:queue:default') == 0
