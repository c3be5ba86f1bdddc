"""The leader's periodic reconciliation: its cost follows what changed, and it repairs what the full pass repairs
(a flushed Redis at once, syncs that failed at the next pass, raw SQL and orphans within one sweep)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
import redis
import time_machine
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from rq.job import Job

from django_rq_scheduled import signals, sync
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import SCHEDULE_MODELS, CronJob, ScheduledJob
from django_rq_scheduled.reconcile_state import ReconcileState, read_state, save_state
from django_rq_scheduled.reconciliation import Reconciler
from django_rq_scheduled.unsynced import UnsyncedRow

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
LATER = datetime.now(UTC) + timedelta(hours=1)  # passes run after CHANGED_MARGIN: the rows made now are unchanged
SWEEP = 20


@pytest.fixture
def small_sweep(settings):
    settings.RQ_SCHEDULED = {**getattr(settings, 'RQ_SCHEDULED', {}), 'RECONCILE_SWEEP_ROWS': SWEEP}


def cron_rows(count, prefix='c'):
    return CronJob.objects.bulk_create(
        [CronJob(name=f'{prefix}{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(count)]
    )


def scheduled_ids(connection):
    return {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}


def passes_per_sweep(rows):
    """A table's slices, and one more pass for each table whose last slice was full (or that is empty)."""
    return math.ceil(rows / SWEEP) + len(SCHEDULE_MODELS)


def test_an_incremental_pass_over_an_unchanged_table_costs_the_same_whatever_its_size(
    connection, round_trips, small_sweep
):
    costs = {}
    made = 0
    for size in (60, 1500):
        cron_rows(size - made, prefix=f's{size}-')
        made = size
        with time_machine.travel(LATER, tick=True):
            assert Reconciler(connection).run(full=True).unchanged == size
            per_pass = []
            for _ in range(passes_per_sweep(size) + 2):  # more than a sweep: every boundary is crossed
                before = round_trips['n']
                with CaptureQueriesContext(db_connection) as queries:
                    report = Reconciler(connection).run()
                assert report.written == report.removed == report.failed == []
                per_pass.append((len(queries), round_trips['n'] - before))
        costs[size] = (max(q for q, _ in per_pass), max(t for _, t in per_pass))
    # The noted rows, the changed rows (a query per model), a slice of rows (two), the owners of a slice of the
    # versions hash (one per model in it); the state, a slice's templates, a slice of the versions hash, the state.
    assert costs[60] == costs[1500]
    queries, trips = costs[1500]
    assert queries <= 7 and trips <= 4, costs


def test_a_flushed_redis_is_detected_and_fully_repaired_at_the_next_pass(connection):
    rows = cron_rows(30)
    with time_machine.travel(LATER, tick=True):
        Reconciler(connection).run()
        assert read_state(connection) is not None
        connection.flushall()
        report = Reconciler(connection).run()
    assert sorted(report.written) == sorted(row.template_id for row in rows)
    assert scheduled_ids(connection) == {row.template_id for row in rows}
    assert read_state(connection) is not None


def test_a_state_someone_else_wrote_is_replaced_by_a_full_pass(connection):
    [row] = cron_rows(1)
    connection.delete(keys.SCHEDULED_JOBS_KEY)
    connection.set(keys.RECONCILE_KEY, 'not a hash')
    assert Reconciler(connection).run().written == [row.template_id]
    assert read_state(connection) is not None


def test_a_flush_during_a_pass_is_not_covered_by_its_watermark(connection):
    cron_rows(3)
    Reconciler(connection).run()
    state = read_state(connection)
    connection.flushall()
    assert not save_state(connection, state)
    assert connection.exists(keys.RECONCILE_KEY) == 0  # the next pass is a full one


@pytest.mark.parametrize('column', ['cron_string', 'enabled'])
def test_a_raw_sql_change_that_leaves_modified_alone_is_repaired_within_one_sweep(connection, small_sweep, column):
    rows = cron_rows(75)
    target = rows[61]
    value = '0 3 * * *' if column == 'cron_string' else False
    with time_machine.travel(LATER, tick=True):
        Reconciler(connection).run()
        with db_connection.cursor() as cursor:
            cursor.execute(f'UPDATE django_rq_scheduled_cronjob SET {column} = %s WHERE id = %s', [value, target.pk])
        repaired_at = None
        for number in range(1, passes_per_sweep(len(rows)) + 1):
            report = Reconciler(connection).run()
            if target.template_id in report.written + report.removed:
                repaired_at = number
                break
    assert repaired_at is not None and repaired_at > 1  # found by the sweep, not by a full pass
    if column == 'cron_string':
        assert fetch_template(connection, target.template_id).meta['cron_string'] == '0 3 * * *'
    else:
        assert target.template_id not in scheduled_ids(connection)


