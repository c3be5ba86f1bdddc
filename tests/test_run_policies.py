"""The run policies end to end, on the suite's Redis with real RQ workers: jitter with a real leader, a window of
validity that ends (and is extended), catch-up after a real ``rqscheduler`` process was stopped, backfill."""

from __future__ import annotations

import io
import itertools
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import CommandError, call_command

from django_rq_scheduled import Scheduler
from django_rq_scheduled.backfill import RAN, backfill, slots_between
from django_rq_scheduled.core import catchup, keys
from django_rq_scheduled.models import RepeatableJob, Run
from tests import tasks
from tests.conftest import run_worker
from tests.processes import OutputReader, django_shell, kill, queue_ids, scheduler_process, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
TICK_LAG = 0.5  # seconds the in-process leader's ticks may lag behind a due time on a loaded machine


def every_second(name: str = 'tick', **options: object) -> RepeatableJob:
    start = datetime.now(UTC) + timedelta(milliseconds=100)
    return RepeatableJob.objects.create(
        name=name, callable='tests.tasks.add', args=[1, 2], scheduled_time=start, interval=1, interval_unit='seconds',
        **options,
    )  # fmt: skip


def lead_for(leader, seconds: float) -> None:
    """The in-process leader, ticking as the loop does (the clock is real: slots pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        leader.scheduler.lease.renew_if_due()  # as the loop does each tick
        leader()
        time.sleep(0.02)


def slots_of(row: RepeatableJob) -> list[float]:
    return sorted(run.fire_time.timestamp() for run in row.runs.all())


def consecutive(fire_times: list[float], step: float = 1) -> bool:
    return all(round(b - a, 3) == step for a, b in itertools.pairwise(fire_times))


# -- jitter ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_jittered_runs_are_enqueued_within_their_delay_before_the_next_slot_and_record_it(leader, redis_url):
    row = every_second(jitter=1)  # never as late as the next slot: at most 0.999 s
    lead_for(leader, 4)
    run_worker(redis_url)
    leader.hook(leader.scheduler)  # reads the outcomes in, moves nothing
    runs = list(row.runs.order_by('fire_time'))
    assert len(runs) >= 3 and consecutive([run.fire_time.timestamp() for run in runs])
    for run in runs:
        assert run.rq_job_id == keys.occurrence_id(row.template_id, round(run.fire_time.timestamp() * 1000))
        assert (run.status, run.reason) == ('finished', ''), [(r.fire_time, r.status, r.reason) for r in runs]
        assert run.delay is not None and 0 <= run.delay < 1
        late_by = (run.enqueued_at - run.fire_time).total_seconds()
        # Enqueued at its slot plus its delay (planned before the next slot, above), give or take the test's ticks:
        # 20 ms apart, and slower on a loaded machine (a delay of 0.99 s once came 1.005 s late in CI).
        assert run.delay - 0.01 <= late_by < run.delay + TICK_LAG


def test_the_api_schedules_a_jittered_template(connection):
    scheduler = Scheduler(connection=connection)
    job = scheduler.schedule(datetime.now(UTC), tasks.add, interval=10, jitter=4.5, catchup='all', catchup_limit=3)
    ours = job.meta[keys.META_KEY]
    assert (ours['jitter'], ours['catchup'], ours['catchup_limit']) == (4.5, 'all', 3)
    with pytest.raises(ValueError, match=r'^jitter:'):
        scheduler.schedule(datetime.now(UTC), tasks.add, interval=10, jitter=float('nan'))
    with pytest.raises(ValueError, match=r'^catchup:'):
        scheduler.cron('* * * * *', tasks.add, catchup=7)
    with pytest.raises(ValueError, match=r'^valid_until:'):
        scheduler.cron('* * * * *', tasks.add, valid_until='never')
    with pytest.raises(ValueError, match=r'^jitter:'):
        scheduler.schedule(datetime.now(UTC), tasks.add, jitter=1)  # a one-off has no slots
    with pytest.raises(TypeError, match=r'^jiter: not a keyword argument'):
        scheduler.schedule(datetime.now(UTC), tasks.add, interval=10, jiter=1)  # type: ignore[call-arg]
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1


# -- window of validity ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_schedule_runs_only_inside_its_window_then_is_finished_until_the_window_is_extended(leader, connection):
    now = datetime.now(UTC)
    row = every_second(valid_from=now + timedelta(seconds=1.05), valid_until=now + timedelta(seconds=3.5))
    assert row.next_runs(10, after=now) == [row.scheduled_time + timedelta(seconds=k) for k in (1, 2, 3)]
    lead_for(leader, 4.2)
    row.refresh_from_db()
    fire_times = slots_of(row)
    assert fire_times and all(row.valid_from.timestamp() <= t <= row.valid_until.timestamp() for t in fire_times)
    assert consecutive(fire_times)
    assert row.is_finished and row.next_run is None and row.next_runs() == []
    assert RepeatableJob.objects.filter(RepeatableJob.finished_q()).filter(pk=row.pk).exists()
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is None
    assert keys.parse_done(connection.hget(keys.VERSIONS_KEY, row.template_id).decode())
    leader.scheduler.move_due_jobs()
    from django_rq_scheduled.sync import reconcile

    reconcile()  # a finished schedule stays finished
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is None
    row.valid_until = datetime.now(UTC) + timedelta(seconds=2)
    row.save()  # extended: it runs again, from its next slot
    assert not row.is_finished
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None
    lead_for(leader, 1.5)
    assert len(slots_of(row)) > len(fire_times)


# -- catch-up after a real scheduler process was stopped ---------------------------------------------------------

CREATE_ROW = """
import json
from django.utils import timezone
from django_rq_scheduled.models import RepeatableJob
row = RepeatableJob.objects.create(
    name='catching-up', callable='tests.tasks.add', args=[1, 2], scheduled_time=timezone.now(), interval=1,
    interval_unit='seconds', catchup={policy!r}, catchup_limit=2,
)
print(json.dumps([row.pk, row.scheduled_time.timestamp()]))
"""
READ_RUNS = """
import json
from django_rq_scheduled import feedback, history
from django_rq_scheduled.models import RepeatableJob
from django_rq_scheduled.servers import servers
connection = next(iter(servers().schedulers.values())).connection
while feedback.apply_feedback(connection):
    pass
