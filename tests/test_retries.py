"""Retries of a schedule's runs (``retries``, ``retry_delays``), run by real RQ workers and a real leader: one
``Run`` per occurrence with its attempts, counted once at its end; delayed retries moved back by the leader."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from django_rq_scheduled import current_fire_time
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.allowlist import AllowList
from django_rq_scheduled.core.errors import LeadershipLost
from django_rq_scheduled.core.moves import Planner
from django_rq_scheduled.models import CronJob, RepeatableJob, Run, ScheduledJob
from django_rq_scheduled.servers import run_now
from django_rq_scheduled.signals import run_failed
from tests import tasks
from tests.conftest import run_worker
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
FIRST_RUN_IN = timedelta(milliseconds=100)


def every_minute(name: str, callable: str, args: list, **options: object) -> RepeatableJob:
    row = RepeatableJob.objects.create(
        name=name, callable=callable, args=args, interval=1, interval_unit='minutes',
        scheduled_time=datetime.now(UTC) + FIRST_RUN_IN, **options,
    )  # fmt: skip
    time.sleep(FIRST_RUN_IN.total_seconds() + 0.05)
    return row


def run_to_the_end(leader, redis_url: str, row, *, timeout: float = 30) -> Run:
    """Leader ticks (moves, releases due retries, reads runs in) and burst workers, until the run has ended."""

    def ended() -> bool:
        leader()
        release(leader)
        run_worker(redis_url)
        leader()
        run = row.runs.first()
        return run is not None and run.status not in ('queued', 'started')

    wait_for(ended, timeout=timeout)
    return row.runs.get()


def release(leader) -> float | None:
    """What the loop does after each move (its lease taken again: the test's ticks are far apart)."""
    assert leader.scheduler.acquire_lock()
    return leader.scheduler.mover.release_due_retries()


def starts(connection, name: str) -> list[float]:
    return [float(value) for value in connection.lrange(f'{tasks.ATTEMPTS_KEY}:{name}:started', 0, -1)]


def test_a_run_that_fails_twice_then_succeeds_is_one_finished_run_of_three_attempts(leader, redis_url, connection):
    row = every_minute('flaky', 'tests.tasks.flaky', ['flaky', 2], retries=3, retry_delays=[0])
    failures = []
    run_failed.connect(lambda **kwargs: failures.append(kwargs['run']), weak=False, dispatch_uid='flaky')
    try:
        run = run_to_the_end(leader, redis_url, row)
    finally:
        run_failed.disconnect(dispatch_uid='flaky')
    row.refresh_from_db()
    assert (run.status, run.attempts, run.error, run.reason) == ('finished', 3, '', '')
    assert len(starts(connection, 'flaky')) == 3
    assert (row.success_count, row.failure_count, row.consecutive_failures, row.last_status) == (1, 0, 0, 'finished')
    assert failures == []


def test_a_run_that_always_fails_is_one_failed_run_counted_once(leader, redis_url, connection):
    row = every_minute('doomed', 'tests.tasks.flaky', ['doomed', 99], retries=2)
    failures = []
    run_failed.connect(lambda **kwargs: failures.append(kwargs['run']), weak=False, dispatch_uid='doomed')
    try:
        run = run_to_the_end(leader, redis_url, row)
    finally:
        run_failed.disconnect(dispatch_uid='doomed')
    row.refresh_from_db()
    assert (run.status, run.attempts) == ('failed', 3)
    assert run.error.startswith('ValueError: attempt 3 of doomed fails')
    assert (row.failure_count, row.consecutive_failures, row.success_count) == (1, 1, 0)
    assert [failed.rq_job_id for failed in failures] == [run.rq_job_id]


def test_retry_delays_are_honoured_and_the_leader_moves_the_retries_back(leader, redis_url, connection):
    row = every_minute('patient', 'tests.tasks.flaky', ['patient', 2], retries=2, retry_delays=[1, 2])
    leader()
    run_worker(redis_url)  # the first attempt fails: RQ puts the retry in its registry, which no worker here serves
    leader()
    run = row.runs.get()
    assert (run.status, run.attempts) == ('queued', 1) and run.reason == 'retrying'
    assert run.error.startswith('ValueError: attempt 1 of patient fails')
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == [run.rq_job_id]
    run = run_to_the_end(leader, redis_url, row)
    assert (run.status, run.attempts) == ('finished', 3)
    first, second, third = starts(connection, 'patient')
    assert second - first >= 1 and third - second >= 2  # each start after the one before it, plus its delay
    fire_times = {
        datetime.fromisoformat(value.decode())
        for value in connection.lrange(f'{tasks.ATTEMPTS_KEY}:patient:fire', 0, -1)
    }
    assert fire_times == {run.fire_time}  # every attempt is for the same slot


def test_the_leader_leaves_a_queue_to_rqs_own_scheduler_when_it_holds_it(leader, redis_url, connection):
    row = every_minute('held', 'tests.tasks.flaky', ['held', 1], retries=1, retry_delays=[1])
    leader()
    run_worker(redis_url)
    connection.set(keys.RQ_SCHEDULER_LOCK_PREFIX + 'default', 'an rq worker --with-scheduler', ex=60)
    time.sleep(2.1)
    release(leader)
    registry = ScheduledJobRegistry('default', connection=connection)
    assert registry.get_job_ids() == [row.runs.get().rq_job_id]  # RQ's scheduler moves it, not us
    connection.delete(keys.RQ_SCHEDULER_LOCK_PREFIX + 'default')
    release(leader)
    assert registry.get_job_ids() == []
    run_worker(redis_url)
    leader()
    assert row.runs.get().status == 'finished'


def test_a_one_off_and_a_run_by_hand_are_retried_too(leader, redis_url, connection):
    once = ScheduledJob.objects.create(
        name='once', callable='tests.tasks.flaky', args=['once', 1], retries=1,
        scheduled_time=datetime.now(UTC) + FIRST_RUN_IN,
    )  # fmt: skip
    time.sleep(FIRST_RUN_IN.total_seconds() + 0.05)
    assert (run_to_the_end(leader, redis_url, once).status, once.runs.get().attempts) == ('finished', 2)
    periodic = RepeatableJob.objects.create(
        name='by-hand', callable='tests.tasks.flaky', args=['by-hand', 1], retries=1, interval=1,
        interval_unit='hours', scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    run_now(periodic)
    run = run_to_the_end(leader, redis_url, periodic)
    assert (run.trigger, run.status, run.attempts) == ('manual', 'finished', 2)


def test_a_run_whose_worker_died_is_retried_as_rq_does_and_ends_as_one_run(leader, redis_url, connection):
    from rq.registry import StartedJobRegistry

    from django_rq_scheduled.feedback import DatabaseSync
    from tests.test_runs import kill_with_its_children, start_worker

    row = every_minute('lost', 'tests.tasks.slow_at_first', ['lost', 60], retries=1)
    leader()
    worker = start_worker(redis_url)
    try:
        # Killed only once the function itself has begun (its attempt counted), not merely the job's start.
        wait_for(lambda: leader() or connection.get(f'{tasks.ATTEMPTS_KEY}:lost') == b'1', timeout=30)
    finally:
        kill_with_its_children(worker)
    registry = StartedJobRegistry('default', connection=connection)  # its heartbeat lapses at once, as in test_runs
    connection.zadd(registry.key, {member: 1 for member in connection.zrange(registry.key, 0, -1)})
    caring = DatabaseSync(reconcile_interval=0, background=False)  # RQ's cleanup: our callback, then its retry
    caring(leader.scheduler)
    caring(leader.scheduler)
    run = row.runs.get()
    assert (run.status, run.reason, run.attempts) == ('queued', 'retrying after: worker died', 1)
    run = run_to_the_end(leader, redis_url, row)
    row.refresh_from_db()
    assert (run.status, run.attempts, row.failure_count, row.success_count) == ('finished', 2, 0, 1)


def test_a_run_without_retries_fails_at_its_first_attempt(leader, redis_url):
    row = every_minute('plain', 'tests.tasks.fail', ['no'])
    run = run_to_the_end(leader, redis_url, row)
    assert (run.status, run.attempts) == ('failed', 1)


# -- hostile -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('key', 'junk', 'message'),
    [
        ('retries', 'three', 'retries: must be a whole number'),
        ('retries', -2, 'retries: must be a whole number'),
        ('retry_delays', ['x'], 'retry_delays: each delay'),
        ('retry_delays', 'abc', 'retry_delays: expected a list'),
        ('retry_delays', [10**9], 'retry_delays: each delay'),
    ],
)
def test_a_foreign_template_with_a_retry_policy_of_the_wrong_type_goes_to_the_dead_letters(
    leader, connection, key, junk, message
):
    scheduler = leader.scheduler
    job = scheduler.schedule(datetime.now(UTC), tasks.add, args=[1, 2], interval=60, id='foreign', retries=1)
    job.meta[keys.META_KEY][key] = junk  # someone else wrote it
    job.save_meta()
    job = scheduler.schedule(datetime.now(UTC), tasks.add, args=[1, 2], interval=60, id='fine', retries=1)
    report = scheduler.move_due_jobs()
    assert report.dead == ['foreign'] and len(report.enqueued) == 1  # the loop goes on with the others
    assert message in scheduler.dead_letters()['foreign']
    assert connection.hget(keys.job_key(report.enqueued[0]), 'retries_left') == b'1'


@pytest.mark.parametrize(
    ('field', 'value'), [('retry_intervals', b'[1, "x"]'), ('retry_intervals', b'{not json'), ('retries_left', b'x')]
)
def test_junk_retry_fields_of_a_job_hash_never_reach_a_worker(leader, connection, field, value):
    scheduler = leader.scheduler
    scheduler.schedule(datetime.now(UTC), tasks.add, args=[1, 2], id='junk', retries=2, retry_delays=[1])
    connection.hset(keys.job_key('junk'), field, value)
    report = scheduler.move_due_jobs()
    assert report.dead == ['junk'] and connection.llen('rq:queue:default') == 0
    assert field in scheduler.dead_letters()['junk']


def test_junk_in_rqs_registries_and_queue_set_never_fails_the_release(leader, connection):
    connection.sadd(keys.QUEUES_SET_KEY, 'rq:queue:default', 'rq:queue:broken', 'not-a-queue')
    connection.set('rq:scheduled:broken', 'a string')
    connection.zadd('rq:scheduled:default', {'gone': 1, 'a-string': 1})
    connection.set(keys.job_key('a-string'), 'not a hash')
    assert release(leader) is None
    assert connection.zcard('rq:scheduled:default') == 0 and connection.llen('rq:queue:default') == 0


def waiting_retry(connection, job_id: str, func: str, *, args=('echo', 'retried')):
    """A job waiting in RQ's registry of delayed retries, as RQ (or anyone writing RQ's keys) leaves one."""
    job = Job.create(func, args=args, id=job_id, connection=connection, origin='default')
    job.save()
    connection.sadd(keys.QUEUES_SET_KEY, 'rq:queue:default')
    ScheduledJobRegistry('default', connection=connection).schedule(job, datetime.now(UTC) - timedelta(seconds=5))
    return job


@pytest.fixture
def vetting(leader):
    leader.scheduler.callable_allowed = AllowList(['tests.tasks.*'])
    return leader


def test_with_an_allow_list_a_due_retry_is_vetted_then_moved_back(vetting, redis_url, connection):
    row = every_minute('vetted', 'tests.tasks.flaky', ['vetted', 1], retries=1, retry_delays=[1])
    run = run_to_the_end(vetting, redis_url, row)
    assert (run.status, run.attempts) == ('finished', 2)
    assert vetting.scheduler.dead_letters() == {}


@pytest.mark.parametrize('func', ['os.system', 'tests.hostile_tasks.system', 'tests.tasks.os.system'])
def test_a_retry_whose_callable_the_allow_list_refuses_is_dead_lettered_never_enqueued(vetting, connection, func):
    waiting_retry(connection, 'smuggled', func)
    waiting_retry(connection, 'fine', 'tests.tasks.add', args=(1, 2))
    release(vetting)
    assert connection.lrange('rq:queue:default', 0, -1) == [b'fine']
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == []
    assert 'retry refused: callable refused' in vetting.scheduler.dead_letters()['smuggled']


def test_a_retry_whose_callback_the_allow_list_refuses_is_dead_lettered(vetting, connection):
    job = waiting_retry(connection, 'evil-callback', 'tests.tasks.add', args=(1, 2))
    connection.hset(job.key, 'failure_callback_name', 'os.system')
    release(vetting)
    assert connection.llen('rq:queue:default') == 0
    assert 'failure_callback_name refused' in vetting.scheduler.dead_letters()['evil-callback']


def test_a_retry_whose_callback_changes_after_it_was_vetted_is_not_moved(vetting, connection, monkeypatch):
    job = waiting_retry(connection, 'swapped-callback', 'tests.tasks.add', args=(1, 2))
    planner_check = Planner.payload_refusal

    def vet_then_swap(self, fields):
        verdict = planner_check(self, fields)
        connection.hset(job.key, 'success_callback_name', 'os.system')
        return verdict

    monkeypatch.setattr(Planner, 'payload_refusal', vet_then_swap)
    release(vetting)
    assert connection.llen('rq:queue:default') == 0
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == ['swapped-callback']


def test_a_retry_whose_payload_changes_after_it_was_vetted_is_not_moved(vetting, connection, monkeypatch):
    allowed = waiting_retry(connection, 'swapped', 'tests.tasks.add', args=(1, 2))
    refused = Job.create('os.system', args=('echo swapped',), connection=connection)
    planner_check = Planner.payload_refusal

    def vet_then_swap(self, data):
        verdict = planner_check(self, data)
        connection.hset(allowed.key, 'data', refused.data)  # a producer rewrites the job between read and move
        return verdict

    monkeypatch.setattr(Planner, 'payload_refusal', vet_then_swap)
    release(vetting)
    assert connection.llen('rq:queue:default') == 0
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == ['swapped']
    monkeypatch.setattr(Planner, 'payload_refusal', planner_check)
    release(vetting)  # read again: the new payload is refused
    assert connection.llen('rq:queue:default') == 0
    assert 'swapped' in vetting.scheduler.dead_letters()


def test_dead_letters_of_the_wrong_type_keep_a_refused_retry_waiting_and_the_others_move(vetting, connection):
    waiting_retry(connection, 'allowed-here', 'tests.tasks.add', args=(1, 2))
    waiting_retry(connection, 'refused-here', 'os.system')
    waiting_retry(connection, 'then-allowed', 'tests.tasks.add', args=(1, 2))
    connection.set(keys.DEAD_LETTERS_KEY, 'not a hash')  # written by someone else
    assert vetting.scheduler.acquire_lock()
    vetting.scheduler.loop._release_due_retries()  # never raises: the loop's tick goes on
    assert sorted(connection.lrange('rq:queue:default', 0, -1)) == [b'allowed-here', b'then-allowed']
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == ['refused-here']


def test_a_deposed_leader_vets_but_moves_no_retry(vetting, connection):
    waiting_retry(connection, 'fenced', 'tests.tasks.add', args=(1, 2))
    assert vetting.scheduler.acquire_lock()
    connection.set(keys.LOCK_KEY, 'another leader')
    with pytest.raises(LeadershipLost):
        vetting.scheduler.mover.release_due_retries()
    assert ScheduledJobRegistry('default', connection=connection).get_job_ids() == ['fenced']


# -- the fire time inside the job ---------------------------------------------------------------------------------


def fire_times(connection) -> dict[str, datetime | None]:
    """What ``current_fire_time()`` said inside each job, by label."""
    traces = [json.loads(line) for line in connection.lrange(tasks.TRACE_KEY, 0, -1)]
    return {trace['label']: trace['args'][0] and datetime.fromisoformat(trace['args'][0]) for trace in traces}


def same_instant(first: datetime | None, second: datetime) -> bool:
    return first is not None and first.tzinfo is not None and abs((first - second).total_seconds()) < 0.001


def test_current_fire_time_inside_real_jobs(leader, redis_url, connection):
    interval = every_minute('interval', 'tests.tasks.record_fire_time', ['interval'])
    # Yearly: a slot of its own falling during the test (a minute boundary, with '* * * * *') would run it too.
    cron = CronJob.objects.create(
        name='cron', callable='tests.tasks.record_fire_time', args=['cron'], cron_string='0 0 1 1 *'
    )
    once_at = datetime.now(UTC) + FIRST_RUN_IN
    ScheduledJob.objects.create(
        name='once', callable='tests.tasks.record_fire_time', args=['once'], scheduled_time=once_at
    )
    time.sleep(FIRST_RUN_IN.total_seconds() + 0.05)
    run_now(cron)  # by hand: no slot
    leader()
    run_worker(redis_url)
    leader()
    seen = fire_times(connection)
    assert same_instant(seen['interval'], interval.runs.get().fire_time)
    assert same_instant(seen['once'], once_at)
    assert seen['cron'] is None
    assert current_fire_time() is None  # outside any job


def test_current_fire_time_of_cron_occurrences(leader, redis_url, connection):
    cron = CronJob.objects.create(
        name='cron', callable='tests.tasks.record_fire_time', args=['cron'], cron_string='* * * * * *'
    )
    wait_for(lambda: leader() or cron.runs.exists(), timeout=5)
    run_worker(redis_url)
    leader()
    slots = {run.fire_time for run in cron.runs.filter(status='finished')}
    traces = [json.loads(line) for line in connection.lrange(tasks.TRACE_KEY, 0, -1)]
    seen = {datetime.fromisoformat(trace['args'][0]) for trace in traces}
    assert seen and seen == slots  # each run its own slot: a whole second of the cron string
    assert all(slot.microsecond == 0 and slot.tzinfo is not None for slot in seen)


def test_the_loop_itself_moves_a_delayed_retry_back_to_a_plain_worker(redis_url, connection):
    import threading

    from django_rq_scheduled import Scheduler
    from tests.test_runs import kill_with_its_children, start_worker

    scheduler = Scheduler(queue_name='default', interval=5, name='retrying-loop')
    job = scheduler.schedule(datetime.now(UTC), tasks.flaky, args=['looped', 1], retries=1, retry_delays=[1])
    runner = threading.Thread(target=scheduler.run)
    worker = start_worker(redis_url)  # no --with-scheduler: nobody but the loop moves the retry back
    runner.start()
    try:
        wait_for(lambda: job.get_status(refresh=True) == 'finished', timeout=20)
    finally:
        scheduler.request_stop()
        runner.join(10)
        kill_with_its_children(worker)
    first, second = starts(connection, 'looped')
    assert second - first >= 1


# -- the rules of ingestion, record by record --------------------------------------------------------------------


def outcome(job_id: str, status: str, attempt: object, started: float, **fields: object) -> bytes:
    record = {'job': job_id, 'status': status, 'started': started, 'ended': started + 0.5, 'worker': 'w',
              'reason': '', 'error': 'ValueError: no' if status != 'finished' else '', 'attempt': attempt}  # fmt: skip
    return json.dumps({**record, **fields}).encode()


def ingest(*records: bytes) -> None:
    from django_rq_scheduled import history

    history.send_signals(history.record_facts(history.outcome_facts(records)))


@pytest.fixture
def hourly():
    return RepeatableJob.objects.create(
        name='hourly', callable='tests.tasks.add', interval=1, interval_unit='hours', retries=2,
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def test_records_read_twice_or_late_never_reopen_nor_count_twice(hourly):
    job_id = keys.occurrence_id(hourly.template_id, 1000)
    first, second = outcome(job_id, 'retrying', 1, 100.0), outcome(job_id, 'retrying', 2, 200.0)
    last = outcome(job_id, 'failed', 3, 300.0)
    ingest(first, second)
    ingest(first)  # read again, and older than what the run knows
    run = Run.objects.get()
    assert (run.status, run.attempts, run.reason) == ('queued', 2, 'retrying')
    ingest(last, second)
    ingest(last)
    run.refresh_from_db()
    hourly.refresh_from_db()
    assert (run.status, run.attempts, hourly.failure_count, hourly.consecutive_failures) == ('failed', 3, 1, 1)


def test_the_sweep_counts_a_new_start_and_not_the_attempt_that_just_failed(hourly):
    from django_rq_scheduled import history

    job_id = keys.occurrence_id(hourly.template_id, 1000)
    ingest(outcome(job_id, 'retrying', 1, 100.0, reason='timeout'))

    def seen_started(at: float) -> None:
        started = history.Fact(job_id, RepeatableJob, hourly.pk, 'started', started_at=datetime.fromtimestamp(at, UTC))
        history.record_facts([started])

    seen_started(100.0)  # Redis still said started: RQ had not requeued it yet
    run = Run.objects.get()
    assert (run.status, run.attempts, run.reason) == ('queued', 1, 'retrying after: timeout')
    seen_started(150.0)
    run.refresh_from_db()
    assert (run.status, run.attempts) == ('started', 2)
    ingest(outcome(job_id, 'finished', 2, 150.0))
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error, run.reason) == ('finished', 2, '', '')


@pytest.mark.parametrize('attempt', ['2', -1, True, 10**9, None, 2.5])
def test_an_attempt_of_the_wrong_type_is_ignored_not_stored(hourly, attempt):
    job_id = keys.occurrence_id(hourly.template_id, 1000)
    ingest(outcome(job_id, 'finished', attempt, 100.0))
    assert Run.objects.get().attempts is None
