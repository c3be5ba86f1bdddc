"""The admin with Django's test client: screens, actions, permissions, the status page, and query counts."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from tests.admin_forms import POLICY_DEFAULTS

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc


@pytest.fixture
def admin_client_(client, redis_url):
    user = User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    client.force_login(user)
    return client


def staff(client, *codenames):
    user = User.objects.create_user('staff', password='pw', is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def cron(name='report', **extra):
    return CronJob.objects.create(
        name=name,
        callable='tests.tasks.record',
        args=[name],
        cron_string='0 7 * * 1-5',
        timezone='Europe/Paris',
        **extra,
    )


def test_change_lists_show_schedule_in_words_and_status(admin_client_, connection):
    cron()
    RepeatableJob.objects.create(
        name='every', callable='tests.tasks.add', scheduled_time=datetime.now(UTC), interval=15, interval_unit='minutes'
    )
    ScheduledJob.objects.create(
        name='once', callable='tests.tasks.add', scheduled_time=datetime(2031, 1, 1, tzinfo=UTC)
    )
    page = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_changelist')).content.decode()
    assert 'At 07:00, Monday through Friday (Europe/Paris)' in page
    assert 'drqs-status-scheduled' in page
    page = admin_client_.get(reverse('admin:django_rq_scheduled_repeatablejob_changelist')).content.decode()
    assert 'every 15 minutes' in page
    page = admin_client_.get(reverse('admin:django_rq_scheduled_scheduledjob_changelist')).content.decode()
    assert 'once, at 2031-01-01' in page


def test_status_badges_paused_and_missing(admin_client_, connection):
    paused = cron('paused')
    paused.disable()
    cron('lost')
    connection.flushall()
    page = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_changelist')).content.decode()
    assert 'drqs-status-paused' in page and 'drqs-status-missing' in page
    missing = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_changelist') + '?status=missing')
    assert [row.name for row in missing.context['cl'].result_list] == ['lost']
    by_queue = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_changelist') + '?queue=high')
    assert list(by_queue.context['cl'].result_list) == []


def test_bad_cron_string_shows_a_field_error_and_saves_nothing(admin_client_, connection):
    url = reverse('admin:django_rq_scheduled_cronjob_add')
    data = {
        'name': 'broken', 'callable': 'tests.tasks.add', 'args': '[]', 'kwargs': '{}', 'queue': 'default',
        'enabled': 'on', 'cron_string': '61 * * * *', 'timezone': 'UTC', 'overlap': 'allow', **POLICY_DEFAULTS,
    }  # fmt: skip
    response = admin_client_.post(url, data)
    assert response.status_code == 200
    assert 'cron_string' in response.context['adminform'].form.errors
    assert CronJob.objects.count() == 0 and connection.dbsize() == 0
    response = admin_client_.post(url, {**data, 'args': '{"a": 1}', 'cron_string': '*/5 * * * *'})
    assert 'args' in response.context['adminform'].form.errors
    response = admin_client_.post(url, {**data, 'cron_string': '*/5 * * * *'})
    assert response.status_code == 302
    row = CronJob.objects.get()
    page = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk])).content.decode()
    assert page.count('<li>') >= 5 and 'drqs-upcoming' in page


@pytest.mark.parametrize(
    ('field', 'typed', 'message'),
    [
        ('args', '{"a": 1}', 'Positional arguments must be a JSON list, e.g. [1, "a"]; got an object.'),
        ('args', '"a"', 'Positional arguments must be a JSON list, e.g. [1, "a"]; got a string.'),
        ('kwargs', '[1, 2]', 'Keyword arguments must be a JSON object, e.g. {"name": "value"}; got a list.'),
        ('kwargs', '[]', 'Keyword arguments must be a JSON object, e.g. {"name": "value"}; got a list.'),
    ],
)
def test_wrong_json_type_of_arguments_is_explained_on_the_field(admin_client_, connection, field, typed, message):
    data = {
        'name': 'typo', 'callable': 'tests.tasks.add', 'args': '[]', 'kwargs': '{}', 'queue': 'default',
        'enabled': 'on', 'cron_string': '*/5 * * * *', 'timezone': 'UTC', 'overlap': 'allow', field: typed,
        **POLICY_DEFAULTS,
    }  # fmt: skip
    response = admin_client_.post(reverse('admin:django_rq_scheduled_cronjob_add'), data)
    assert response.status_code == 200
    assert response.context['adminform'].form.errors[field] == [message]
    assert CronJob.objects.count() == 0 and connection.dbsize() == 0


def test_queue_select_is_built_from_rq_queues_per_request(admin_client_, settings, redis_url):
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, 'reports': {'URL': redis_url}}
    form = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_add')).context['adminform'].form
    assert [choice for choice, _ in form.fields['queue'].choices] == ['default', 'high', 'reports']


def test_callable_suggestions(admin_client_, settings, connection):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    cron(name='uses-record')
    form = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_add')).context['adminform'].form
    suggestions = form.fields['callable'].widget.suggestions
    assert suggestions[0] == 'tests.tasks.*'  # the allow-list patterns first
    assert 'tests.tasks.record' in suggestions  # already used by a row
    page = admin_client_.get(reverse('admin:django_rq_scheduled_cronjob_add')).content.decode()
    assert '<datalist id="id_callable_suggestions">' in page


def test_actions_write_log_entries_and_messages(admin_client_, connection):
    rows = [cron(f'r{i}') for i in range(3)]
    url = reverse('admin:django_rq_scheduled_cronjob_changelist')
    selected = [str(row.pk) for row in rows]
    response = admin_client_.post(url, {'action': 'disable_selected', '_selected_action': selected}, follow=True)
    assert '3 schedules disabled.' in response.content.decode()
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    admin_client_.post(url, {'action': 'enable_selected', '_selected_action': selected[:1]})
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1
    response = admin_client_.post(url, {'action': 'run_selected_now', '_selected_action': selected[:1]}, follow=True)
    assert '1 run enqueued.' in response.content.decode()
    assert connection.llen('rq:queue:default') == 1
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1  # run now does not move the next run
    assert LogEntry.objects.filter(change_message='Disabled').count() == 3
    assert LogEntry.objects.filter(change_message__startswith='Ran now').count() == 1


def test_cancel_action_asks_first_then_cancels(admin_client_, connection):
    row = cron()
    url = reverse('admin:django_rq_scheduled_cronjob_changelist')
    confirm = admin_client_.post(url, {'action': 'cancel_selected', '_selected_action': [row.pk]})
    assert 'Yes, cancel them' in confirm.content.decode()
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1
    admin_client_.post(url, {'action': 'cancel_selected', '_selected_action': [row.pk], 'confirmed': 'yes'})
    row.refresh_from_db()
    assert not row.enabled and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    assert CronJob.objects.filter(pk=row.pk).exists()  # history kept


def test_cancel_screen_of_one_schedule(admin_client_, connection):
    row = cron()
    url = reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk])
    assert 'Yes, cancel it' in admin_client_.get(url).content.decode()
    admin_client_.post(url)
    row.refresh_from_db()
    assert not row.enabled and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_deleting_rows_removes_their_templates(admin_client_, connection):
    rows = [cron(f'd{i}') for i in range(2)]
    url = reverse('admin:django_rq_scheduled_cronjob_changelist')
    admin_client_.post(url, {'action': 'delete_selected', '_selected_action': [r.pk for r in rows], 'post': 'yes'})
    assert CronJob.objects.count() == 0 and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_view_only_staff_sees_no_actions_and_cannot_change(client, connection, redis_url):
    row = cron()
    viewer = staff(client, 'view_cronjob')
    response = viewer.get(reverse('admin:django_rq_scheduled_cronjob_changelist'))
    assert response.status_code == 200
    assert response.context['action_form'] is None
    assert viewer.post(reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk])).status_code == 403
    assert viewer.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).status_code == 403


def test_staff_without_permissions_sees_nothing(client, connection, redis_url):
    row = cron()
    nobody = staff(client)
    for name in (
        'cronjob_changelist',
        'repeatablejob_changelist',
        'scheduledjob_changelist',
        'schedulerstatus_changelist',
    ):
        assert nobody.get(reverse(f'admin:django_rq_scheduled_{name}')).status_code == 403
    assert nobody.get(reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk])).status_code == 403
    assert nobody.post(reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk])).status_code == 403


def test_status_page(admin_client_, connection):
    row = cron()
    scheduler = Scheduler(connection=connection, name='page-leader')
    scheduler.register_birth()
    assert scheduler.acquire_lock()
    scheduler.enqueue_at(datetime(2031, 1, 1, tzinfo=UTC), 'tests.tasks.add', job_id='api-job')
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), 'tests.tasks.add', job_id='broken')
    connection.hdel(keys.job_key('broken'), 'origin')
    scheduler.move_due_jobs()
    url = reverse('admin:django_rq_scheduled_schedulerstatus_changelist')
    page = admin_client_.get(url).content.decode()
    assert 'page-leader' in page
    assert reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk]) in page
    assert 'api-job' in page and 'broken' in page and 'no origin queue' in page
    server = admin_client_.get(url).context['servers'][0]['name']
    admin_client_.post(url, {'server': server, 'job_id': 'broken', 'action': 'retry'})
    assert 'broken' in scheduler and scheduler.dead_letters() == {}
    admin_client_.post(url, {'server': server, 'job_id': 'api-job', 'action': 'cancel'})
    assert 'api-job' not in scheduler


def table_cells(page: str, table_id: str) -> list[list[str]]:
    """The text of each cell of each body row of one table of the page."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    body = re.search(r'<tbody>(.*?)</tbody>', table, re.S).group(1)
    return [
        [' '.join(re.sub(r'<[^>]+>', ' ', cell).split()) for cell in re.findall(r'<td[^>]*>(.*?)</td>', row, re.S)]
        for row in re.findall(r'<tr>(.*?)</tr>', body, re.S)
    ]


