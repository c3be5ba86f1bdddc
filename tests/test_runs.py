"""Run history: each occurrence of a schedule row becomes a ``Run`` with its outcome, read in by the leader from
real RQ workers (plain ``rq worker`` processes, without Django) through Redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.db import OperationalError
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from rq.registry import StartedJobRegistry

from django_rq_scheduled import Scheduler, history
from django_rq_scheduled.core import keys
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import RepeatableJob, Run, ScheduledJob
from django_rq_scheduled.servers import run_now
from django_rq_scheduled.signals import run_failed, run_finished, run_skipped
from tests import tasks
from tests.conftest import ROOT, run_worker
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
FIRST_RUN_IN = timedelta(milliseconds=100)


def every_minute(name: str = 'job', callable: str = 'tests.tasks.add', **options: object) -> RepeatableJob:
    defaults: dict[str, object] = {
        'args': [1, 2], 'interval': 1, 'interval_unit': 'minutes', 'scheduled_time': datetime.now(UTC) + FIRST_RUN_IN,
    }  # fmt: skip
    row = RepeatableJob.objects.create(name=name, callable=callable, **{**defaults, **options})
    time.sleep(FIRST_RUN_IN.total_seconds() + 0.05)  # and a margin for the Redis server's clock
    return row


def test_a_run_that_succeeds_is_recorded_with_its_worker_times_and_summary(leader, redis_url):
    row = every_minute()
    leader()
    [run] = row.runs.all()
    assert (run.status, run.trigger, run.queue) == ('queued', 'schedule', 'default')
    assert run.enqueued_at is not None and run.fire_time is not None and run.schedule_name == 'job'
    assert run.rq_job_id == keys.occurrence_id(row.template_id, round(run.fire_time.timestamp() * 1000))
    run_worker(redis_url)
    leader()
    run.refresh_from_db()
    row.refresh_from_db()
    assert run.status == 'finished' and run.worker and run.error == ''
    assert run.started_at <= run.ended_at and run.duration is not None
    assert (row.last_status, row.success_count, row.failure_count, row.consecutive_failures) == ('finished', 1, 0, 0)
    assert row.last_success_at == run.ended_at and row.last_failure_at is None


def test_a_run_that_raises_is_failed_with_its_error_and_traceback(leader, redis_url):
    row = every_minute(callable='tests.tasks.fail', args=['the disk is full'])
    leader()
    run_worker(redis_url)
    leader()
    [run] = row.runs.all()
    row.refresh_from_db()
    assert run.status == 'failed' and run.reason == ''
    assert run.error_headline == 'ValueError: the disk is full'
    assert 'Traceback' in run.error and 'tests/tasks.py' in run.error
    assert (row.last_status, row.failure_count, row.consecutive_failures) == ('failed', 1, 1)
    assert row.last_failure_at == run.ended_at and row.last_success_at is None


def test_failures_in_a_row_are_counted_and_a_success_resets_the_streak(leader, redis_url, connection):
    row = every_minute(callable='tests.tasks.fail', args=['no'], scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    for _ in range(2):
        run_now(row)
    run_worker(redis_url)
    leader()
    row.refresh_from_db()
    assert (row.failure_count, row.consecutive_failures, row.last_status) == (2, 2, 'failed')
    assert sorted(run.trigger for run in row.runs.all()) == ['manual', 'manual']
    RepeatableJob.objects.filter(pk=row.pk).update(callable='tests.tasks.add', args=[1, 1])
    run_now(row)
    run_worker(redis_url)
    leader()
    row.refresh_from_db()
    assert (row.failure_count, row.success_count, row.consecutive_failures, row.last_status) == (2, 1, 0, 'finished')


def test_a_run_past_its_timeout_is_failed_with_the_reason_timeout(leader, redis_url):
    row = every_minute(callable='tests.tasks.slow', args=[10], timeout=1)
    leader()
    run_worker(redis_url)
    leader()
    [run] = row.runs.all()
    assert (run.status, run.reason) == ('failed', 'timeout')
    assert run.error_headline.startswith('rq.timeouts.JobTimeoutException') or 'JobTimeoutException' in run.error


def test_a_run_whose_worker_is_killed_is_failed_with_the_reason_worker_died(leader, redis_url, connection):
    row = every_minute(callable='tests.tasks.slow', args=[60])
    leader()
    worker = start_worker(redis_url)
    try:
        wait_for(lambda: leader() or row.runs.get().status == 'started', timeout=30)
        run = row.runs.get()
        assert run.worker and run.started_at is not None
        kill_with_its_children(worker)  # the worker and its work horse, as a lost machine would
    finally:
        kill_with_its_children(worker)
    # RQ gives up on a job once its worker's heartbeat lapses (a minute and more): here it lapses at once.
    registry = StartedJobRegistry('default', connection=connection)
    connection.zadd(registry.key, {member: 1 for member in connection.zrange(registry.key, 0, -1)})
    caring = DatabaseSync(reconcile_interval=0, background=False)  # its periodic care: RQ's cleanup of abandoned jobs
    caring(leader.scheduler)
    caring(leader.scheduler)
    run.refresh_from_db()
    row.refresh_from_db()
    assert (run.status, run.reason) == ('failed', 'worker died')
    assert row.consecutive_failures == 1


def test_an_occurrence_skipped_by_the_overlap_rule_is_recorded_as_skipped(leader, redis_url):
    row = every_minute(overlap='skip', interval=1, interval_unit='seconds')
    leader()
    time.sleep(1.1)  # the next slot comes while the first run still waits in its queue
    leader()
    runs = list(row.runs.order_by('id'))
    assert [(run.status, run.reason) for run in runs] == [('queued', ''), ('skipped', 'overlap')]
    assert runs[1].rq_job_id == keys.occurrence_id(row.template_id, round(runs[1].fire_time.timestamp() * 1000))
    row.refresh_from_db()
    assert row.last_status == 'skipped'


def test_a_run_missed_past_its_grace_is_recorded_as_skipped(leader):
    row = ScheduledJob.objects.create(
        name='late', callable='tests.tasks.add', args=[1, 1], misfire_grace=1,
        scheduled_time=datetime.now(UTC) + timedelta(milliseconds=50),
    )  # fmt: skip
    time.sleep(1.3)  # the loop was down when it was due
    leader()
    [run] = row.runs.all()
    assert (run.status, run.reason, run.rq_job_id) == ('skipped', 'misfire grace', row.template_id)
    assert run.enqueued_at is None and run.ended_at is not None


def test_a_run_by_hand_is_recorded_at_once_and_completed_by_its_worker(leader, redis_url):
    row = every_minute(name='by hand', scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    job = run_now(row)
    [run] = row.runs.all()
    assert (run.status, run.trigger, run.rq_job_id, run.fire_time) == ('queued', 'manual', job.id, None)
    run_worker(redis_url)
    leader()
    run.refresh_from_db()
    assert run.status == 'finished'


def test_records_read_twice_change_nothing(leader, redis_url, connection):
    row = every_minute(callable='tests.tasks.fail', args=['x'])
    leader()
    run_worker(redis_url)
    outcomes = connection.lrange(keys.OUTCOMES_KEY, 0, -1)
    leader()
    connection.rpush(keys.OUTCOMES_KEY, *outcomes)  # as if a crash had lost the trim
    leader()
    row.refresh_from_db()
    assert (row.failure_count, row.consecutive_failures, Run.objects.count()) == (1, 1, 1)
    assert connection.llen(keys.OUTCOMES_KEY) == 0


def test_outcomes_wait_in_redis_while_the_database_is_down(leader, redis_url, connection, monkeypatch):
    row = every_minute()
    leader()
    run_worker(redis_url)

    def database_down(*args: object, **kwargs: object) -> None:
        raise OperationalError('the database is away')

    monkeypatch.setattr(history, 'record_facts', database_down)
    with pytest.raises(OperationalError):
        history.ingest_outcomes(connection)
    assert connection.llen(keys.OUTCOMES_KEY) == 1
    monkeypatch.undo()
    leader()
    assert row.runs.get().status == 'finished' and connection.llen(keys.OUTCOMES_KEY) == 0


def test_foreign_or_broken_outcome_records_are_dropped_and_the_rest_read_in(leader, redis_url, connection):
    row = every_minute()
    leader()
    connection.rpush(
        keys.OUTCOMES_KEY,
        b'\xff\xfe not json',
        json.dumps({'job': 'someone-elses-job', 'status': 'finished'}),
        json.dumps({'job': 'drqs-nosuchmodel-1_at_5', 'status': 'finished'}),
        json.dumps({'job': f'{row.template_id}_at_5', 'status': 'exploded'}),
        json.dumps({'job': f'{row.template_id}_at_5', 'status': 'finished', 'ended': 'yesterday'}),
        json.dumps({'job': f'{row.template_id}_at_5', 'status': 'finished', 'ended': 1e300}),
        json.dumps([1, 2]),
    )
    run_worker(redis_url)
    leader()
    assert row.runs.get().status == 'finished'
    assert connection.llen(keys.OUTCOMES_KEY) == 0


def test_a_job_gone_from_redis_before_it_ran_is_canceled_and_its_late_report_still_counts(leader, connection):
    row = every_minute()
    leader()
    run = row.runs.get()
    connection.delete(keys.job_key(run.rq_job_id))
    leader()
    run.refresh_from_db()
    assert (run.status, run.reason) == ('canceled', history.GONE)
    connection.rpush(keys.OUTCOMES_KEY, json.dumps({'job': run.rq_job_id, 'status': 'finished', 'ended': time.time()}))
    leader()
    run.refresh_from_db()
    row.refresh_from_db()
    assert run.status == 'finished' and row.success_count == 1


def test_signals_carry_the_schedule_and_the_run_and_a_raising_receiver_stops_nothing(leader, redis_url, caplog):
    ok = every_minute(name='ok')
    bad = every_minute(name='bad', callable='tests.tasks.fail', args=['x'])
    skipping = every_minute(name='skipping', overlap='skip', interval=1, interval_unit='seconds')
    received: list[tuple[str, str, str]] = []

    def receiver(signal_name: str):
        def receive(sender: type, schedule: object, run: Run, **kwargs: object) -> None:
            received.append((signal_name, str(schedule), run.status))

        return receive

    def broken(**kwargs: object) -> None:
        raise RuntimeError('a receiver with a bug')

    handlers = [
        (run_finished, receiver('finished')),
        (run_failed, receiver('failed')),
        (run_skipped, receiver('skipped')),
    ]
    for signal_, handler in handlers:
        signal_.connect(broken, weak=False)
        signal_.connect(handler, weak=False)
    try:
        leader()
        time.sleep(1.1)
        leader()
        run_worker(redis_url, timeout=60)
        leader.hook(leader.scheduler)  # reads the outcomes in; moves nothing more
    finally:
        for signal_, handler in handlers:
            signal_.disconnect(broken)
            signal_.disconnect(handler)
    assert sorted(received) == [
        ('failed', 'bad', 'failed'), ('finished', 'ok', 'finished'), ('finished', 'skipping', 'finished'),
        ('skipped', 'skipping', 'skipped'),
    ]  # fmt: skip
    assert 'a receiver with a bug' in caplog.text
    assert ok.runs.get().status == 'finished' and bad.runs.get().status == 'failed'
    assert sorted(run.status for run in skipping.runs.all()) == ['finished', 'skipped']


def test_a_plain_rq_worker_without_django_settings_records_outcomes(leader, redis_url):
    row = every_minute(callable='tests.tasks.fail', args=['plain'])
    leader()
    env = {name: value for name, value in os.environ.items() if name != 'DJANGO_SETTINGS_MODULE'}
    command = [sys.executable, '-m', 'rq.cli', 'worker', '--burst', '--url', redis_url, 'default']
    subprocess.run(command, cwd=ROOT, env={**env, 'PYTHONPATH': str(ROOT)}, check=True, timeout=60, capture_output=True)
    leader()
    assert row.runs.get().error_headline == 'ValueError: plain'


def test_the_users_own_callbacks_given_through_the_api_keep_working(connection, redis_url):
    from rq import Callback

    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_at(
        datetime.now(UTC) - timedelta(seconds=1), tasks.add, 2, 3, on_success=Callback('tests.tasks.user_callback')
    )
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    run_worker(redis_url)
    traces = [json.loads(line) for line in connection.lrange(tasks.TRACE_KEY, 0, -1)]
    assert [(trace['label'], trace['args']) for trace in traces] == [('user-callback', [5])]


def kill_with_its_children(process: subprocess.Popen) -> None:
    """SIGKILL to a process and to its children: RQ's work horse runs in a session of its own, so killing the
    worker's process group would leave it running its job."""
    children = [
        int(entry.name)
        for entry in Path('/proc').iterdir()
        if entry.name.isdigit() and _parent_of(entry) == process.pid
    ]
    for pid in [process.pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)
    for pid in children:
        wait_for(lambda pid=pid: _gone(pid))


