"""Run history without workers: idempotent ingestion, summaries the user's saves cannot undo, retention, settings,
and two ingesters at once (PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.core.checks import run_checks
from django.db import connection as db_connection
from django.test import override_settings

from django_rq_scheduled import history, retention
from django_rq_scheduled.models import RepeatableJob, Run

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc


def schedule(name='s'):
    return RepeatableJob.objects.create(
        name=name, callable='tests.tasks.add', interval=1, interval_unit='hours',
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def fact(row, number, status, ended=None, **fields):
    return history.Fact(
        f'{row.template_id}_at_{number}', RepeatableJob, row.pk, status, ended_at=ended or datetime.now(UTC), **fields
    )


def test_the_same_facts_twice_count_once(redis_url):
    row = schedule()
    facts = [fact(row, 1, 'finished'), fact(row, 2, 'failed', error='E: x'), fact(row, 3, 'skipped')]
    history.record_facts(facts)
    history.record_facts(facts)
    row.refresh_from_db()
    assert (row.success_count, row.failure_count, row.consecutive_failures, row.last_status) == (1, 1, 1, 'skipped')
    assert [status for _, status in row.recent_runs] == ['finished', 'failed', 'skipped']
    assert Run.objects.count() == 3


def test_a_status_never_goes_back_and_a_late_queued_record_changes_nothing(redis_url):
    row = schedule()
    history.record_facts([fact(row, 1, 'failed', error='E: late', reported=True)])
    history.record_facts([fact(row, 1, 'queued', enqueued_at=datetime(2030, 1, 1, tzinfo=UTC))])
    run = Run.objects.get()
    assert run.status == 'failed' and run.enqueued_at == datetime(2030, 1, 1, tzinfo=UTC)  # filled, not reverted
    row.refresh_from_db()
    assert row.failure_count == 1 and row.last_status == 'failed'


def test_an_edit_saved_from_an_old_instance_keeps_the_summary(redis_url):
    row = schedule()
    stale = RepeatableJob.objects.get(pk=row.pk)
    history.record_facts([fact(row, 1, 'failed', error='ValueError: x')])
    stale.description = 'edited'
    stale.save()
    row.refresh_from_db()
    assert (row.description, row.failure_count, row.last_error) == ('edited', 1, 'ValueError: x')
    with pytest.raises(ValueError, match='written by the scheduler loop only'):
        RepeatableJob.objects.filter(pk=row.pk).update(failure_count=0)


def test_facts_of_a_deleted_schedule_are_dropped(redis_url):
    row = schedule()
    history.record_facts([fact(row, 1, 'finished')])
    gone = fact(row, 2, 'finished')
    row.delete()
    assert history.record_facts([gone]) == [] and Run.objects.count() == 0  # its runs went with it


def test_the_strip_keeps_the_last_30_runs_in_order(redis_url):
    row = schedule()
    history.record_facts([fact(row, number, 'finished') for number in range(35)])
    history.record_facts([fact(row, 40, 'queued')])
    history.record_facts([fact(row, 40, 'failed')])
    row.refresh_from_db()
    ids = [run_id for run_id, _ in row.recent_runs]
    assert len(ids) == 30 and ids == sorted(ids) and row.recent_runs[-1][1] == 'failed'


def test_an_outcome_older_than_the_whole_strip_counts_and_leaves_the_strip_as_it_is(redis_url):
    row = schedule()
    history.record_facts([fact(row, number, 'queued') for number in range(31)])
    row.refresh_from_db()
    strip = row.recent_runs
    history.record_facts([fact(row, 0, 'failed', error='E: late', reported=True)])  # the oldest run, cut off already
    row.refresh_from_db()
    assert (row.recent_runs, row.failure_count, row.last_status, row.last_error) == (strip, 1, 'failed', 'E: late')
    history.record_facts([fact(row, 30, 'finished', reported=True)])  # the newest, in the strip: a step further
    row.refresh_from_db()
    assert row.recent_runs == [*strip[:-1], [strip[-1][0], 'finished']] and row.success_count == 1


# -- retention ---------------------------------------------------------------------------------------------------


def test_runs_older_than_the_days_kept_are_pruned_and_open_runs_kept(redis_url):
    row = schedule()
    old = datetime.now(UTC) - timedelta(days=31)
    history.record_facts([fact(row, 1, 'finished', ended=old), fact(row, 2, 'finished'), fact(row, 3, 'queued')])
    Run.objects.filter(rq_job_id__endswith='_3').update(ended_at=None)
    assert retention.Pruner().prune(days=30, per_schedule=1000) == 1
    assert sorted(Run.objects.values_list('status', flat=True)) == ['finished', 'queued']
    row.refresh_from_db()
    assert row.success_count == 2  # the summary outlives the history


def test_each_schedule_keeps_its_newest_runs_only(redis_url):
    busy, quiet = schedule('busy'), schedule('quiet')
    history.record_facts([fact(busy, number, 'finished') for number in range(12)] + [fact(quiet, 1, 'finished')])
    pruner = retention.Pruner()
    assert pruner.prune(days=30, per_schedule=5) == 7
    kept = list(busy.runs.values_list('rq_job_id', flat=True))
    assert kept == [f'{busy.template_id}_at_{number}' for number in range(11, 6, -1)]
    assert quiet.runs.count() == 1
    assert pruner.prune(days=30, per_schedule=5) == 0  # nothing new: no schedule is counted again


def test_pruning_is_bounded_per_pass_and_goes_on_at_the_next(redis_url, monkeypatch):
    monkeypatch.setattr(retention, 'PRUNE_BATCH', 4)
    row = schedule()
    history.record_facts([fact(row, number, 'finished') for number in range(12)])
    pruner = retention.Pruner()
    assert [pruner.prune(days=30, per_schedule=2) for _ in range(4)] == [4, 4, 2, 0]
    assert row.runs.count() == 2


@pytest.mark.parametrize('setting', ['RUN_HISTORY_DAYS', 'RUN_HISTORY_PER_SCHEDULE'])
def test_zero_keeps_no_history_but_the_summary(redis_url, setting):
    row = schedule()
    history.record_facts([fact(row, 1, 'finished'), fact(row, 2, 'queued')])
    Run.objects.filter(status='queued').update(ended_at=None)
    values = {'days': 30, 'per_schedule': 1000, setting.removeprefix('RUN_HISTORY_').lower(): 0}
    assert retention.Pruner().prune(**values) == 1
    assert list(Run.objects.values_list('status', flat=True)) == ['queued']
    row.refresh_from_db()
    assert row.success_count == 1


@pytest.mark.parametrize(
    'value',
    [
        {'RUN_HISTORY_DAYS': -1}, {'RUN_HISTORY_DAYS': True}, {'RUN_HISTORY_DAYS': '30'},
        {'RUN_HISTORY_DAYS': 36_501}, {'RUN_HISTORY_PER_SCHEDULE': 1.5}, {'RUN_HISTORY_PER_SCHEDULE': 10**7},
    ],
)  # fmt: skip
def test_history_settings_out_of_range_fail_the_checks(value):
    with override_settings(RQ_SCHEDULED=value):
        assert [m.id for m in run_checks() if m.id.startswith('django_rq_scheduled.')] == ['django_rq_scheduled.E002']


def test_history_settings_in_range_pass_the_checks():
    with override_settings(RQ_SCHEDULED={'RUN_HISTORY_DAYS': 0, 'RUN_HISTORY_PER_SCHEDULE': 1_000_000}):
        assert [m.id for m in run_checks() if m.id.startswith('django_rq_scheduled.')] == []


# -- two ingesters at once ---------------------------------------------------------------------------------------


def test_two_ingesters_reading_the_same_records_at_once_count_them_once(redis_url):
    if db_connection.vendor != 'postgresql':
        pytest.skip('two connections writing at once: PostgreSQL (runtests.py runs this module there)')
    rows = [schedule(f's{i}') for i in range(20)]
    history.record_facts([fact(row, number, 'queued') for row in rows for number in range(10)])
    outcomes = [fact(row, number, 'failed', reported=True) for row in rows for number in range(10)]
    start = threading.Barrier(2)

    def ingest() -> None:
        from django.db import connections

        start.wait()
        try:
            history.record_facts(outcomes)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [row.failure_count for row in RepeatableJob.objects.all()] == [10] * 20
    assert Run.objects.filter(status='failed').count() == 200


def test_record_texts_any_column_can_hold_on_every_database(redis_url):
    import json

    row = schedule()
    raw = json.dumps({
        'job': f'{row.template_id}_now_7', 'status': 'failed', 'worker': 'w\x00' * 300, 'queue': 'q' * 999,
        'reason': 'r\x00', 'error': 'ValueError: \x00 in the data\n' + 'x' * 100_000,
    })  # fmt: skip
    history.record_facts([history.outcome_fact(raw)])
    run = Run.objects.get()
    assert run.status == 'failed' and len(run.worker) == 255 and '\x00' not in run.worker + run.reason + run.error
    assert run.error_headline == 'ValueError: \\x00 in the data'
    with pytest.raises(ValueError, match='job id'):
        history.decision_fact({'schedule': row.template_id, 'outcome': 'enqueued', 'job': 'x' * 300}, RepeatableJob, 1)
    with pytest.raises(ValueError, match='job id'):
        history.decision_fact({'schedule': row.template_id, 'outcome': 'enqueued', 'job': 'a b'}, RepeatableJob, 1)


def test_a_batch_holding_several_steps_of_its_runs_summarizes_as_one_step_at_a_time(redis_url):
    one_by_one, batched = schedule('one by one'), schedule('batched')
    statuses = ['finished', 'failed', 'failed', 'stopped', 'finished', 'failed', 'skipped'] * 6  # past the strip's 30
    for row, batches in ((one_by_one, len(statuses) * 2), (batched, 1)):
        facts = []
        for number in range(len(statuses)):
            facts.append(fact(row, number, 'queued', ended=datetime(2030, 1, 1, tzinfo=UTC)))
        for number, status in enumerate(statuses):
            facts.append(
                fact(row, number, status, ended=datetime(2030, 1, 2, number % 24, tzinfo=UTC), error=f'E: {number}')
            )
        for start in range(0, len(facts), len(facts) // batches):
            history.record_facts(facts[start : start + len(facts) // batches])
    names = ['last_status', 'last_success_at', 'last_failure_at', 'consecutive_failures', 'success_count',
             'failure_count', 'last_error']  # fmt: skip
    one_by_one.refresh_from_db()
    batched.refresh_from_db()
    assert {name: getattr(batched, name) for name in names} == {name: getattr(one_by_one, name) for name in names}
    offset = min(run[0] for run in batched.recent_runs) - min(run[0] for run in one_by_one.recent_runs)
    assert [[pk - offset, status] for pk, status in batched.recent_runs] == one_by_one.recent_runs
    assert len(batched.recent_runs) == 30 and batched.recent_runs[-1][1] == 'skipped'