def test_a_full_sweep_records_when_it_began(connection, small_sweep):
    cron_rows(45)
    with time_machine.travel(LATER, tick=True):
        Reconciler(connection).run()
        first = read_state(connection).swept_at
    with time_machine.travel(LATER + timedelta(hours=1), tick=True):
        for _ in range(passes_per_sweep(45)):
            Reconciler(connection).run()
            state = read_state(connection)
            if state.swept_at > first:
                break
    assert state.swept_at > first and state.model == 0 and state.after == ''


def test_orphans_are_found_by_the_rolling_scan_of_the_versions_hash(connection, small_sweep):
    rows = cron_rows(70)
    gone = [rows[5], rows[44], rows[69]]
    connection.hset(keys.VERSIONS_KEY, 'someone-elses', 'x')
    with time_machine.travel(LATER, tick=True):
        Reconciler(connection).run()
        with db_connection.cursor() as cursor:
            for row in gone:
                cursor.execute('DELETE FROM django_rq_scheduled_cronjob WHERE id = %s', [row.pk])
        removed = []
        for _ in range(math.ceil(70 / SWEEP) * 3):  # HSCAN's COUNT is a hint: a few slices more than the entries
            removed += Reconciler(connection).run().removed
            if read_state(connection).orphans == 0:
                break
    assert sorted(removed) == sorted(row.template_id for row in gone)
    assert not {row.template_id for row in gone} & scheduled_ids(connection)
    assert connection.hget(keys.VERSIONS_KEY, 'someone-elses') == b'x'  # not ours: left alone
    assert len(scheduled_ids(connection)) == 67


def failing_sync(*args, **kwargs):
    raise redis.ConnectionError('Redis is down')


def change_while_redis_is_down(monkeypatch, row, path):
    """Changes (or makes, or deletes) a row through the ORM while its after-commit sync fails; returns the row."""
    working = sync.sync_rows
    monkeypatch.setattr(sync, 'sync_rows', failing_sync)
    if path == 'save':
        row.cron_string = '0 4 * * *'
        row.save()
    elif path == 'update':
        CronJob.objects.filter(pk=row.pk).update(cron_string='0 4 * * *')
    elif path == 'bulk_update':
        row.cron_string = '0 4 * * *'
        CronJob.objects.bulk_update([row], ['cron_string'])
    elif path == 'delete':
        CronJob.objects.get(pk=row.pk).delete()
    elif path == 'bulk_create':
        row = cron_rows(1, prefix='new')[0]
    else:
        row = CronJob.objects.create(name='new', callable='tests.tasks.add', cron_string='0 4 * * *')
    monkeypatch.setattr(sync, 'sync_rows', working)
    return row


def assert_in_line(connection, row, report):
    if not CronJob.objects.filter(pk=row.pk).exists():
        assert report.removed == [row.template_id] and not Job.exists(row.template_id, connection=connection)
        return
    assert report.written == [row.template_id]
    stored = fetch_template(connection, row.template_id).meta['cron_string']
    assert stored == CronJob.objects.get(pk=row.pk).cron_string


PATHS = ['save', 'update', 'bulk_update', 'bulk_create', 'create', 'delete']


@pytest.mark.parametrize('path', PATHS)
def test_a_row_whose_sync_failed_while_redis_was_down_is_repaired_at_the_next_pass(connection, monkeypatch, path):
    [row] = cron_rows(1)
    Reconciler(connection).run()
    earlier = datetime.now(UTC) - timedelta(hours=1)
    with time_machine.travel(earlier, tick=True):  # modified is older than the watermark: the note finds them
        row = change_while_redis_is_down(monkeypatch, row, path)
    assert UnsyncedRow.objects.count() == 1
    monkeypatch.setattr(sync, 'reconcile', lambda **kwargs: pytest.fail('a full pass'))
    report = Reconciler(connection).run()
    assert_in_line(connection, row, report)
    assert UnsyncedRow.objects.count() == 0  # forgotten once synced
    assert Reconciler(connection).run().written == []


@pytest.mark.parametrize('path', ['save', 'update', 'bulk_update', 'bulk_create', 'create'])
def test_a_failed_sync_that_could_not_be_noted_is_found_by_modified(connection, monkeypatch, path):
    [row] = cron_rows(1)
    Reconciler(connection).run()
    monkeypatch.setattr(signals.unsynced, 'note', lambda *args: None)  # the process died after its commit, say
    row = change_while_redis_is_down(monkeypatch, row, path)
    assert UnsyncedRow.objects.count() == 0
    monkeypatch.setattr(sync, 'reconcile', lambda **kwargs: pytest.fail('a full pass'))
    assert_in_line(connection, row, Reconciler(connection).run())