def test_status_page_times_are_in_the_current_time_zone_and_name_it(admin_client_, connection, settings):
    settings.TIME_ZONE = 'Europe/Paris'
    scheduler = Scheduler(connection=connection, name='paris-leader')
    scheduler.register_birth()
    assert scheduler.acquire_lock()
    for job_id, due in (
        ('winter', datetime(2031, 1, 1, 6, tzinfo=UTC)),
        ('summer', datetime(2031, 7, 1, 6, tzinfo=UTC)),
        # 02:30 happens twice in Paris that night: the abbreviation tells the two apart.
        ('before-fall-back', datetime(2031, 10, 26, 0, 30, tzinfo=UTC)),
        ('after-fall-back', datetime(2031, 10, 26, 1, 30, tzinfo=UTC)),
    ):
        scheduler.enqueue_at(due, 'tests.tasks.add', job_id=job_id)
    connection.hset(keys.DEAD_LETTERS_KEY, 'poisoned', '{"reason": "r", "score": 1924927200, "at": 1924927200}')
    page = admin_client_.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).content.decode()
    assert 'UTC' not in page
    for label in ('Last heartbeat', 'Due', 'Was due', 'Since'):
        assert f'{label} (Europe/Paris)' in page
    due = {cells[0].split()[0]: cells[1] for cells in table_cells(page, 'drqs-next-due')}
    assert due == {
        'winter': '2031-01-01 07:00:00 CET',
        'summer': '2031-07-01 08:00:00 CEST',
        'before-fall-back': '2031-10-26 02:30:00 CEST',
        'after-fall-back': '2031-10-26 02:30:00 CET',
    }
    assert {cells[1] for cells in table_cells(page, 'drqs-unowned')} == set(due.values())
    assert table_cells(page, 'drqs-dead-letters')[0][2:4] == ['2030-12-31 07:00:00 CET'] * 2


