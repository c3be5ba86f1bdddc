"""The models on a real Redis: validation at every entry point, sync after commit, bulk paths, the ORM API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from django.core import serializers
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction

from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from tests import tasks

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc


def scheduled(connection):
    return {m.decode(): s for m, s in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1, withscores=True)}


def template(connection, row):
    return fetch_template(connection, row.template_id)


def make_cron(**overrides):
    values = {
        'name': 'report',
        'callable': tasks.record,
        'args': ['report'],
        'cron_string': '0 7 * * 1-5',
        'timezone': 'Europe/Paris',
    }
    return CronJob.objects.create(**{**values, **overrides})


def test_creating_a_row_schedules_its_template(connection):
    row = make_cron()
    assert row.callable == 'tests.tasks.record'  # a function is stored as its dotted path
    entries = scheduled(connection)
    assert list(entries) == [row.template_id]
    due = datetime.fromtimestamp(entries[row.template_id], tz=ZoneInfo('Europe/Paris'))
    assert (due.hour, due.minute) == (7, 0) and due.isoweekday() <= 5
    job = template(connection, row)
    assert job.meta['cron_string'] == '0 7 * * 1-5'
    assert job.meta[keys.META_KEY]['owner'] == f'django_rq_scheduled.cronjob:{row.pk}'
    assert job.args == ('report',)
    row.refresh_from_db()
    assert row.next_run == datetime.fromtimestamp(entries[row.template_id], tz=UTC)
    assert connection.hget(keys.VERSIONS_KEY, row.template_id).decode() == row.version()


def test_a_rolled_back_transaction_changes_nothing_in_redis(connection):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_cron()
        raise RuntimeError('rollback')
    assert CronJob.objects.count() == 0
    assert connection.dbsize() == 0


def test_sync_waits_for_the_commit(connection):
    with transaction.atomic():
        make_cron()
        assert connection.dbsize() == 0
    assert len(scheduled(connection)) == 1


def test_editing_takes_effect_for_the_next_run_without_duplicates(connection):
    row = make_cron()
    row.cron_string = '30 8 * * *'
    row.args = ['changed']
    row.queue = 'high'
    row.save()
    entries = scheduled(connection)
    assert list(entries) == [row.template_id]
    due = datetime.fromtimestamp(entries[row.template_id], tz=ZoneInfo('Europe/Paris'))
    assert (due.hour, due.minute) == (8, 30)
    job = template(connection, row)
    assert job.args == ('changed',) and job.origin == 'high'


def test_saving_an_unchanged_row_writes_nothing(connection):
    row = make_cron()
    before = connection.hgetall(keys.job_key(row.template_id))
    row.save()
    assert connection.hgetall(keys.job_key(row.template_id)) == before


def test_disable_enable_delete(connection):
    row = make_cron()
    row.disable()
    assert scheduled(connection) == {}
    assert not connection.exists(keys.job_key(row.template_id))
    row.refresh_from_db()
    assert row.enabled is False and row.next_run is None
    row.enable()
    assert list(scheduled(connection)) == [row.template_id]
    row.delete()
    assert scheduled(connection) == {}
    assert not connection.hexists(keys.VERSIONS_KEY, row.template_id)


def test_queryset_bulk_paths_sync_what_they_touch(connection):
    rows = CronJob.objects.bulk_create(
        [CronJob(name=f'c{i}', callable='tests.tasks.add', args=[i, i], cron_string='*/5 * * * *') for i in range(50)]
    )
    assert len(scheduled(connection)) == 50
    CronJob.objects.filter(name__in=['c1', 'c2']).update(enabled=False)
    assert len(scheduled(connection)) == 48
    for row in rows[:3]:
        row.cron_string = '0 0 * * *'
    CronJob.objects.bulk_update(rows[:3], ['cron_string'])
    assert template(connection, rows[0]).meta['cron_string'] == '0 0 * * *'
    CronJob.objects.filter(name__startswith='c').delete()
    assert scheduled(connection) == {}


def test_api_and_rq_scheduler_entries_are_never_touched(connection):
    from django_rq_scheduled import Scheduler

    Scheduler(connection=connection).enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), tasks.add, job_id='api-job')
    row = make_cron()
    row.delete()
    from django_rq_scheduled.sync import reconcile

    reconcile()
    assert list(scheduled(connection)) == ['api-job']


BAD_VALUES = [
    ('callable', 'tests.tasks.nope', 'callable'),
    ('callable', 'nodots', 'callable'),
    ('callable', 'tests.tasks.TRACE_KEY', 'callable'),
    ('args', {'a': 1}, 'args'),
    ('args', 'oops', 'args'),
    ('kwargs', [1, 2], 'kwargs'),
    ('kwargs', {'not an identifier': 1}, 'kwargs'),
    ('queue', 'nope', 'queue'),
    ('cron_string', '61 * * * *', 'cron_string'),
    ('cron_string', '0 0 31 2 *', 'cron_string'),
    ('timezone', 'Mars/Base', 'timezone'),
    ('repeat', 0, 'repeat'),
    ('timeout', 0, 'timeout'),
    ('result_ttl', -5, 'result_ttl'),
]


def bad_values(field, value):
    return {'name': 'bad', 'callable': 'tests.tasks.add', 'cron_string': '* * * * *', field: value}


@pytest.mark.parametrize(('field', 'value', 'error_field'), BAD_VALUES)
def test_bad_values_are_refused_by_full_clean_and_create(connection, field, value, error_field):
    with pytest.raises(ValidationError) as excinfo:
        CronJob(**bad_values(field, value)).full_clean()
    assert error_field in excinfo.value.message_dict
    with pytest.raises(ValidationError):
        CronJob.objects.create(**bad_values(field, value))
    with pytest.raises(ValidationError):
        CronJob.objects.bulk_create([CronJob(**bad_values(field, value))])
    assert CronJob.objects.count() == 0
    assert connection.dbsize() == 0


LIST_NEEDED = 'Positional arguments must be a JSON list, e.g. [1, "a"]; got {}.'
OBJECT_NEEDED = 'Keyword arguments must be a JSON object, e.g. {{"name": "value"}}; got {}.'
ARGUMENTS_OF_THE_WRONG_TYPE = [
    ('args', {'a': 1}, LIST_NEEDED.format('an object')),
    ('args', {}, LIST_NEEDED.format('an object')),  # empty: Django skips its validators, the model does not
    ('args', 'oops', LIST_NEEDED.format('a string')),
    ('args', 3, LIST_NEEDED.format('a number')),
    ('args', True, LIST_NEEDED.format('true or false')),
    ('args', (1, 2), LIST_NEEDED.format('a Python tuple')),
    ('kwargs', [1, 2], OBJECT_NEEDED.format('a list')),
    ('kwargs', [], OBJECT_NEEDED.format('a list')),
    ('kwargs', 1.5, OBJECT_NEEDED.format('a number')),
    ('kwargs', {'not an identifier': 1}, "Keyword argument names must be identifiers; not 'not an identifier'."),
]


@pytest.mark.parametrize(('field', 'value', 'message'), ARGUMENTS_OF_THE_WRONG_TYPE)
def test_arguments_of_the_wrong_json_type_say_what_is_needed_once(field, value, message):
    with pytest.raises(ValidationError) as excinfo:
        CronJob(**bad_values(field, value)).full_clean()
    assert excinfo.value.message_dict[field] == [message]


@pytest.mark.parametrize(('field', 'value', 'error_field'), BAD_VALUES)
def test_bad_values_are_refused_by_update_and_bulk_update(connection, field, value, error_field):
    row = make_cron()
    before = connection.hgetall(keys.job_key(row.template_id))
    with pytest.raises(ValidationError):
        CronJob.objects.filter(pk=row.pk).update(**{field: value})
    setattr(row, field, value)
    with pytest.raises(ValidationError):
        CronJob.objects.bulk_update([row], [field])
    fresh = CronJob.objects.get(pk=row.pk)
    assert getattr(fresh, field) != value
    assert connection.hgetall(keys.job_key(row.template_id)) == before


def test_bad_values_are_refused_by_loaddata(connection, tmp_path):
    fixture = tmp_path / 'bad.json'
    fixture.write_text(
        json.dumps(
            [
                {
                    'model': 'django_rq_scheduled.cronjob',
                    'fields': {'name': 'bad', 'callable': 'tests.tasks.add', 'cron_string': '99 * * * *'},
                }
            ]
        )
    )
    with pytest.raises(ValidationError):
        call_command('loaddata', str(fixture), verbosity=0)
    assert CronJob.objects.count() == 0
    assert connection.dbsize() == 0


def test_naive_one_off_time_is_refused_when_use_tz_is_on(connection):
    with pytest.raises(ValidationError) as excinfo:
        ScheduledJob.objects.create(name='naive', callable='tests.tasks.add', scheduled_time=datetime(2030, 1, 1))
    assert 'scheduled_time' in excinfo.value.message_dict


def test_interval_must_be_positive(connection):
    with pytest.raises(ValidationError) as excinfo:
        RepeatableJob.objects.create(
            name='r', callable='tests.tasks.add', scheduled_time=datetime.now(UTC), interval=0, interval_unit='minutes'
        )
    assert 'interval' in excinfo.value.message_dict


def test_database_constraints_back_the_validation(connection):
    from django.db.models import QuerySet

    with pytest.raises(IntegrityError), transaction.atomic():
        QuerySet(RepeatableJob).bulk_create(  # bypasses the app's validation on purpose
            [
                RepeatableJob(
                    name='r', callable='tests.tasks.add', scheduled_time=datetime.now(UTC), interval=5, repeat=0
                )
            ]
        )


def test_allowed_callables(connection, settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    make_cron(name='ok', callable='tests.tasks.add')
    with pytest.raises(ValidationError) as excinfo:
        make_cron(name='no', callable='tests.tasks.record')
    assert 'ALLOWED_CALLABLES' in str(excinfo.value)


def test_fixtures_use_natural_keys_and_loading_schedules(connection, tmp_path):
    make_cron(name='daily')
    data = serializers.serialize('json', CronJob.objects.all(), use_natural_primary_keys=True)
    assert '"pk"' not in data
    CronJob.objects.all().delete()
    assert scheduled(connection) == {}
    fixture = tmp_path / 'schedules.json'
    fixture.write_text(data)
    call_command('loaddata', str(fixture), verbosity=0)
    row = CronJob.objects.get_by_natural_key('daily')
    assert list(scheduled(connection)) == [row.template_id]


def test_one_off_and_repeatable_first_run_in_the_past_run_at_once(connection):
    past = ScheduledJob.objects.create(
        name='late', callable='tests.tasks.add', args=[1, 2], scheduled_time=datetime.now(UTC) - timedelta(hours=1)
    )
    assert scheduled(connection)[past.template_id] <= datetime.now(UTC).timestamp()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=95)
    every = RepeatableJob.objects.create(
        name='every', callable='tests.tasks.add', scheduled_time=start, interval=1, interval_unit='minutes', repeat=3
    )
    # Its latest slot, due at once; tests/test_first_runs.py says more.
    assert scheduled(connection)[every.template_id] == (start + timedelta(minutes=1)).timestamp()
    assert template(connection, every).meta['repeat'] == 3


def test_orm_helpers(connection):
    soon = make_cron(name='soon', cron_string='* * * * *')
    later = make_cron(name='later', cron_string='0 0 1 1 *')
    later.disable()
    assert list(CronJob.objects.enabled()) == [soon]
    assert list(CronJob.objects.due_before(datetime.now(UTC) + timedelta(minutes=2))) == [soon]
    runs = later.next_runs(3)
    assert [r.astimezone(ZoneInfo('Europe/Paris')).month for r in runs] == [1, 1, 1]
    job = soon.run_now()
    assert connection.lrange('rq:queue:default', 0, -1) == [job.id.encode()]
    assert soon.template_id in scheduled(connection)  # the next scheduled run did not move
    soon.refresh_from_db()
    assert soon.last_run is not None


def test_str_makes_no_queries(django_assert_num_queries, connection):
    row = make_cron()
    with django_assert_num_queries(0):
        assert str(row) == 'report'


def test_migrations_are_up_to_date():
    call_command('makemigrations', 'django_rq_scheduled', '--check', '--dry-run', verbosity=0)


def test_editing_a_row_whose_run_is_overdue_keeps_that_run(connection):
    row = make_cron(cron_string='*/5 * * * *')
    overdue = datetime.now(UTC).timestamp() - 30  # the loop was down when it was due
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {row.template_id: overdue})
    row.description = 'edited while the scheduler was down'
    row.save()
    assert scheduled(connection)[row.template_id] == pytest.approx(overdue)
    assert template(connection, row).description == 'edited while the scheduler was down'


def test_a_redis_outage_does_not_fail_the_save_and_reconciliation_repairs_it(connection, settings, caplog):
    from django_rq_scheduled.sync import reconcile

    real = settings.RQ_QUEUES
    settings.RQ_QUEUES = {name: {'URL': 'redis://127.0.0.1:1/0'} for name in real}  # nothing listens there
    row = make_cron(name='during-outage')
    assert CronJob.objects.filter(pk=row.pk).exists()
    assert 'could not bring them into Redis' in caplog.text and 'next reconciliation' in caplog.text
    settings.RQ_QUEUES = real
    assert reconcile().written == [row.template_id]