row = RepeatableJob.objects.get(pk={pk})
print(json.dumps([[r.rq_job_id, r.fire_time.timestamp(), r.status, r.reason] for r in row.runs.all()]))
"""


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['latest', 'none', 'all'])
def test_every_slot_missed_while_the_scheduler_was_stopped_is_run_or_recorded_skipped_once(
    connection, redis_url, policy
):
    first = scheduler_process(redis_url, '--interval', '0.2', name='before')
    output = OutputReader(first)
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=30)
        pk, start = json.loads(django_shell(redis_url, CREATE_ROW.format(policy=policy)))
        wait_for(lambda: len(queue_ids(connection)) >= 2, timeout=10)
        assert stop(first) == 0
        time.sleep(4.5)  # the scheduler is down: four or five slots pass
        second = scheduler_process(redis_url, '--interval', '0.2', name='after')
        output_after = OutputReader(second)
        try:
            wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=30)
            before = len(queue_ids(connection))
            wait_for(lambda: len(queue_ids(connection)) >= before + 2, timeout=10)
            assert stop(second) == 0
        finally:
            kill(second)
    finally:
        kill(first)
    assert 'Traceback' not in output.text + output_after.text
    runs = json.loads(django_shell(redis_url, READ_RUNS.format(pk=pk)))
    fire_times = sorted(fire_time for _, fire_time, _, _ in runs)
    assert fire_times[0] == pytest.approx(start, abs=0.001)
    assert consecutive(fire_times)  # every slot accounted for, none twice (a run's job id is unique)
    assert len({job_id for job_id, *_ in runs}) == len(runs)
    skipped = [(fire_time, reason) for _, fire_time, status, reason in runs if status == 'skipped']
    reasons = {reason for _, reason in skipped}
    expected = {'latest': catchup.COALESCED, 'none': catchup.CATCHUP_NONE, 'all': catchup.CATCHUP_LIMIT}[policy]
    assert skipped and reasons == {expected}, runs
    enqueued = {fire_time for job_id, fire_time, status, _ in runs if status != 'skipped'}
    assert {job_id for job_id, _, status, _ in runs if status != 'skipped'} >= set(queue_ids(connection))
    if policy == 'all':  # the two newest missed slots ran, then the one on time
        newest_skipped = max(fire_time for fire_time, _ in skipped)
        assert {newest_skipped + 1, newest_skipped + 2, newest_skipped + 3} <= {round(t, 3) for t in enqueued}


# -- backfill -------------------------------------------------------------------------------------------------------


def schedules(*arguments: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command('schedules', *arguments, stdout=out, stderr=err)
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0)
    return status, out.getvalue(), err.getvalue()


def past_minutes(minutes: int) -> RepeatableJob:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return RepeatableJob.objects.create(
        name='minutely', callable='tests.tasks.add', args=[1, 2], scheduled_time=now - timedelta(minutes=minutes),
        interval=1, interval_unit='minutes', enabled=False,  # the loop does not run it: only the backfill does
    )  # fmt: skip


def test_backfill_twice_over_the_same_range_runs_each_slot_once(connection, redis_url):
    row = past_minutes(10)
    start, end = row.scheduled_time, row.scheduled_time + timedelta(minutes=9)
    iso = (start.isoformat(), end.isoformat())
    status, out, err = schedules('backfill', 'minutely', '--from', iso[0], '--to', iso[1], '--dry-run')
    assert status == 0 and out.count('would enqueue') == 10, err
    assert queue_ids(connection) == [] and Run.objects.count() == 0
    status, out, err = schedules('backfill', 'minutely', '--from', iso[0], '--to', iso[1])
    assert status == 0 and out.count('  enqueued  ') == 10, err
    assert 'minutely: 10 slots, 10 enqueued, 0 already ran.' in out
    status, out, _ = schedules('backfill', 'minutely', '--from', iso[0], '--to', iso[1])
    assert status == 0 and out.count(RAN) == 10 + 1 and len(queue_ids(connection)) == 10
    run_worker(redis_url)
    runs = list(row.runs.order_by('fire_time'))
    assert [run.fire_time for run in runs] == [start + timedelta(minutes=k) for k in range(10)]
    assert {run.trigger for run in runs} == {'schedule'}
    assert all(
        run.rq_job_id == keys.occurrence_id(row.template_id, round(run.fire_time.timestamp() * 1000)) for run in runs
    )
    from django_rq_scheduled import history

    history.ingest_outcomes(connection)
    assert {run.status for run in row.runs.all()} == {'finished'}


def test_backfill_of_a_schedule_whose_callable_is_no_longer_allowed_enqueues_nothing(connection, settings):
    row = past_minutes(3)
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.noop']}
    start = row.scheduled_time
    end = start + timedelta(minutes=2)
    status, _, err = schedules('backfill', 'minutely', '--from', start.isoformat(), '--to', end.isoformat())
    assert status != 0 and 'ALLOWED_CALLABLES' in err
    assert queue_ids(connection) == [] and Run.objects.count() == 0


def test_two_backfills_at_once_run_a_slot_once_redis_decides(connection):
    row = past_minutes(3)
    slots = slots_between(row, row.scheduled_time, row.scheduled_time + timedelta(minutes=2))
    first = backfill(row, slots)
    Run.objects.all().delete()  # as if the second backfill had read the database before the first wrote to it
    second = backfill(row, slots)
    assert [r.done for r in first] == ['enqueued'] * 3 and [r.done for r in second] == [RAN] * 3
    assert len(queue_ids(connection)) == 3


def test_backfill_runs_a_slot_recorded_as_skipped_and_reopens_its_run(connection):
    row = past_minutes(2)
    job_id = keys.occurrence_id(row.template_id, round(row.scheduled_time.timestamp() * 1000))
    Run.objects.create(
        schedule=row, schedule_name=row.name, rq_job_id=job_id, status='skipped', reason='catch-up none',
        fire_time=row.scheduled_time, queue='default',
    )  # fmt: skip
    [result] = backfill(row, slots_between(row, row.scheduled_time, row.scheduled_time + timedelta(seconds=30)))
    assert result.done == 'enqueued' and queue_ids(connection) == [job_id]
    run = Run.objects.get(rq_job_id=job_id)
    assert (run.status, run.reason) == ('queued', 'backfilled')


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (('--from', '2020-01-01T00:00', '--to', '2999-01-01T00:00'), '--to is in the future'),
        (('--from', '2020-01-02T00:00', '--to', '2020-01-01T00:00'), '--from must be before --to'),
        (('--from', 'START', '--to', 'END', '--max', '5'), 'More than 5 slots'),
    ],
)
def test_backfill_refuses_future_ranges_and_too_many_slots_and_writes_nothing(connection, arguments, message):
    row = past_minutes(30)
    times = {'START': row.scheduled_time.isoformat(), 'END': (row.scheduled_time + timedelta(minutes=20)).isoformat()}
    status, out, err = schedules('backfill', 'minutely', *(times.get(argument, argument) for argument in arguments))
    assert status == 1 and message in err and out == ''
    assert Run.objects.count() == 0 and queue_ids(connection) == []


def test_backfill_refuses_a_bad_time_naming_the_option():
    past_minutes(1)
    with pytest.raises(CommandError, match=r"--from: expected an ISO 8601 time.*'yesterday'"):
        schedules('backfill', 'minutely', '--from', 'yesterday', '--to', '2020-01-01T00:00')


# -- the rows: window, previews, and an edit racing a jittered slot ------------------------------------------------


def test_a_row_reads_its_window_first_due_previews_and_finished_state():
    start = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    row = RepeatableJob(
        name='w', callable='tests.tasks.add', scheduled_time=start, interval=10, interval_unit='minutes',
        valid_from=start + timedelta(minutes=25), valid_until=start + timedelta(minutes=55),
    )  # fmt: skip
    assert row.first_due(start - timedelta(days=1)) == start + timedelta(minutes=30)
    assert row.next_runs(10, after=start - timedelta(days=1)) == [start + timedelta(minutes=m) for m in (30, 40, 50)]
    assert row.first_due(start + timedelta(minutes=51), begun=True) is None  # the next slot is past the window
    assert not row.is_finished
    row.valid_until = datetime.now(UTC) - timedelta(seconds=1)
    assert row.is_finished and row.next_runs() == []
    from django_rq_scheduled.models import CronJob

    nightly = CronJob(name='n', callable='tests.tasks.add', cron_string='0 3 * * *', timezone='UTC')
    nightly.valid_from = datetime(2030, 6, 3, 3, 0, tzinfo=UTC)
    assert nightly.first_due(datetime(2030, 6, 1, tzinfo=UTC)) == nightly.valid_from  # at or after: itself
    assert nightly.next_runs(2, after=datetime(2030, 6, 1, tzinfo=UTC))[0] == nightly.valid_from


def test_an_edit_while_a_slot_waits_for_its_jitter_delay_keeps_that_slot(connection):
    import time_machine

    t0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(t0, tick=False) as clock:
        row = RepeatableJob.objects.create(
            name='jittery', callable='tests.tasks.add', scheduled_time=t0, interval=10, interval_unit='seconds',
            jitter=9,
        )  # fmt: skip
        scheduler = Scheduler(connection=connection)
        assert scheduler.enqueue_jobs() == []  # the slot waits for its delay
        due = connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id)
        assert t0.timestamp() < due < t0.timestamp() + 9
        clock.move_to(datetime.fromtimestamp((t0.timestamp() + due) / 2, tz=UTC))  # after the slot, before its due
        row.description = 'edited while its slot waits'
        row.save()  # the template is written afresh, due at its slot (not at the slot after now)
        assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) == t0.timestamp()
        runs = scheduler.enqueue_jobs()  # at once, or after a new delay
        clock.move_to(t0 + timedelta(seconds=9.5))  # every delay is over, the next slot not yet due
        runs += scheduler.enqueue_jobs()
        assert [run.id for run in runs] == [keys.occurrence_id(row.template_id, round(t0.timestamp() * 1000))]


@pytest.mark.parametrize(
    ('key', 'value'),
    [('jitter', 'x'), ('valid_until', 'never'), ('catchup', 7), ('catchup_limit', -1), ('jitter', float('inf'))],
)
def test_a_template_with_a_foreign_policy_value_is_dead_lettered_naming_the_key_and_the_loop_goes_on(
    connection, key, value
):
    scheduler = Scheduler(connection=connection)
    now = datetime.now(UTC)
    bad = scheduler.schedule(now - timedelta(seconds=1), tasks.add, interval=60, id='bad')
    bad.meta[keys.META_KEY][key] = value  # written by someone else
    bad.save_meta()
    good = scheduler.schedule(now - timedelta(seconds=1), tasks.add, interval=60, id='good', jitter=0)
    runs = scheduler.enqueue_jobs()
    assert [run.id.rpartition('_at_')[0] for run in runs] == [good.id]
    reason = json.loads(scheduler.dead_letters()['bad'])['reason']
    assert reason.startswith(f'cannot plan: {key}:'), reason
    assert scheduler.enqueue_jobs() == []  # taken out of the schedule: no crash loop
