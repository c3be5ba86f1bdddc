"""Rows racing the loop: stale saves, edits and reconciliation landing between the loop's reads and writes, rows and
run records changed behind the models' back. Nothing runs twice, nothing is lost, one bad row or record stops
nothing else. Grow this module."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection as db_connection
from django.urls import reverse

from django_rq_scheduled import Scheduler, feedback, sync
from django_rq_scheduled.admin import ScheduledJobAdmin
from django_rq_scheduled.core import keys
from django_rq_scheduled.feedback import apply_feedback
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from django_rq_scheduled.sync import reconcile

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
UTC = timezone.utc


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def scheduled_ids(connection):
    return sorted(member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1))


def leader(connection):
    # A lease that outlives the slowest test here on a loaded machine: these tests are about sync, not leadership.
    scheduler = Scheduler(connection=connection, name='leader', lease_ttl=600)
    assert scheduler.acquire_lock()
    return scheduler


def edit_in_the_admin(client, row):
    """A superuser's POST of the row's change form with a new description, as the admin's page would send it."""
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    url = reverse('admin:django_rq_scheduled_scheduledjob_change', args=[row.pk])
    form = client.get(url).context['adminform'].form
    data = {name: form[name].value() for name in form.fields}
    data.update(
        description='edited in the admin', args='[1, 2]', kwargs='{}',
        scheduled_time_0=f'{row.scheduled_time:%Y-%m-%d}', scheduled_time_1=f'{row.scheduled_time:%H:%M:%S}',
    )  # fmt: skip
    return client.post(url, {key: value for key, value in data.items() if value is not None})


def due_one_off(name='once'):
    return ScheduledJob.objects.create(
        name=name, callable='tests.tasks.add', args=[1, 2], scheduled_time=datetime.now(UTC) - timedelta(seconds=1)
    )


# -- a stale instance saved after the run ------------------------------------------------------------------------


@pytest.mark.parametrize('feedback_first', [True, False], ids=['feedback-in-db', 'feedback-still-in-redis'])
def test_a_stale_one_off_saved_after_its_run_never_runs_again(connection, feedback_first):
    stale = due_one_off()
    scheduler = leader(connection)
    scheduler.move_due_jobs()
    assert queued(connection) == [stale.template_id]
    if feedback_first:
        apply_feedback(connection)
    stale.description = 'edited after the run'
    stale.scheduled_time = stale.scheduled_time + timedelta(seconds=5)  # the admin re-renders the time, too
    stale.save()
    scheduler.move_due_jobs()
    reconcile()
    scheduler.move_due_jobs()
    apply_feedback(connection)
    assert queued(connection) == [stale.template_id]
    row = ScheduledJob.objects.get()
    assert row.has_run and row.run_count == 1 and row.description == 'edited after the run'
    assert stale.template_id not in scheduled_ids(connection)


@pytest.mark.parametrize('model', [RepeatableJob, CronJob])
def test_a_stale_repeat_once_schedule_saved_after_its_run_never_runs_again(connection, model):
    when = {'scheduled_time': datetime.now(UTC) + timedelta(seconds=0.5), 'interval': 1, 'interval_unit': 'hours'}
    if model is CronJob:
        when = {'cron_string': '* * * * * *'}  # every second
    stale = model.objects.create(name='twice?', callable='tests.tasks.add', repeat=1, **when)
    scheduler = leader(connection)
    threading.Event().wait(1.1)
    assert len(scheduler.move_due_jobs().enqueued) == 1
    stale.description = 'edited'
    stale.save()  # run_count=0 in this instance: the save must not write it
    threading.Event().wait(1.1)
    scheduler.move_due_jobs()
    reconcile()
    scheduler.move_due_jobs()
    apply_feedback(connection)
    assert len(queued(connection)) == 1
    assert model.objects.get().run_count == 1
    assert stale.template_id not in scheduled_ids(connection)


def test_raising_repeat_after_the_last_run_continues_with_the_runs_already_made(connection):
    row = RepeatableJob.objects.create(
        name='more', callable='tests.tasks.add', scheduled_time=datetime.now(UTC) + timedelta(seconds=0.3),
        interval=1, interval_unit='hours', repeat=1,
    )  # fmt: skip
    scheduler = leader(connection)
    threading.Event().wait(0.4)
    assert len(scheduler.move_due_jobs().enqueued) == 1
    row = RepeatableJob.objects.get()  # the feedback has not reached the database: run_count is still 0
    row.repeat = 3
    row.save()
    assert row.template_id in scheduled_ids(connection)
    [template] = scheduler.get_jobs()
    assert template.meta['repeat'] == 2  # 3 in all, one made