def first_cells(page: str, table_id: str) -> set[str]:
    return {cells[0] for cells in table_cells(page, table_id)}


def change_url(row) -> str:
    return reverse(f'admin:django_rq_scheduled_{row._meta.model_name}_change', args=[row.pk])


@pytest.fixture
def one_row_of_each_kind_and_two_strangers(connection):
    later = datetime(2031, 1, 1, tzinfo=UTC)
    rows = [
        cron(name='weekday-report'),
        RepeatableJob.objects.create(
            name='poll-feeds', callable='tests.tasks.add', scheduled_time=later, interval=1, interval_unit='hours'
        ),
        ScheduledJob.objects.create(name='launch', callable='tests.tasks.add', scheduled_time=later),
    ]
    Scheduler(connection=connection).enqueue_at(later, 'tests.tasks.add', job_id='api-job')
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {keys.template_id('cronjob', 999_999): later.timestamp()})  # row gone
    return rows


def test_status_page_names_and_links_the_rows_of_its_entries(admin_client_, one_row_of_each_kind_and_two_strangers):
    page = admin_client_.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).content.decode()
    strangers = {'api-job — no schedule row', 'drqs-cronjob-999999 — no schedule row'}
    named = {'weekday-report (cron job)', 'poll-feeds (repeatable job)', 'launch (scheduled job)'}
    assert first_cells(page, 'drqs-next-due') == named | strangers
    assert first_cells(page, 'drqs-unowned') == strangers  # a template whose row is gone is owned by no row
    for row in one_row_of_each_kind_and_two_strangers:
        assert f'<a href="{change_url(row)}" title="{row.template_id}">{row.name}</a>' in page


