"""The loop's bulk reads and writes (``django_rq_scheduled.bulk``) store and read back exactly what the ORM does,
datetimes included, on SQLite's shortcut and on PostgreSQL (runtests.py runs this module there too)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.db.models import QuerySet

from django_rq_scheduled.bulk import BulkWriter
from django_rq_scheduled.models import RepeatableJob, Run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures('redis_url')]

UTC = timezone.utc
MOMENTS = [
    datetime(2026, 11, 27, 17, 0, tzinfo=UTC),  # no microseconds: str() leaves them out
    datetime(2026, 11, 27, 17, 0, 0, 123_456, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(9000, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 7, 14, 9, 30, tzinfo=ZoneInfo('Europe/Paris')),  # aware, not UTC: the ORM's own conversion
    datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    None,
]


def a_schedule(name='s'):
    return RepeatableJob.objects.create(
        name=name, callable='tests.tasks.add', interval=1, interval_unit='hours',
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def run_fields(row, number, moment):
    kind = ContentType.objects.get_for_model(RepeatableJob).pk
    return {
        'rq_job_id': f'{row.template_id}_at_{number}', 'schedule_type_id': kind, 'schedule_id': row.pk,
        'schedule_name': 'ünïcødé', 'trigger': 'schedule', 'status': 'queued', 'reason': '', 'queue': 'default',
        'fire_time': moment, 'enqueued_at': moment, 'started_at': None, 'ended_at': moment, 'worker': '',
        'error': 'E: x\n' * 3, 'delay': (None, 0.25, 3, 1e-9)[number % 4],  # an int: the float column's own conversion
    }  # fmt: skip


class Values:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def test_rows_inserted_in_bulk_read_back_through_the_orm_as_written():
    row = a_schedule()
    written = [run_fields(row, number, moment) for number, moment in enumerate(MOMENTS)]
    names = list(written[0])
    with transaction.atomic():
        BulkWriter('default').insert(Run, [Values(**fields) for fields in written], names)
    for fields in written:
        stored = Run.objects.get(rq_job_id=fields['rq_job_id'])
        assert {name: getattr(stored, name) for name in names} == fields


def test_bulk_reads_give_what_the_orm_gives():
    row = a_schedule()
    Run.objects.bulk_create(Run(**run_fields(row, number, moment)) for number, moment in enumerate(MOMENTS))
    names = ['id', 'rq_job_id', 'schedule_type_id', 'schedule_id', 'fire_time', 'ended_at', 'started_at', 'error']
    ids = list(Run.objects.values_list('rq_job_id', flat=True))
    with transaction.atomic():
        read = list(BulkWriter('default').read(Run, names, where='rq_job_id', values=ids, for_update=True))
    assert sorted(map(tuple, read)) == sorted(Run.objects.values_list(*names))
    assert all(value.tzinfo is not None for values in read for value in values if isinstance(value, datetime))


def test_bulk_reads_take_more_keys_than_one_query_holds():
    row = a_schedule()
    Run.objects.bulk_create(Run(**run_fields(row, number, None)) for number in range(1_203))
    wanted = [f'{row.template_id}_at_{number}' for number in range(1_203)] + ['absent']
    found = list(BulkWriter('default').read(Run, ['rq_job_id'], where='rq_job_id', values=wanted))
    assert sorted(values[0] for values in found) == sorted(wanted[:-1])


@pytest.mark.skipif(connection.vendor != 'sqlite', reason="SQLite's own text of datetimes")
def test_the_sqlite_shortcut_writes_the_text_django_writes():
    row = a_schedule()
    for number, moment in enumerate(MOMENTS):
        delay = run_fields(row, number, moment)['delay']
        Run.objects.create(**{**run_fields(row, 2 * number, moment), 'delay': delay})
        with transaction.atomic():
            fields = {**run_fields(row, 2 * number + 1, moment), 'delay': delay}
            BulkWriter('default').insert(Run, [Values(**fields)], list(fields))
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT CAST(fire_time AS TEXT), delay FROM {Run._meta.db_table} ORDER BY id')
        stored = cursor.fetchall()
    assert stored[2] == stored[3] == ('2026-11-27 17:00:00.123456', 0.25)
    assert stored[0::2] == stored[1::2]  # the ORM's text and the shortcut's, moment by moment


def test_rows_read_in_bulk_are_the_instances_the_orm_makes():
    row = a_schedule()
    summary = {'recent_runs': [[1, 'failed']], 'last_failure_at': MOMENTS[1]}
    QuerySet(RepeatableJob).filter(pk=row.pk).update(**summary)  # fields the loop alone writes
    names = ['name', 'queue', 'recent_runs', 'last_failure_at', 'consecutive_failures']
    with transaction.atomic():
        (read,) = BulkWriter('default').read_rows(RepeatableJob, names, [row.pk, row.pk + 1000], for_update=True)
    orm = RepeatableJob.objects.only(*names).get(pk=row.pk)
    assert type(read) is RepeatableJob
    assert {name: getattr(read, name) for name in ['pk', *names]} == {
        name: getattr(orm, name) for name in ['pk', *names]
    }
    assert (read._state.adding, read._state.db) == (orm._state.adding, orm._state.db) == (False, 'default')
    assert read.get_deferred_fields() == orm.get_deferred_fields()
    assert read.callable == 'tests.tasks.add'  # a deferred field, read when first used


def test_rows_read_in_bulk_are_made_by_from_db_for_the_receivers_of_post_init():
    from django.db.models.signals import post_init

    row = a_schedule()
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.name)

    post_init.connect(receiver, sender=RepeatableJob)
    try:
        (read,) = BulkWriter('default').read_rows(RepeatableJob, ['name'], [row.pk])
    finally:
        post_init.disconnect(receiver, sender=RepeatableJob)
    assert seen == ['s'] and read.name == 's' and not read._state.adding


def insert_keyed(rows):
    with transaction.atomic():
        Run.objects.filter(pk=-1).update(status='queued')  # the writer's lock, as history takes it
        BulkWriter('default').insert_keyed(Run, rows, [*rows[0].__dict__.keys() - {'pk'}], key='rq_job_id')


def test_rows_inserted_keyed_get_the_keys_the_database_holds_for_them():
    row = a_schedule()
    first = [Values(pk=None, **run_fields(row, number, MOMENTS[0])) for number in range(1_200)]
    insert_keyed(first)
    assert {value.rq_job_id: value.pk for value in first} == dict(Run.objects.values_list('rq_job_id', 'pk'))
    assert len({value.pk for value in first}) == 1_200


def test_rows_inserted_keyed_never_take_a_key_a_deleted_run_held():
    """As the database's own numbering: a run's page or a link to it never shows another run later (SQLite's
    AUTOINCREMENT remembers the largest key ever given, even once its row is deleted)."""
    row = a_schedule()
    insert_keyed([Values(pk=None, **run_fields(row, number, MOMENTS[0])) for number in range(10)])
    largest = Run.objects.order_by('-pk').values_list('pk', flat=True)[0]
    Run.objects.filter(pk__gt=largest - 5).delete()
    later = [Values(pk=None, **run_fields(row, number, MOMENTS[1])) for number in range(10, 13)]
    insert_keyed(later)
    assert min(value.pk for value in later) > largest
    assert {value.rq_job_id: value.pk for value in later} == dict(
        Run.objects.filter(pk__gt=largest).values_list('rq_job_id', 'pk')
    )
    made_by_the_orm = Run.objects.create(**run_fields(row, 99, MOMENTS[0]))
    assert made_by_the_orm.pk == max(value.pk for value in later) + 1


def test_rows_inserted_keyed_come_after_a_key_someone_else_chose():
    """A run written with a key of its own (raw SQL, a restore) is never overwritten or collided with."""
    row = a_schedule()
    foreign = Run.objects.create(id=10_000, **run_fields(row, 0, MOMENTS[0]))
    later = [Values(pk=None, **run_fields(row, number, MOMENTS[1])) for number in range(1, 4)]
    insert_keyed(later)
    assert {value.rq_job_id: value.pk for value in later} == dict(
        Run.objects.exclude(pk=10_000).values_list('rq_job_id', 'pk')
    )
    if connection.vendor == 'sqlite':  # after the largest key ever held, in order (earlier tests may hold more)
        first = later[0].pk
        assert first > 10_000 and [value.pk for value in later] == [first, first + 1, first + 2]
    assert Run.objects.get(pk=10_000).rq_job_id == foreign.rq_job_id
    assert Run.objects.count() == 4


JSON_VALUES = [[], [[1, 'failed'], [2, 'succeeded']], [[10**12, 'ünïcødé "q" \\ \u2028']], {'a': [1, 2.5, None, True]}]


@pytest.mark.parametrize('value', JSON_VALUES)
def test_json_written_and_read_in_bulk_is_what_the_orm_writes_and_reads(value):
    """The shortcut of plain JSON fields (``json.dumps`` and ``json.loads`` called directly where the database stores
    their text) against the ORM's own path, on each database."""
    orm_row, bulk_row = a_schedule('orm'), a_schedule('bulk')
    QuerySet(RepeatableJob).filter(pk=orm_row.pk).update(recent_runs=value)
    bulk_row.recent_runs = value
    with transaction.atomic():
        BulkWriter('default').update(RepeatableJob, [bulk_row], ['recent_runs'])
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT CAST(recent_runs AS TEXT) FROM {RepeatableJob._meta.db_table} ORDER BY id')
        stored = [text for (text,) in cursor.fetchall()]
    assert stored[0] == stored[1]
    with transaction.atomic():
        read = list(BulkWriter('default').read_rows(RepeatableJob, ['recent_runs'], [orm_row.pk, bulk_row.pk]))
    assert (
        [row.recent_runs for row in read]
        == [value, value]
        == [row.recent_runs for row in RepeatableJob.objects.filter(pk__in=[orm_row.pk, bulk_row.pk])]
    )