def test_update_and_bulk_update_refuse_the_loops_fields(connection):
    row = due_one_off()
    for field, value in (('has_run', False), ('run_count', 0), ('next_run', None), ('last_run', None)):
        with pytest.raises(ValueError, match='scheduler loop'):
            ScheduledJob.objects.filter(pk=row.pk).update(**{field: value})
        with pytest.raises(ValueError, match='scheduler loop'):
            ScheduledJob.objects.bulk_update([row], [field])


def test_an_admin_post_whose_save_lands_after_the_run_does_not_run_it_again(connection, client, monkeypatch):
    row = due_one_off()
    scheduler = leader(connection)
    original = ScheduledJobAdmin.save_model

    def run_then_save(self, request, obj, form, change):
        scheduler.move_due_jobs()  # the loop moves the job and writes its feedback while the POST is handled
        apply_feedback(connection)
        original(self, request, obj, form, change)

    monkeypatch.setattr(ScheduledJobAdmin, 'save_model', run_then_save)
    response = edit_in_the_admin(client, row)
    assert response.status_code == 302, response.content.decode()[:2000]
    scheduler.move_due_jobs()
    reconcile()
    scheduler.move_due_jobs()
    assert queued(connection) == [row.template_id]
    row = ScheduledJob.objects.get()
    assert row.has_run and row.description == 'edited in the admin'


# -- reconciliation racing the loop ------------------------------------------------------------------------------


def test_a_move_landing_between_reconciles_reads_does_not_resurrect_the_one_off(connection, monkeypatch):
    row = due_one_off()
    scheduler = leader(connection)
    original = sync._read_templates
    calls = []

    def torn_read(scheduler_, ids):
        stored = original(scheduler_, ids)
        if not calls:
            # The loop moves the one-off after reconciliation read the version and before it read the score: it
            # sees the old version and no score, as the chaos soak found in Redis's AOF.
            scheduler.move_due_jobs()
            stored = [sync._Stored(state.version, None, state.raw_meta) for state in stored]
        calls.append(ids)
        return stored

    monkeypatch.setattr(sync, '_read_templates', torn_read)
    report = reconcile()
    assert row.template_id not in report.written
    monkeypatch.undo()
    scheduler.move_due_jobs()
    assert queued(connection) == [row.template_id]
    assert row.template_id not in scheduled_ids(connection)


def test_reconciliation_racing_the_loop_never_runs_a_one_off_twice(connection):
    start = datetime.now(UTC)
    ScheduledJob.objects.bulk_create(
        [
            ScheduledJob(
                name=f'race-{n}', callable='tests.tasks.add', scheduled_time=start + timedelta(milliseconds=5 * n)
            )
            for n in range(200)
        ]
    )
    scheduler = leader(connection)
    stop = threading.Event()

    def reconcile_all_the_time():
        while not stop.is_set():
            reconcile()
        db_connection.close()

    racer = threading.Thread(target=reconcile_all_the_time)
    racer.start()
    try:
        deadline = start + timedelta(seconds=5)
        while datetime.now(UTC) < deadline:
            scheduler.move_due_jobs()
            threading.Event().wait(0.002)
    finally:
        stop.set()
        racer.join(30)
    scheduler.move_due_jobs()
    ids = queued(connection)
    assert len(ids) == len(set(ids)) == 200


def test_a_periodic_template_moved_between_the_read_and_the_write_gets_the_edit_on_the_next_attempt(
    connection, monkeypatch
):
    row = RepeatableJob.objects.create(
        name='tick', callable='tests.tasks.add', scheduled_time=datetime.now(UTC) + timedelta(seconds=0.3),
        interval=1, interval_unit='hours',
    )  # fmt: skip
    scheduler = leader(connection)
    threading.Event().wait(0.4)
    original = sync._read_templates
    calls = []

    def move_after_first_read(scheduler_, ids):
        stored = original(scheduler_, ids)
        if not calls:
            scheduler.move_due_jobs()  # the template moves on to its next slot under the sync
        calls.append(ids)
        return stored

    monkeypatch.setattr(sync, '_read_templates', move_after_first_read)
    row.description = 'new'
    row.save()
    assert len(calls) == 2  # the first write found the template changed, the second one applied
    [template] = scheduler.get_jobs()
    assert template.description == 'new'
    assert len(queued(connection)) == 1


# -- rows and run records written behind the models' back -------------------------------------------------------