def test_status_page_links_only_the_rows_the_user_may_view(client, one_row_of_each_kind_and_two_strangers):
    report, poll_feeds, launch = one_row_of_each_kind_and_two_strangers
    viewer = staff(client, 'view_schedulerstatus', 'view_cronjob', 'change_scheduledjob')
    page = viewer.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).content.decode()
    assert change_url(report) in page and change_url(launch) in page and change_url(poll_feeds) not in page
    assert 'poll-feeds (repeatable job)' in first_cells(page, 'drqs-next-due')


def test_status_page_looks_rows_up_once_per_model_whatever_the_number_of_entries(admin_client_, connection):
    later = datetime(2031, 1, 1, tzinfo=UTC)
    for n in range(12):
        cron(name=f'cron-{n}')
        RepeatableJob.objects.create(
            name=f'every-{n}', callable='tests.tasks.add', scheduled_time=later, interval=1, interval_unit='hours'
        )
        ScheduledJob.objects.create(name=f'once-{n}', callable='tests.tasks.add', scheduled_time=later)
    url = reverse('admin:django_rq_scheduled_schedulerstatus_changelist')
    admin_client_.get(url)  # warm-up: session, user
    with CaptureQueriesContext(db_connection) as queries:
        page = admin_client_.get(url).content.decode()
    assert len(first_cells(page, 'drqs-next-due')) == 20
    for model in (CronJob, RepeatableJob, ScheduledJob):
        assert sum(model._meta.db_table in query['sql'] for query in queries.captured_queries) == 1


def test_status_page_with_an_empty_schedule(admin_client_, connection):
    page = admin_client_.get(reverse('admin:django_rq_scheduled_schedulerstatus_changelist')).content.decode()
    assert first_cells(page, 'drqs-next-due') == {'Nothing scheduled.'}
    assert first_cells(page, 'drqs-unowned') == {'None.'}


def test_status_page_buttons_need_change_permission(client, connection, redis_url):
    Scheduler(connection=connection).enqueue_at(datetime(2031, 1, 1, tzinfo=UTC), 'tests.tasks.add', job_id='api-job')
    viewer = staff(client, 'view_schedulerstatus')
    url = reverse('admin:django_rq_scheduled_schedulerstatus_changelist')
    page = viewer.get(url)
    assert page.status_code == 200 and 'value="cancel"' not in page.content.decode()
    assert viewer.post(url, {'server': 'default, high', 'job_id': 'api-job', 'action': 'cancel'}).status_code == 403


