"""``bulk_create()`` validates each distinct definition once (``bulk_validation``), and still refuses every invalid
row as ``full_clean()`` would: the whole bulk, naming the field and the row, with nothing written to the database
or Redis. A row that shares a valid row's values but one must never pass on the other's verdict."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from django_rq_scheduled import bulk_validation, pending, sync
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from django_rq_scheduled.reconciliation import Reconciler
from django_rq_scheduled.unsynced import UnsyncedRow
from tests import tasks

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
DUE = datetime.now(UTC) + timedelta(hours=1)


def one_offs(count, prefix='o', **fields):
    values = {'callable': 'tests.tasks.add', 'args': [1, 2], 'scheduled_time': DUE, **fields}
    return [ScheduledJob(name=f'{prefix}{i}', **values) for i in range(count)]


def scheduled_ids(connection):
    return {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}


# One value each that full_clean() refuses, given to one row among valid rows that share every other value.
BAD_VALUES = [
    ('callable', 'tests.tasks.nope'),
    ('callable', 'tests.tasks.redis'),  # importable, not a function
    ('args', {'a': 1}),
    ('args', [float('nan')]),
    ('args', [True, 'x\x00']),
    ('kwargs', {'not an identifier': 1}),
    ('kwargs', []),
    ('queue', 'nowhere'),
    ('timeout', 0),
    ('timeout', -5),
    ('timeout', True),  # equal to 1 in Python, refused by the rules
    ('timeout', 2**40),
    ('result_ttl', -2),
    ('retries', 10**6),
    ('retry_delays', [-1]),
    ('misfire_grace', 1.5),
    ('overlap', 'sometimes'),
    ('enabled', None),
    ('description', 'x' * 300),
    ('name', 'line\nbreak'),
    ('name', 'n' * 200),
    ('name', ''),
    ('scheduled_time', datetime(2026, 1, 1)),  # naive while USE_TZ is on
    ('scheduled_time', datetime(1, 1, 1, tzinfo=UTC)),
    ('scheduled_time', '2026-01-01'),
]


@pytest.mark.parametrize(('field', 'value'), BAD_VALUES, ids=[f'{field}-{value!r:.20}' for field, value in BAD_VALUES])
def test_one_invalid_row_among_valid_ones_refuses_the_bulk_naming_field_and_row(connection, field, value):
    rows = one_offs(5)
    setattr(rows[3], field, value)
    with pytest.raises(ValidationError) as refused:
        ScheduledJob.objects.bulk_create(rows)
    assert field in refused.value.message_dict
    assert all(message.startswith('row 3 ') for message in refused.value.message_dict[field])
    assert ScheduledJob.objects.count() == 0 and connection.dbsize() == 0
    assert pending.take_validated(ScheduledJob) == frozenset()


@pytest.mark.parametrize(('field', 'value'), BAD_VALUES, ids=[f'{field}-{value!r:.20}' for field, value in BAD_VALUES])
def test_the_bulk_refuses_what_full_clean_refuses_with_the_same_messages(field, value):
    row = one_offs(1)[0]
    setattr(row, field, value)
    with pytest.raises(ValidationError) as alone:
        row.full_clean(validate_unique=False, validate_constraints=False)
    rows = one_offs(3)
    setattr(rows[2], field, value)
    with pytest.raises(ValidationError) as in_bulk:
        bulk_validation.validate_rows(rows)
    label = f'row 2 ({rows[2].name!r:.80})'
    expected = [f'{label}: {message}' for message in alone.value.message_dict[field]]
    assert in_bulk.value.message_dict[field] == expected


def test_rows_equal_in_python_but_not_to_the_rules_are_each_validated():
    """1 == 1.0 == True: the shared values are compared by type as well."""
    rows = [*one_offs(2, timeout=1), *one_offs(1, prefix='b', timeout=True)]
    with pytest.raises(ValidationError) as refused:
        bulk_validation.validate_rows(rows)
    assert list(refused.value.message_dict) == ['timeout']
    nested = [*one_offs(2, args=[[1, {'a': 1}]]), *one_offs(1, prefix='b', args=[[1, {'a': 1.0}]])]
    assert bulk_validation.validate_rows(nested)  # both valid: validated apart, each its own version
    assert len(bulk_validation.validate_rows(nested)) == 2


def test_a_second_definition_is_validated_on_its_own(connection, settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    rows = [*one_offs(3), *one_offs(3, prefix='m', callable='tests.tasks.multiply')]
    with pytest.raises(ValidationError) as refused:
        ScheduledJob.objects.bulk_create(rows)
    assert list(refused.value.message_dict) == ['callable']
    assert refused.value.message_dict['callable'][0].startswith("row 3 ('m0'): ")
    assert ScheduledJob.objects.count() == 0 and connection.dbsize() == 0


def test_rows_that_differ_in_their_time_only_are_validated_once_and_each_on_its_time(connection, monkeypatch):
    calls = {'n': 0}
    full_clean = ScheduledJob.full_clean

    def counting(self, *args, **kwargs):
        calls['n'] += 1
        return full_clean(self, *args, **kwargs)

    monkeypatch.setattr(ScheduledJob, 'full_clean', counting)
    rows = [ScheduledJob(name=f't{i}', callable='tests.tasks.add', scheduled_time=DUE + timedelta(minutes=i))
            for i in range(300)]  # fmt: skip
    created = ScheduledJob.objects.bulk_create(rows)
    assert calls['n'] == 1
    assert scheduled_ids(connection) == {row.template_id for row in created}
    scores = {row.template_id: (DUE + timedelta(minutes=i)).timestamp() for i, row in enumerate(created)}
    assert {member.decode(): score for member, score in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1,
            withscores=True)} == pytest.approx(scores)  # fmt: skip


def test_a_value_the_rules_convert_is_converted_in_every_row(connection):
    rows = one_offs(4, callable=tasks.add)  # a function: stored as its dotted path
    ScheduledJob.objects.bulk_create(rows)
    assert {row.callable for row in rows} == {'tests.tasks.add'}
    assert set(ScheduledJob.objects.values_list('callable', flat=True)) == {'tests.tasks.add'}


def test_rows_whose_values_cannot_be_compared_are_each_fully_validated(connection, monkeypatch):
    calls = {'n': 0}
    full_clean = ScheduledJob.full_clean
    monkeypatch.setattr(ScheduledJob, 'full_clean', lambda self, *a, **k: (calls.update(n=calls['n'] + 1),
                        full_clean(self, *a, **k))[1])  # fmt: skip
    deep: list = []
    for _ in range(bulk_validation._MAX_DEPTH + 2):
        deep = [deep]
    ScheduledJob.objects.bulk_create(one_offs(3, args=deep))
    assert calls['n'] == 3
    assert len(scheduled_ids(connection)) == 3


def test_periodic_rows_are_validated_once_per_definition_too(connection):
    crons = [CronJob(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(20)]
    crons[7].cron_string = '61 * * * *'
    with pytest.raises(ValidationError) as refused:
        CronJob.objects.bulk_create(crons)
    assert list(refused.value.message_dict) == ['cron_string']
    crons[7].cron_string = '*/5 * * * *'
    repeatables = [RepeatableJob(name=f'r{i}', callable='tests.tasks.add', scheduled_time=DUE, interval=i % 3)
                   for i in range(1, 10)]  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        RepeatableJob.objects.bulk_create(repeatables)
    assert list(refused.value.message_dict) == ['interval']
    assert refused.value.message_dict['interval'][0].startswith("row 2 ('r3'): ")
    CronJob.objects.bulk_create(crons)
    assert len(scheduled_ids(connection)) == 20


def test_duplicate_names_in_one_bulk_write_nothing(connection):
    rows = one_offs(3)
    rows[2].name = rows[0].name
    with pytest.raises(IntegrityError):
        ScheduledJob.objects.bulk_create(rows)
    assert ScheduledJob.objects.count() == 0 and connection.dbsize() == 0


def test_redis_down_for_the_whole_bulk_keeps_the_rows_and_reconciliation_brings_redis_in_line(connection, monkeypatch):
    def down(scheduler, writes):
        raise redis.ConnectionError('Redis is down')

    monkeypatch.setattr(sync, '_send_writes', down)
    rows = ScheduledJob.objects.bulk_create(one_offs(700))
    assert ScheduledJob.objects.count() == 700 and scheduled_ids(connection) == set()
    assert UnsyncedRow.objects.count() == 700
    monkeypatch.undo()
    Reconciler(connection).run()
    assert scheduled_ids(connection) == {row.template_id for row in rows}