BAD_ROWS_SQL = [
    ('kwargs', '["a", "list"]'),
    ('args', '{"an": "object"}'),
    ('callable', 'os.system'),
    ('callable', 'tests.tasks.os.system'),
    ('queue', 'nowhere'),
    ('interval_unit', 'eons'),  # fits the column on every database
    ('interval', 2**31 - 1),  # weeks: the next slot lies beyond what a datetime holds
]


@pytest.mark.parametrize(('column', 'value'), BAD_ROWS_SQL, ids=[f'{c}={v}' for c, v in BAD_ROWS_SQL])
def test_one_bad_row_never_stops_the_reconciliation_of_the_others(connection, settings, column, value, caplog):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    start = datetime.now(UTC) - timedelta(hours=1)
    bad, *healthy = [
        RepeatableJob.objects.create(
            name=f'row-{n}', callable='tests.tasks.add', scheduled_time=start, interval=5, interval_unit='minutes'
        )
        for n in range(4)
    ]
    with db_connection.cursor() as cursor:
        table = RepeatableJob._meta.db_table
        cursor.execute(f'UPDATE {table} SET {column} = %s WHERE id = %s', [value, bad.pk])
        if column == 'interval':
            cursor.execute(f"UPDATE {table} SET interval_unit = 'weeks' WHERE id = %s", [bad.pk])
    connection.flushall()
    with caplog.at_level(logging.WARNING):
        report = reconcile()
    assert sorted(report.written) == sorted(row.template_id for row in healthy)
    assert bad.template_id not in scheduled_ids(connection)
    assert bad.name in caplog.text or bad.template_id in caplog.text or str(bad.pk) in caplog.text


def test_a_bad_row_changed_after_it_was_scheduled_loses_its_template(connection, settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    row = RepeatableJob.objects.create(
        name='hijacked', callable='tests.tasks.add', scheduled_time=datetime.now(UTC) + timedelta(hours=1),
        interval=5, interval_unit='minutes',
    )  # fmt: skip
    with db_connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {RepeatableJob._meta.db_table} SET callable = %s WHERE id = %s',
            ['tests.tasks.os.system', row.pk],
        )
    reconcile()
    assert row.template_id not in scheduled_ids(connection)


BAD_RECORDS = [
    b'not json',
    b'[1, 2]',
    b'{"owner": null, "runs": 1}',
    b'{"owner": "django_rq_scheduled.nomodel:1", "runs": 1}',
    b'{"owner": "django_rq_scheduled.scheduledjob:abc", "runs": 1}',
    b'{"owner": "django_rq_scheduled.scheduledjob:1", "runs": "one"}',
    b'{"owner": "django_rq_scheduled.scheduledjob:1", "runs": 1e30}',
    b'{"owner": "django_rq_scheduled.scheduledjob:1", "runs": 99999999999999}',
    b'{"owner": "django_rq_scheduled.scheduledjob:1", "runs": 1, "next": 1e300}',
    b'{"owner": "django_rq_scheduled.scheduledjob:1", "runs": 1, "job": "x", "at": "noon"}',
    b'\xff\xfe',
]


@pytest.mark.parametrize('record', BAD_RECORDS, ids=[repr(r)[:50] for r in BAD_RECORDS])
def test_one_bad_run_record_never_stops_the_feedback_of_the_others(connection, record):
    row = due_one_off()
    scheduler = leader(connection)
    connection.rpush(keys.RUNS_KEY, record)  # before the good one
    scheduler.move_due_jobs()
    assert apply_feedback(connection) == 2
    assert connection.llen(keys.RUNS_KEY) == 0
    row.refresh_from_db()
    assert row.has_run and row.run_count == 1


def test_a_record_for_a_deleted_row_is_dropped(connection):
    row = due_one_off()
    scheduler = leader(connection)
    scheduler.move_due_jobs()
    ScheduledJob.objects.all().delete()
    assert apply_feedback(connection) == 1
    assert connection.llen(keys.RUNS_KEY) == 0
    assert row.template_id


def test_feedback_records_trimmed_by_someone_else_are_not_trimmed_twice(connection):
    due_one_off('a')
    due_one_off('b')
    scheduler = leader(connection)
    scheduler.move_due_jobs()
    records = connection.lrange(keys.RUNS_KEY, 0, -1)
    connection.ltrim(keys.RUNS_KEY, 1, -1)  # a deposed leader trimmed the first one meanwhile
    connection.rpush(keys.RUNS_KEY, json.dumps({'owner': 'django_rq_scheduled.scheduledjob:999', 'runs': 0}))
    assert len(records) == 2
    apply_feedback(connection)  # reads [b, new]; trims exactly those two
    assert connection.llen(keys.RUNS_KEY) == 0