def _gone(pid: int) -> bool:
    try:
        return ') Z ' in Path(f'/proc/{pid}/stat').read_text()  # a zombie nobody reaps here has stopped all the same
    except FileNotFoundError:
        return True


def _parent_of(entry: Path) -> int | None:
    try:
        return int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def start_worker(url: str) -> subprocess.Popen:
    command = [sys.executable, '-m', 'rq.cli', 'worker', '--url', url, 'default']
    env = {**os.environ, 'DRQS_TEST_REDIS_URL': url, 'PYTHONPATH': str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def test_a_job_key_holding_the_wrong_type_cancels_its_run_and_the_sweep_goes_on(leader, connection):
    first, second = every_minute('first'), every_minute('second')
    leader()
    broken = first.runs.get()
    connection.delete(keys.job_key(broken.rq_job_id))
    connection.set(keys.job_key(broken.rq_job_id), 'not a hash')  # written by someone else
    connection.hset(keys.job_key(second.runs.get().rq_job_id), 'status', 'started')
    leader()
    broken.refresh_from_db()
    assert broken.status == 'canceled' and broken.reason.startswith('job key unreadable: WRONGTYPE')
    assert second.runs.get().status == 'started'


def background_ticks(scheduler: Scheduler, done, ticks: int = 5) -> bool:
    """Ticks of the hook in the background, as ``manage.py rqscheduler`` runs it, until ``done()``. A round that
    meets a locked table (the tests' in-memory SQLite fails a write beside another connection's read at once, where
    a database file waits) is done again at the next tick, as in production."""
    hook = DatabaseSync(reconcile_interval=3600)
    for _ in range(ticks):
        hook(scheduler)
        hook.wait(30)
        if done():
            return True
    return False


def test_an_outcome_list_of_the_wrong_type_stops_no_other_step(connection, redis_url, caplog):
    row = every_minute()
    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    connection.set(keys.OUTCOMES_KEY, 'foreign')
    assert background_ticks(scheduler, lambda: RepeatableJob.objects.get(pk=row.pk).run_count == 1)
    assert row.runs.get().status == 'queued'  # feedback and runs of the loop still landed
    assert 'WRONGTYPE' in caplog.text


def test_a_list_of_the_loops_records_of_the_wrong_type_holds_up_no_outcome(connection, redis_url, caplog):
    row = every_minute()
    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    DatabaseSync(reconcile_interval=3600, background=False)(scheduler)
    run_worker(redis_url)
    connection.delete(keys.RUNS_KEY)
    connection.set(keys.RUNS_KEY, 'foreign')
    assert background_ticks(scheduler, lambda: connection.llen(keys.OUTCOMES_KEY) == 0)
    assert row.runs.get().status == 'finished'
    assert 'WRONGTYPE' in caplog.text


def test_a_run_whose_two_records_wait_together_is_written_once_complete(leader, redis_url, connection):
    row = every_minute()
    leader.scheduler.move_due_jobs()  # its enqueue record waits in Redis: the leader has not read it yet
    run_worker(redis_url)
    assert connection.llen(keys.RUNS_KEY) == 1 and connection.llen(keys.OUTCOMES_KEY) == 1
    with CaptureQueriesContext(db_connection) as queries:
        leader.hook(leader.scheduler)
    run = row.runs.get()
    assert (run.status, run.worker != '', run.enqueued_at is not None, run.ended_at is not None) == (
        'finished',
        True,
        True,
        True,
    )
    updates = [query for query in queries if query['sql'].startswith(f'UPDATE "{Run._meta.db_table}"')]
    taking_the_turn = [query for query in updates if '= -1' in ' '.join(query['sql'].split())]  # PostgreSQL: '=  -1'
    assert updates == taking_the_turn  # only the update that takes the writer's turn
    assert connection.llen(keys.RUNS_KEY) == connection.llen(keys.OUTCOMES_KEY) == 0
    row.refresh_from_db()
    assert (row.success_count, row.last_status, row.recent_runs) == (1, 'finished', [[run.pk, 'finished']])


def test_outcome_records_naming_impossible_rows_are_dropped(leader, connection):
    row = every_minute()
    connection.rpush(
        keys.OUTCOMES_KEY,
        json.dumps({'job': 'drqs-repeatablejob-abc_at_5', 'status': 'finished'}),
        json.dumps({'job': f'drqs-repeatablejob-{"9" * 40}_at_5', 'status': 'finished'}),
        json.dumps({'job': f'{row.template_id}_at_{"9" * 30}', 'status': 'failed', 'started': -1e20}),
        json.dumps({'job': f'{row.template_id}_now_1', 'status': 'stopped', 'worker': ['x'], 'error': {'a': 1}}),
    )
    foreign = {'owner': f'django_rq_scheduled.repeatablejob:{"9" * 40}', 'schedule': 'drqs-repeatablejob-9', 'runs': 1}
    connection.lpush(keys.RUNS_KEY, json.dumps({**foreign, 'outcome': 'enqueued', 'job': 'x', 'at': 1.0}))
    leader()
    assert connection.llen(keys.OUTCOMES_KEY) == 0 and connection.llen(keys.RUNS_KEY) == 0
    manual = Run.objects.get(rq_job_id=f'{row.template_id}_now_1')
    assert (manual.status, manual.worker, manual.error, manual.trigger) == ('stopped', '', '', 'manual')
    row.refresh_from_db()
    assert row.run_count == 1 and row.runs.filter(trigger='schedule').count() == 1  # the loop's own record landed


def test_retry_of_a_callable_the_allow_list_now_refuses_enqueues_nothing(leader, connection, settings, client):
    from django.contrib.auth.models import User
    from django.urls import reverse

    row = every_minute(callable='tests.tasks.fail', args=['x'])
    leader()
    run = row.runs.get()
    Run.objects.filter(pk=run.pk).update(status='failed')
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    client.force_login(User.objects.create_superuser('admin', 'a@example.com', 'pw'))
    queued = connection.llen('rq:queue:default')
    response = client.post(
        reverse('admin:django_rq_scheduled_run_changelist'),
        {'action': 'retry_selected', '_selected_action': [run.pk]},
        follow=True,
    )
    assert 'was not retried' in response.content.decode()
    assert connection.llen('rq:queue:default') == queued and Run.objects.filter(trigger='manual').count() == 0
