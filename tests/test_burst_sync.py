"""The sync of rows created by ``bulk_create`` (bench/burst.py): every definition validated once (rows sharing it
are validated on their own fields: tests/test_bulk_validation.py), never again by the sync; counted round
trips and queries; nothing written for a rolled-back bulk; a Redis failure mid-way leaves the rows noted for
reconciliation, which repairs them; an invalid row refuses the whole bulk."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis
from django.core.exceptions import ValidationError
from django.db import connection as db_connection
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from rq.job import Job

from django_rq_scheduled import pending, shared_templates, sync
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import ScheduledJob
from django_rq_scheduled.reconciliation import Reconciler
from django_rq_scheduled.servers import servers
from django_rq_scheduled.unsynced import UnsyncedRow

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
ROWS = 1200  # three batches of sync.BATCH


def one_offs(count, prefix='o', **fields):
    due = datetime.now(UTC) + timedelta(hours=1)
    values = {'callable': 'tests.tasks.add', 'scheduled_time': due, **fields}
    return [ScheduledJob(name=f'{prefix}{i}', **values) for i in range(count)]


def scheduled_ids(connection):
    return {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}


@pytest.fixture
def validations(monkeypatch):
    """Counts ``full_clean()`` calls of ScheduledJob rows."""
    counter = {'n': 0}
    original = ScheduledJob.full_clean

    def counting(self, *args, **kwargs):
        counter['n'] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ScheduledJob, 'full_clean', counting)
    return counter


def test_rows_of_one_definition_are_validated_once_and_synced(connection, validations):
    rows = ScheduledJob.objects.bulk_create(one_offs(ROWS))
    assert validations['n'] == 1  # before the insert, once for the definition; not again by the sync after commit
    assert scheduled_ids(connection) == {row.template_id for row in rows}
    assert connection.hlen(keys.VERSIONS_KEY) == ROWS
    assert pending.take_validated(ScheduledJob) == frozenset()  # forgotten once used


def test_rows_with_distinct_definitions_are_each_validated_once(connection, validations):
    rows = [*one_offs(10, args=[1, 2]), *one_offs(10, prefix='p', args=[3, 4])]
    ScheduledJob.objects.bulk_create(rows)
    assert validations['n'] == 2
    assert len(scheduled_ids(connection)) == 20


def test_a_row_changed_by_raw_sql_before_commit_is_validated_by_its_sync(connection, validations):
    """The version of what was validated no longer matches the row: the sync validates it, and refuses it."""
    with transaction.atomic():
        [row, other] = ScheduledJob.objects.bulk_create(one_offs(2))
        with db_connection.cursor() as cursor:
            table = ScheduledJob._meta.db_table
            cursor.execute(f'UPDATE {table} SET callable = %s WHERE id = %s', ['tests.tasks.nope', row.pk])
    assert validations['n'] == 1 + 1  # the bulk's one definition, then the changed row's at its sync
    assert scheduled_ids(connection) == {other.template_id}


def test_the_sync_of_bulk_created_rows_costs_one_round_trip_and_two_queries_per_batch(connection, round_trips):
    objs = one_offs(ROWS)
    round_trips['n'] = 0
    with CaptureQueriesContext(db_connection) as queries:
        ScheduledJob.objects.bulk_create(objs)
    batches = -(-ROWS // sync.BATCH)
    # Per batch: one pipelined write (inserted rows are not read first); plus loading the sync script once.
    assert round_trips['n'] <= batches + 2
    syncing = [query for query in queries.captured_queries if not query['sql'].startswith(('INSERT', 'SAVEPOINT'))]
    # Per batch: the rows loaded, and their next run stored (one UPDATE: they share it).
    assert len([q for q in syncing if q['sql'].startswith('SELECT')]) == batches
    assert len([q for q in syncing if q['sql'].startswith('UPDATE')]) == batches
    assert len(scheduled_ids(connection)) == ROWS


def test_a_rolled_back_bulk_create_writes_nothing_to_redis(connection, round_trips):
    round_trips['n'] = 0
    with pytest.raises(RuntimeError), transaction.atomic():
        ScheduledJob.objects.bulk_create(one_offs(50))
        raise RuntimeError('the caller gives up')
    assert round_trips['n'] == 0
    assert ScheduledJob.objects.count() == 0 and connection.dbsize() == 0
    # What it validated stays valid: the next bulk of the same definitions is synced, not validated again.
    ScheduledJob.objects.bulk_create(one_offs(50, prefix='again'))
    assert len(scheduled_ids(connection)) == 50


def test_an_invalid_row_refuses_the_whole_bulk_and_names_its_field(connection):
    rows = one_offs(5)
    rows[3].callable = 'tests.tasks.nope'
    with pytest.raises(ValidationError) as refused:
        ScheduledJob.objects.bulk_create(rows)
    assert 'callable' in refused.value.message_dict
    assert ScheduledJob.objects.count() == 0 and connection.dbsize() == 0
    assert pending.take_validated(ScheduledJob) == frozenset()  # nothing noted for a refused bulk


def test_redis_failing_mid_way_leaves_the_rows_noted_and_reconciliation_repairs_them(connection, monkeypatch):
    send = sync._send_writes
    calls = {'n': 0}

    def failing_after_the_first_batch(scheduler, writes):
        calls['n'] += 1
        if calls['n'] > 1:
            raise redis.ConnectionError('Redis went away')
        return send(scheduler, writes)

    monkeypatch.setattr(sync, '_send_writes', failing_after_the_first_batch)
    rows = ScheduledJob.objects.bulk_create(one_offs(ROWS))  # committed: the failure does not undo it
    assert ScheduledJob.objects.count() == ROWS
    assert len(scheduled_ids(connection)) == sync.BATCH  # the first batch only
    assert UnsyncedRow.objects.count() == ROWS
    monkeypatch.undo()
    report = Reconciler(connection).run()  # the first pass of this Redis is a full one
    assert len(report.written) == ROWS - sync.BATCH
    assert scheduled_ids(connection) == {row.template_id for row in rows}
    again = Reconciler(connection).run()  # the next, incremental, syncs the noted rows (in line now) and forgets them
    assert again.written == [] and UnsyncedRow.objects.count() == 0
    assert Job.fetch(rows[-1].template_id, connection=connection).func_name == 'tests.tasks.add'


def test_rows_of_one_definition_share_one_template_per_batch_each_as_if_built_alone(connection, monkeypatch):
    built = {'n': 0}
    build = shared_templates.template_job

    def counting(*args, **kwargs):
        built['n'] += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(shared_templates, 'template_job', counting)
    rows = [*one_offs(ROWS), *one_offs(7, prefix='p', args=[3, 4]), *one_offs(3, prefix='q', description='other')]
    rows += one_offs(5, prefix='t', scheduled_time=datetime.now(UTC) + timedelta(hours=2))
    created = ScheduledJob.objects.bulk_create(rows)
    batches = -(-len(rows) // sync.BATCH)
    assert built['n'] <= batches * 4  # per batch, at most one per distinct definition in it
    monkeypatch.undo()
    scheduler = servers().scheduler_for('default')
    for row in ScheduledJob.objects.filter(pk__in=[row.pk for row in created]):
        alone = shared_templates.template_fields(scheduler, row, 0, row.version(), None)  # outside a sync: unshared
        expected = {alone[i].encode(): str(alone[i + 1]).encode() if not isinstance(alone[i + 1], bytes) else
                    alone[i + 1] for i in range(0, len(alone), 2)}  # fmt: skip
        assert connection.hgetall(keys.job_key(row.template_id)) == expected


def test_rows_each_at_its_own_time_store_their_next_runs_in_one_update_per_batch(connection):
    due = datetime.now(UTC) + timedelta(hours=1)
    objs = [ScheduledJob(name=f't{i}', callable='tests.tasks.add', scheduled_time=due + timedelta(seconds=i))
            for i in range(ROWS)]  # fmt: skip
    with CaptureQueriesContext(db_connection) as queries:
        ScheduledJob.objects.bulk_create(objs)
    # One statement run over each batch (executemany: logged as "500 times UPDATE ...").
    updates = [query for query in queries.captured_queries if 'UPDATE ' in query['sql']]
    assert len(updates) == -(-ROWS // sync.BATCH)
    stored = dict(ScheduledJob.objects.values_list('name', 'next_run'))
    assert stored == {f't{i}': due + timedelta(seconds=i) for i in range(ROWS)}