# -- run now ------------------------------------------------------------------------------------------------------


def test_run_now_refuses_a_row_changed_behind_the_models_back(connection, settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    row = due_one_off()
    with db_connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {ScheduledJob._meta.db_table} SET callable = %s WHERE id = %s',
            ['os.system', row.pk],
        )
    with pytest.raises(ValidationError, match='not allowed'):
        row.run_now()  # the instance still says tests.tasks.add: the database is what counts
    assert queued(connection) == []


def test_run_now_refuses_an_unsaved_row(connection):
    with pytest.raises(ValidationError, match='Save'):
        ScheduledJob(name='unsaved', callable='os.system', scheduled_time=datetime.now(UTC)).run_now()
    assert queued(connection) == []


def test_the_admin_run_now_action_reports_a_refused_row_and_runs_the_others(connection, settings, client):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    good, bad = due_one_off('good'), due_one_off('bad')
    with db_connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {ScheduledJob._meta.db_table} SET callable = %s WHERE id = %s',
            ['tests.tasks.os.system', bad.pk],
        )
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    url = reverse('admin:django_rq_scheduled_scheduledjob_changelist')
    response = client.post(url, {'action': 'run_selected_now', '_selected_action': [good.pk, bad.pk]}, follow=True)
    page = response.content.decode()
    assert 'was not run' in page and '1 run enqueued' in page
    assert [job_id.split('_now_')[0] for job_id in queued(connection)] == [good.template_id]


def test_a_paused_reader_with_older_records_never_writes_the_run_count_back(connection):
    row = RepeatableJob.objects.create(
        name='counted', callable='tests.tasks.add', scheduled_time=datetime.now(UTC), interval=1,
        interval_unit='hours', repeat=8,
    )  # fmt: skip
    older = json.dumps({'owner': row.owner, 'runs': 7, 'next': None, 'job': 'x', 'at': 1.0, 'fire_time': 1.0})
    RepeatableJob.objects.filter(pk=row.pk).record_feedback(run_count=8)  # a newer reader got there first
    connection.rpush(keys.RUNS_KEY, older)
    apply_feedback(connection)
    assert RepeatableJob.objects.get().run_count == 8


def test_a_stuck_database_never_blocks_the_loops_tick(connection, monkeypatch):
    from django_rq_scheduled.feedback import DatabaseSync

    stuck, entered = threading.Event(), threading.Event()

    def locked_database(*args, **kwargs):
        entered.set()
        stuck.wait(30)  # SQLite locked by a paused process, say
        return 0

    monkeypatch.setattr(feedback, 'apply_feedback', locked_database)
    hook = DatabaseSync(reconcile_interval=3600)
    scheduler = leader(connection)
    hook(scheduler)  # returns at once: the round runs in its own thread
    assert entered.wait(10)
    hook(scheduler)  # still stuck: this tick starts nothing more and returns
    stuck.set()
    hook.wait(10)


def _in_thread(function, *args):
    """Runs ``function`` in a thread of its own, hence on a database connection of its own."""
    from django.db import connections

    def run():
        try:
            function(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize('order', ['feedback-commits-first', 'admin-updates-first'])
def test_an_admin_save_and_the_leaders_feedback_on_another_connection_both_land(connection, client, monkeypatch, order):
    if db_connection.vendor != 'postgresql':
        pytest.skip('two connections writing one row at once: PostgreSQL (runtests.py runs this module there)')
    row = due_one_off()
    leader(connection).move_due_jobs()  # the run's record waits in Redis for the leader's feedback
    original = ScheduledJobAdmin.save_model
    racers = []

    def save_racing_the_feedback(self, request, obj, form, change):
        if order == 'feedback-commits-first':
            _in_thread(apply_feedback, connection).join(30)  # lands between the admin's read and its UPDATE
            original(self, request, obj, form, change)
        else:
            original(self, request, obj, form, change)  # the UPDATE locks the row until the POST commits
            racers.append(_in_thread(apply_feedback, connection))  # waits on that lock

    monkeypatch.setattr(ScheduledJobAdmin, 'save_model', save_racing_the_feedback)
    response = edit_in_the_admin(client, row)
    assert response.status_code == 302
    for racer in racers:
        racer.join(30)
    row = ScheduledJob.objects.get()
    assert row.description == 'edited in the admin' and row.has_run and row.run_count == 1
    reconcile()
    assert queued(connection) == [row.template_id]