def test_noted_rows_wait_while_redis_does_not_answer_the_pass(connection, monkeypatch):
    [row] = cron_rows(1)
    Reconciler(connection).run()
    change_while_redis_is_down(monkeypatch, row, 'delete')
    monkeypatch.setattr(sync, 'sync_rows', failing_sync)
    with pytest.raises(redis.ConnectionError):
        Reconciler(connection).run()
    assert UnsyncedRow.objects.count() == 1
    monkeypatch.undo()
    assert Reconciler(connection).run().removed == [row.template_id]
    assert UnsyncedRow.objects.count() == 0


def test_a_note_no_schedule_row_can_have_is_dropped(connection):
    UnsyncedRow.objects.create(model='auth.user', object_pk='1')
    UnsyncedRow.objects.create(model='django_rq_scheduled.cronjob', object_pk='not a number')
    Reconciler(connection).run()
    report = Reconciler(connection).run()
    assert report.written == report.removed == report.failed == []
    assert UnsyncedRow.objects.count() == 0


def test_the_watermark_holds_while_a_pass_fails(connection, monkeypatch):
    """A pass that cannot finish (the database or Redis away) leaves the watermark: the rows changed meanwhile are
    read by the pass that does."""
    cron_rows(2)
    Reconciler(connection).run()
    before = read_state(connection).watermark
    monkeypatch.setattr(Reconciler, '_sweep_orphans', failing_sync)
    with time_machine.travel(LATER, tick=True), pytest.raises(redis.ConnectionError):
        Reconciler(connection).run()
    assert read_state(connection).watermark == before


def test_the_leader_passes_full_when_it_starts_leading_and_incremental_after(connection, monkeypatch):
    from django_rq_scheduled import Scheduler

    calls = []
    original = Reconciler.run

    def recording(self, *, full=False):
        calls.append(full)
        return original(self, full=full)

    monkeypatch.setattr(Reconciler, 'run', recording)
    ScheduledJob.objects.create(name='later', callable='tests.tasks.add', scheduled_time=LATER)
    scheduler = Scheduler(queue_name='default', name='incremental')
    assert scheduler.acquire_lock()
    hook = DatabaseSync(reconcile_interval=0, background=False)
    hook(scheduler)
    hook(scheduler)
    assert calls == [True, False]
    scheduler.lease.held = False  # an outage: the loop drops the lease, and takes it again once Redis answers
    assert scheduler.acquire_lock()
    hook(scheduler)
    hook(scheduler)
    assert calls == [True, False, True, False]


def test_a_failed_full_pass_is_done_again_in_full(connection, monkeypatch):
    from django_rq_scheduled import Scheduler

    calls = []

    def failing_first(self, *, full=False):
        calls.append(full)
        if len(calls) == 1:
            raise redis.ConnectionError('Redis is down')
        return sync.SyncReport()

    monkeypatch.setattr(Reconciler, 'run', failing_first)
    scheduler = Scheduler(queue_name='default', name='failing-full')
    assert scheduler.acquire_lock()
    hook = DatabaseSync(reconcile_interval=0, background=False)
    with pytest.raises(redis.ConnectionError):
        hook(scheduler)
    hook(scheduler)
    hook(scheduler)
    assert calls == [True, True, False]


def test_a_state_with_foreign_values_reads_as_none():
    assert ReconcileState.parse({b'epoch': b'e', b'watermark': b'soon'}) is None
    assert ReconcileState.parse({b'watermark': b'1.0'}) is None
    assert ReconcileState.parse({b'epoch': b'e', b'watermark': b'nan'}) is None
    state = ReconcileState.parse({b'epoch': b'e', b'watermark': b'1.5', b'model': b'7', b'orphans': b'-3'})
    assert state is not None and state.model == 7 % len(SCHEDULE_MODELS) and state.orphans == 0


def test_a_sweep_cursor_no_primary_key_can_hold_starts_the_table_again(connection, small_sweep):
    cron_rows(3)
    with time_machine.travel(LATER, tick=True):
        Reconciler(connection).run()
        connection.hset(keys.RECONCILE_KEY, mapping={'model': SCHEDULE_MODELS.index(CronJob), 'after': 'x'})
        assert Reconciler(connection).run().unchanged == 3


def test_a_watermark_ahead_of_the_clock_does_not_hide_the_rows_changed_since(connection, monkeypatch):
    [row] = cron_rows(1)
    Reconciler(connection).run()
    connection.hset(keys.RECONCILE_KEY, 'watermark', repr(LATER.timestamp()))  # a leader whose clock ran ahead
    monkeypatch.setattr(signals.unsynced, 'note', lambda *args: None)
    change_while_redis_is_down(monkeypatch, row, 'save')
    assert Reconciler(connection).run().written == [row.template_id]