class CountingConnection(redis.Connection):
    round_trips = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.round_trips += 1
        return super().send_packed_command(command, check_health)


def changelist_costs(client, url):
    """SQL queries, Redis round trips and the best of 5 render times of one change list page."""
    import time

    from django_rq_scheduled.servers import servers

    for scheduler in servers().schedulers.values():
        scheduler.connection.connection_pool.connection_class = CountingConnection
        scheduler.connection.connection_pool.reset()
    client.get(url)  # warm-up: connections, session
    before = CountingConnection.round_trips
    with CaptureQueriesContext(db_connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    trips = CountingConnection.round_trips - before
    query_count = len(queries)  # read now: the next request resets Django's query log
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        client.get(url)
        timings.append(time.perf_counter() - started)
    return query_count, trips, min(timings)


def insert_runs(count, model):
    """``count`` finished runs spread over the first 100 rows of ``model``, written by one SQL statement."""
    from django.contrib.contenttypes.models import ContentType

    from django_rq_scheduled.models import Run

    kind = ContentType.objects.get_for_model(model).pk
    first = model.objects.order_by('pk').values_list('pk', flat=True).first()
    table = db_connection.ops.quote_name(Run._meta.db_table)
    columns = 'rq_job_id, schedule_type_id, schedule_id, schedule_name, trigger, status, reason, queue, worker, error'
    values = f"'r' || n, {kind}, {first} + n % 100, 'n', 'schedule', 'finished', '', 'default', 'w', ''"
    numbers = (
        f'SELECT generate_series(1, {count}) AS n'
        if db_connection.vendor == 'postgresql'
        else f'WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) SELECT n FROM s'
    )
    with db_connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {table} ({columns}) SELECT {values} FROM ({numbers}) AS numbers')
    assert Run.objects.count() == count


@pytest.mark.slow
def test_change_list_costs_do_not_grow_with_the_table(admin_client_, connection):
    from django.db.models import QuerySet

    url = reverse('admin:django_rq_scheduled_cronjob_changelist')
    rows = [CronJob(name=f'n{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(100)]
    CronJob.objects.bulk_create(rows)
    small = changelist_costs(admin_client_, url)
    # Raw rows (no sync) are enough to measure the page: the status column reads Redis for the page only.
    QuerySet(CronJob).bulk_create(
        [CronJob(name=f'm{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(99_900)],
        batch_size=5000,
    )
    insert_runs(1_000_000, CronJob)
    large = changelist_costs(admin_client_, url)
    print(
        f'\n[figures] change list at 100 rows: {small[0]} queries, {small[1]} round trip, {small[2] * 1000:.1f} ms; '
        f'at 100,000 rows and 1,000,000 runs: {large[0]} queries, {large[1]} round trip, {large[2] * 1000:.1f} ms '
        f'(ratio {large[2] / small[2]:.2f})'
    )
    assert small[:2] == large[:2]
    assert large[0] <= 6 and large[1] <= 1


def test_functions_decorated_with_django_rq_job_are_suggested(monkeypatch, settings, redis_url):
    import sys
    import types

    import django_rq

    from django_rq_scheduled import forms

    module = types.ModuleType('fakeapp.tasks')

    def send_digest():
        return 'sent'

    def plain():
        return 'not a job'

    module.send_digest = django_rq.job('default')(send_digest)
    module.plain = plain
    monkeypatch.setitem(sys.modules, 'fakeapp.tasks', module)
    monkeypatch.setattr(forms.apps, 'get_app_configs', lambda: [types.SimpleNamespace(name='fakeapp')])
    assert forms.job_decorated_callables() == ['fakeapp.tasks.send_digest']
