"""The run history in the admin: badges, strips, the failing filter, the last runs on the change form, the run list
and page, the retry action, cancel against disable, and a Redis that does not answer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from django_rq_scheduled import cancel, history
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import RepeatableJob, Run
from django_rq_scheduled.servers import run_now
from tests.conftest import run_worker
from tests.processes import queue_ids

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
TRACEBACK = 'ValueError: the <disk> is full\nTraceback (most recent call last):\n  File "tasks.py", line 3\n'


@pytest.fixture
def superuser(client, redis_url):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def schedule(name='report', **options):
    defaults = {'callable': 'tests.tasks.add', 'args': [1, 2], 'interval': 1, 'interval_unit': 'hours'}
    defaults['scheduled_time'] = datetime.now(UTC) + timedelta(hours=1)
    return RepeatableJob.objects.create(name=name, **{**defaults, **options})


def record(row, status, number, **fields):
    """A run of ``row`` read in as the leader does (``history.record_facts``)."""
    fact = history.Fact(f'{row.template_id}_at_{number}', RepeatableJob, row.pk, status, **fields)
    fact.ended_at = fact.ended_at or datetime.now(UTC)
    history.record_facts([fact])
    return Run.objects.get(rq_job_id=fact.job_id)


def changelist(client, **params):
    return client.get(reverse('admin:django_rq_scheduled_repeatablejob_changelist'), params).content.decode()


def test_the_change_list_shows_the_last_outcome_its_error_the_counts_and_the_strip(superuser, connection):
    row = schedule()
    record(row, 'finished', 1)
    failed = record(row, 'failed', 2, error=TRACEBACK, reported=True)
    page = changelist(superuser)
    assert 'drqs-outcome-failed' in page and 'title="ValueError: the &lt;disk&gt; is full"' in page
    assert '✓ 1 · ✗ 1, 1 in a row' in page
    assert page.count('class="drqs-strip"') == 1
    assert reverse('admin:django_rq_scheduled_run_change', args=[failed.pk]) in page
    assert '<disk>' not in page  # escaped everywhere


def test_the_failing_filter_lists_the_schedules_whose_last_runs_failed(superuser, connection):
    healthy, failing, new = schedule('healthy'), schedule('failing'), schedule('new')
    record(healthy, 'failed', 1)
    record(healthy, 'finished', 2)
    record(failing, 'finished', 1)
    record(failing, 'failed', 2)
    page = changelist(superuser, outcome='failing')
    assert '>failing<' in page and '>healthy<' not in page and '>new<' not in page
    page = changelist(superuser, outcome='never')
    assert '>new<' in page and '>failing<' not in page
    assert new.pk


def test_the_change_form_lists_the_last_runs_and_links_to_all_of_them(superuser, connection):
    row, other = schedule(), schedule('other')
    for number in range(25):
        record(row, 'failed' if number % 2 else 'finished', number, error='KeyError: x' if number % 2 else '')
    record(other, 'finished', 1)
    page = superuser.get(reverse('admin:django_rq_scheduled_repeatablejob_change', args=[row.pk])).content.decode()
    assert page.count('<tr><td><a href=') == 20 and 'KeyError: x' in page
    assert page.count('class="drqs-strip"') == 1
    link = page.split('All runs of this schedule')[0].rsplit('href="', 1)[1].split('"')[0].replace('&amp;', '&')
    listed = superuser.get(link)
    assert listed.status_code == 200
    assert listed.context['cl'].result_count == 25  # only this schedule's


def test_the_run_page_shows_the_whole_traceback_and_django_rqs_job_page_while_the_job_exists(
    superuser, connection, redis_url
):
    row = schedule(callable='tests.tasks.fail', args=['boom'])
    job = run_now(row)
    run = Run.objects.get(rq_job_id=job.id)
    url = reverse('admin:django_rq_scheduled_run_change', args=[run.pk])
    page = superuser.get(url).content.decode()
    assert 'django-rq&#x27;s page of this job' in page
    run_worker(redis_url)
    history.ingest_outcomes(connection)
    page = superuser.get(url).content.decode()
    assert 'ValueError: boom' in page and 'Traceback (most recent call last)' in page and 'tests/tasks.py' in page
    connection.delete(keys.job_key(job.id))
    assert 'django-rq&#x27;s page of this job' not in superuser.get(url).content.decode()


def test_retry_runs_a_failed_run_again_once_with_a_log_entry(superuser, connection):
    row = schedule()
    failed = record(row, 'failed', 1, error='ValueError: x')
    finished = record(row, 'finished', 2)
    url = reverse('admin:django_rq_scheduled_run_changelist')
    response = superuser.post(url, {'action': 'retry_selected', '_selected_action': [failed.pk, finished.pk]})
    assert response.status_code == 302
    [manual] = Run.objects.filter(trigger='manual')
    assert manual.status == 'queued' and queue_ids(connection) == [manual.rq_job_id]
    entry = LogEntry.objects.get()
    assert entry.object_id == str(row.pk) and f'Retried run {failed.pk}' in entry.change_message


def test_retry_needs_csrf_and_the_change_permission_on_the_schedule(client, connection, redis_url):
    row = schedule()
    failed = record(row, 'failed', 1)
    url = reverse('admin:django_rq_scheduled_run_changelist')
    viewer = User.objects.create_user('viewer', password='pw', is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=['view_run', 'view_repeatablejob']))
    client.force_login(viewer)
    client.post(url, {'action': 'retry_selected', '_selected_action': [failed.pk]})
    assert Run.objects.filter(trigger='manual').count() == 0 and queue_ids(connection) == []
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    assert strict.post(url, {'action': 'retry_selected', '_selected_action': [failed.pk]}).status_code == 403
    assert Run.objects.filter(trigger='manual').count() == 0


def test_runs_cannot_be_added_or_changed_in_the_admin(superuser, connection):
    run = record(schedule(), 'failed', 1)
    assert superuser.get(reverse('admin:django_rq_scheduled_run_add')).status_code == 403
    url = reverse('admin:django_rq_scheduled_run_change', args=[run.pk])
    superuser.post(url, {'status': 'finished'})
    run.refresh_from_db()
    assert run.status == 'failed'


def test_cancel_takes_waiting_runs_out_of_their_queue_and_disable_does_not(superuser, connection):
    cancelled, disabled = schedule('cancelled'), schedule('disabled')
    waiting_cancelled, waiting_disabled = run_now(cancelled), run_now(disabled)
    url = reverse('admin:django_rq_scheduled_repeatablejob_changelist')
    superuser.post(url, {'action': 'disable_selected', '_selected_action': [disabled.pk]})
    superuser.post(url, {'action': 'cancel_selected', '_selected_action': [cancelled.pk], 'confirmed': 'yes'})
    assert queue_ids(connection) == [waiting_disabled.id]
    run = Run.objects.get(rq_job_id=waiting_cancelled.id)
    assert (run.status, run.reason) == ('canceled', cancel.CANCELED_WITH_SCHEDULE)
    assert connection.hget(keys.job_key(waiting_cancelled.id), 'status') == b'canceled'
    assert Run.objects.get(rq_job_id=waiting_disabled.id).status == 'queued'


def test_cancel_leaves_a_run_a_worker_has_taken(superuser, connection, redis_url):
    row = schedule()
    job = run_now(row)
    connection.lrem('rq:queue:default', 0, job.id)  # a worker took it
    connection.hset(keys.job_key(job.id), 'status', 'started')
    url = reverse('admin:django_rq_scheduled_repeatablejob_changelist')
    superuser.post(url, {'action': 'cancel_selected', '_selected_action': [row.pk], 'confirmed': 'yes'})
    assert connection.hget(keys.job_key(job.id), 'status') == b'started'
    assert Run.objects.get(rq_job_id=job.id).status == 'queued'


def test_the_admin_answers_while_redis_is_away(superuser, connection, settings):
    row = schedule()
    run = record(row, 'failed', 1, error='ValueError: x')
    settings.RQ_QUEUES = {name: {'URL': 'redis://127.0.0.1:1/0'} for name in ('default', 'high')}
    pages = [
        reverse('admin:django_rq_scheduled_repeatablejob_changelist'),
        reverse('admin:django_rq_scheduled_repeatablejob_change', args=[row.pk]),
        reverse('admin:django_rq_scheduled_run_changelist'),
        reverse('admin:django_rq_scheduled_run_change', args=[run.pk]),
        reverse('admin:django_rq_scheduled_schedulerstatus_changelist'),
    ]
    for url in pages:
        response = superuser.get(url)
        assert response.status_code == 200, url


def test_saving_while_redis_is_away_says_the_row_is_saved_and_will_be_synced(superuser, connection, settings, caplog):
    row = schedule()
    settings.RQ_QUEUES = {name: {'URL': 'redis://127.0.0.1:1/0'} for name in ('default', 'high')}
    url = reverse('admin:django_rq_scheduled_repeatablejob_change', args=[row.pk])
    form = superuser.get(url).context['adminform'].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {
            'name': 'renamed',
            'args': '[1, 2]',
            'kwargs': '{}',
            'scheduled_time_0': '2031-01-01',
            'scheduled_time_1': '10:00:00',
        }
    )
    response = superuser.post(url, data, follow=True)
    page = response.content.decode()
    assert RepeatableJob.objects.get(pk=row.pk).name == 'renamed'
    assert 'is saved, but Redis could not be updated' in page and 'next reconciliation' in page
    assert 'once Redis answers' in caplog.text


def test_the_change_list_costs_the_same_with_many_runs(superuser, connection):
    from tests.test_admin import changelist_costs

    rows = [schedule(f's{i}') for i in range(5)]
    url = reverse('admin:django_rq_scheduled_repeatablejob_changelist')
    few = changelist_costs(superuser, url)
    for row in rows:
        for number in range(40):
            record(row, 'failed', number, error='E: x')
    for i in range(5, 60):
        schedule(f's{i}')
    many = changelist_costs(superuser, url)
    assert few[:2] == many[:2] and many[1] <= 1


@pytest.mark.parametrize(
    'params',
    [
        {'kind': 'repeatablejob'}, {'kind': '<script>'}, {'kind': 'user'}, {'schedule_id': '9' * 30},
        {'schedule_id': '-1'}, {'schedule_id': 'abc'}, {'status': 'nonsense'}, {'q': '\x00'},
        {'fire_time__year': '99999'},
    ],
)  # fmt: skip
def test_the_run_list_answers_any_query(superuser, connection, params):
    record(schedule(), 'failed', 1)
    response = superuser.get(reverse('admin:django_rq_scheduled_run_changelist'), params)
    assert response.status_code in (200, 302)
    if params == {'kind': 'repeatablejob'}:
        assert response.context['cl'].result_count == 1


def test_the_run_page_shows_its_attempts_and_its_jitter_delay(superuser, connection):
    row = schedule()
    run = record(row, 'finished', 1, attempts=3, delay=1.25, reported=True)
    page = superuser.get(reverse('admin:django_rq_scheduled_run_change', args=[run.pk])).content.decode()
    assert 'Attempts' in page and '>3<' in page.replace(' ', '')
    assert 'Jitter delay' in page and '1.25' in page
