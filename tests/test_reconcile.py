"""Reconciliation (flushed Redis, raw SQL, orphans, 10,000 rows) and run feedback from a real worker."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.db import connection as db_connection

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.feedback import DatabaseSync, apply_feedback
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from django_rq_scheduled.sync import reconcile
from tests.conftest import run_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc


def scheduled_ids(connection):
    return sorted(m.decode() for m in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1))


def cron_rows(count, prefix='c'):
    return CronJob.objects.bulk_create(
        [
            CronJob(name=f'{prefix}{i}', callable='tests.tasks.add', args=[i, 1], cron_string='*/5 * * * *')
            for i in range(count)
        ]
    )


def test_reconcile_restores_everything_after_flushall(connection):
    rows = cron_rows(20)
    expected = scheduled_ids(connection)
    connection.flushall()
    report = reconcile()
    assert sorted(report.written) == expected == sorted(row.template_id for row in rows)
    assert scheduled_ids(connection) == expected
    assert reconcile().written == []  # in sync now: nothing to do


def test_reconcile_repairs_raw_sql_edits(connection):
    [row] = cron_rows(1)
    with db_connection.cursor() as cursor:
        cursor.execute('UPDATE django_rq_scheduled_cronjob SET cron_string = %s WHERE id = %s', ['0 3 * * *', row.pk])
    assert Scheduler(connection=connection)  # nothing noticed yet
    assert reconcile().written == [row.template_id]

    assert fetch_template(connection, row.template_id).meta['cron_string'] == '0 3 * * *'
    with db_connection.cursor() as cursor:
        cursor.execute('UPDATE django_rq_scheduled_cronjob SET enabled = %s WHERE id = %s', [False, row.pk])
    assert reconcile().removed == [row.template_id]
    assert scheduled_ids(connection) == []


def test_reconcile_removes_templates_of_rows_deleted_behind_its_back(connection):
    rows = cron_rows(3)
    with db_connection.cursor() as cursor:
        cursor.execute('DELETE FROM django_rq_scheduled_cronjob WHERE id = %s', [rows[0].pk])
    Scheduler(connection=connection).enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), 'tests.tasks.add', job_id='mine')
    report = reconcile()
    assert report.removed == [rows[0].template_id]
    assert scheduled_ids(connection) == sorted(['mine', rows[1].template_id, rows[2].template_id])


def test_reconcile_of_10000_rows_costs_a_bounded_number_of_round_trips(connection, round_trips):
    cron_rows(10_000)
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 10_000
    round_trips['n'] = 0
    started = time.perf_counter()
    report = reconcile()
    elapsed = time.perf_counter() - started
    assert report.unchanged == 10_000 and report.written == []
    # One pipelined read per batch of 500 rows, plus the orphan sweep and connection set-up.
    print(f'\n[figures] reconcile of 10,000 rows in sync: {round_trips["n"]} round trips, {elapsed:.2f} s')
    assert round_trips['n'] <= 10_000 // 500 + 10
    connection.flushall()
    round_trips['n'] = 0
    report = reconcile()
    assert len(report.written) == 10_000
    print(f'[figures] reconcile of 10,000 rows after FLUSHALL: {round_trips["n"]} round trips')
    assert round_trips['n'] <= 2 * (10_000 // 500) + 10


def test_sync_cost_bulk_create_vs_one_by_one(connection, round_trips):
    round_trips['n'] = 0
    started = time.perf_counter()
    cron_rows(1000, prefix='bulk')
    bulk = (round_trips['n'], time.perf_counter() - started)
    round_trips['n'] = 0
    started = time.perf_counter()
    for i in range(1000):
        CronJob.objects.create(name=f'one{i}', callable='tests.tasks.add', cron_string='*/5 * * * *')
    single = (round_trips['n'], time.perf_counter() - started)
    print(
        f'\n[figures] 1,000 rows: bulk_create {bulk[0]} round trips {bulk[1]:.2f} s; '
        f'one by one {single[0]} round trips {single[1]:.2f} s'
    )
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 2000
    assert bulk[0] <= 2 * (1000 // 500) + 10
    assert single[0] <= 3 * 1000 + 10  # one read and one write per row (plus its own transaction's flush)


def test_run_feedback_from_the_loop_and_a_real_worker(connection, redis_url):
    now = datetime.now(UTC)
    once = ScheduledJob.objects.create(name='once', callable='tests.tasks.add', args=[1, 2], scheduled_time=now)
    twice = RepeatableJob.objects.create(
        name='twice', callable='tests.tasks.add', args=[2, 2], scheduled_time=now + timedelta(milliseconds=300),
        interval=10, interval_unit='seconds', repeat=2,
    )  # fmt: skip
    scheduler = Scheduler(queue_name='default', name='feedback')
    hook = DatabaseSync(reconcile_interval=3600, background=False)
    assert scheduler.acquire_lock()
    with time_machine.travel(now + timedelta(seconds=1), tick=False):
        first = scheduler.move_due_jobs()
        hook(scheduler)
    assert len(first.enqueued) == 2
    once.refresh_from_db()
    twice.refresh_from_db()
    assert once.has_run and once.run_count == 1 and once.last_run is not None and once.next_run is None
    assert twice.run_count == 1 and twice.remaining_runs == 1
    expected_next = now + timedelta(milliseconds=300) + timedelta(seconds=10)
    assert abs(twice.next_run - expected_next) < timedelta(milliseconds=1)  # scores keep milliseconds
    with time_machine.travel(now + timedelta(seconds=11), tick=False):
        assert scheduler.acquire_lock()
        second = scheduler.move_due_jobs()
        hook(scheduler)
    assert len(second.enqueued) == 1
    twice.refresh_from_db()
    assert twice.run_count == 2 and twice.is_finished and twice.next_run is None
    assert scheduled_ids(connection) == []
    assert reconcile().written == []  # finished schedules are not brought back
    run_worker(redis_url)
    from rq.job import Job

    results = [Job.fetch(job_id, connection=connection).return_value() for job_id in first.enqueued + second.enqueued]
    assert sorted(results) == [3, 4, 4]


def test_feedback_is_idempotent_and_waits_for_the_database(connection):
    ScheduledJob.objects.create(name='once', callable='tests.tasks.add', scheduled_time=datetime.now(UTC))
    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    records = connection.lrange(keys.RUNS_KEY, 0, -1)
    assert apply_feedback(connection) == 1
    connection.rpush(keys.RUNS_KEY, *records)  # as if the trim had been lost in a crash
    assert apply_feedback(connection) == 1
    row = ScheduledJob.objects.get()
    assert row.run_count == 1 and row.has_run


def test_a_disallowed_callable_written_by_raw_sql_is_never_scheduled_nor_enqueued(connection, settings):
    [row] = cron_rows(1)
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.record']}
    assert reconcile().removed == [row.template_id]
    assert scheduled_ids(connection) == []
    # The API refuses it at call time; a job written straight into Redis (another producer) is refused when due.
    scheduler = Scheduler(connection=connection)
    with pytest.raises(ValueError, match='not allowed by ALLOWED_CALLABLES'):
        scheduler.enqueue_at(datetime.now(UTC), 'tests.tasks.add', job_id='refused')
    producer = Scheduler(connection=connection, callable_allowed=None)
    producer.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), 'tests.tasks.add', job_id='smuggled')
    assert scheduler.enqueue_jobs() == []
    assert 'ALLOWED_CALLABLES' in scheduler.dead_letters()['smuggled']


def test_finished_schedules_cost_nothing_at_later_reconciliations(connection):
    ScheduledJob.objects.create(name='once', callable='tests.tasks.add', scheduled_time=datetime.now(UTC))
    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    for _ in range(3):
        report = reconcile()
        assert report.removed == [] and report.written == []
    apply_feedback(connection)
    assert reconcile().removed == []


def test_a_hand_written_fixture_without_timestamps_loads(connection, tmp_path):
    from django.core.management import call_command

    fixture = tmp_path / 'schedules.json'
    fixture.write_text(
        '[{"model": "django_rq_scheduled.cronjob", "fields": '
        '{"name": "nightly", "callable": "tests.tasks.add", "cron_string": "0 3 * * *"}}]'
    )
    call_command('loaddata', str(fixture), verbosity=0)
    row = CronJob.objects.get(name='nightly')
    assert row.created is not None and row.template_id in scheduled_ids(connection)


def test_the_loop_keeps_moving_jobs_while_the_database_is_down(connection, monkeypatch, caplog):
    from django.db import OperationalError

    from django_rq_scheduled import feedback

    row = ScheduledJob.objects.create(name='once', callable='tests.tasks.add', scheduled_time=datetime.now(UTC))

    def database_down(*args, **kwargs):
        raise OperationalError('database is locked')

    monkeypatch.setattr(feedback, 'apply_feedback', database_down)
    scheduler = Scheduler(queue_name='default', name='db-down')
    scheduler.tick_hooks.append(DatabaseSync(reconcile_interval=3600, background=False))
    scheduler.run(burst=True)
    assert connection.lrange('rq:queue:default', 0, -1) == [row.template_id.encode()]
    assert 'failed; the loop goes on' in caplog.text
    row.refresh_from_db()
    assert not row.has_run  # feedback waits in Redis ...
    monkeypatch.undo()
    apply_feedback(connection)
    row.refresh_from_db()
    assert row.has_run and row.run_count == 1  # ... and catches up once the database is back
