"""Planning ahead (``core.plan_ahead``), on a real Redis: the occurrences many templates fire together are planned
before their instant and sent at it, and whatever happens between the plan and the instant (an edit, a delete, a
pause, a forged payload, a lost lease, a flushed script cache, a loop that wakes too early or too late) never runs a
job twice, never loses one, never runs a call that was not vetted, and never leaves the plan's placeholder behind."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys, limits, pause, plan_ahead
from django_rq_scheduled.core.errors import LeadershipLost
from django_rq_scheduled.core.loop import Loop
from django_rq_scheduled.models import RepeatableJob
from tests import tasks
from tests.conftest import STALL, short_socket_timeout
from tests.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
QUEUE = 'rq:queue:default'
ROWS = 20
LEAD = 0.6  # seconds between a plan and its instant: far more than planning these rows takes


def rows_due_together(count: int = ROWS, name: str = 'together', at: float | None = None, **options: object) -> float:
    """``count`` rows of one schedule, their first runs all due at one instant (``at``, or LEAD seconds from now)."""
    at = datetime.fromtimestamp(round(time.time() + LEAD, 3) if at is None else at, UTC)
    RepeatableJob.objects.bulk_create(
        [
            RepeatableJob(
                **{
                    'name': f'{name} {index}',
                    'callable': 'tests.tasks.add',
                    'args': [index, 1],
                    'interval': 1,
                    'interval_unit': 'hours',
                    'scheduled_time': at,
                    **options,
                }
            )
            for index in range(count)
        ]
    )
    return at.timestamp()


def wait_for(instant: float, after: float = 0.005) -> None:
    time.sleep(max(0.0, instant + after - time.time()))


def runs(connection) -> list[str]:
    return [member.decode() for member in connection.lrange(QUEUE, 0, -1)]


def run_args(connection) -> dict[str, tuple]:
    return {run: Job.fetch(run, connection=connection).args for run in runs(connection)}


@pytest.fixture
def mover(leader):
    return leader.scheduler.mover


def test_planned_ahead_the_runs_go_out_at_their_instant_once_each_stamped_when_sent(connection, leader, mover):
    at = rows_due_together()
    assert mover.prepare(at) == ROWS
    assert runs(connection) == [] and connection.zcount(keys.SCHEDULED_JOBS_KEY, at, at) == ROWS  # nothing moved yet
    wait_for(at, after=0.05)
    report = leader.scheduler.move_due_jobs()
    assert len(report.enqueued) == len(set(report.enqueued)) == ROWS == len(runs(connection))
    assert sorted(args for args in run_args(connection).values()) == sorted((index, 1) for index in range(ROWS))
    for run in runs(connection):
        enqueued_at = Job.fetch(run, connection=connection).enqueued_at.replace(tzinfo=UTC).timestamp()
        assert at + 0.04 <= enqueued_at <= time.time()  # when it was sent, not the instant it was planned for
    assert connection.zcount(keys.SCHEDULED_JOBS_KEY, at + 3599, at + 3601) == ROWS  # each at its next slot
    assert mover.prepared is None and leader.scheduler.move_due_jobs().enqueued == []


def test_the_plans_placeholder_never_reaches_redis(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    placeholder = mover.prepared.placeholder.encode()
    assert placeholder.startswith(b'\x00') and all(placeholder in calls for calls in mover.prepared.packed)
    wait_for(at)
    leader.scheduler.move_due_jobs()
    for key in connection.scan_iter(count=1_000):
        if connection.type(key) == b'hash':
            assert not any(placeholder in value for value in connection.hgetall(key).values()), key
        elif connection.type(key) == b'list':
            assert not any(placeholder in value for value in connection.lrange(key, 0, -1)), key


def test_each_call_is_stamped_only_as_it_goes_out_and_only_with_a_stamp_of_the_placeholders_length():
    prepared = plan_ahead.Prepared(at=time.time(), token='t')
    placeholder = prepared.placeholder.encode()
    stamp = 'x' * len(prepared.placeholder)
    prepared.packed = [b'first ' + placeholder, b'second ' + placeholder]
    calls = prepared.stamped(stamp)
    assert next(calls) == b'first ' + stamp.encode()
    prepared.packed[1] = b'changed ' + placeholder  # not stamped yet: the first went out without waiting for it
    assert list(calls) == [b'changed ' + stamp.encode()]
    with pytest.raises(ValueError, match='placeholder'):
        prepared.stamped(stamp + 'x')


def test_planning_stops_at_the_instant_and_the_pass_plans_the_rest(connection, leader, mover):
    at = rows_due_together()
    mover.batch_size = 5
    wait_for(at)  # the instant came while the loop planned (here: before it began)
    assert mover.prepare(at) == 5
    report = leader.scheduler.move_due_jobs()
    assert len(report.enqueued) == len(set(report.enqueued)) == ROWS == len(runs(connection))


def test_a_burst_of_one_offs_is_not_planned_ahead(connection, leader, mover):
    at = datetime.fromtimestamp(round(time.time() + LEAD, 3), UTC)
    for index in range(30):
        leader.scheduler.enqueue_at(at, tasks.add, index, 1)
    mover.batch_size = 5
    assert mover.prepare(at.timestamp()) == 0 and mover.prepared.complete and not mover.prepared.batches
    wait_for(at.timestamp())
    assert len(leader.scheduler.move_due_jobs().enqueued) == 30


def test_a_loop_woken_before_the_instant_keeps_the_plan_for_it(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    assert leader.scheduler.move_due_jobs().enqueued == []  # a producer's wake-up, before the instant
    assert mover.prepared is not None and runs(connection) == []
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(runs(connection))


def test_a_loop_woken_too_late_plans_again_and_still_runs_each_once(connection, leader, mover, monkeypatch):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_TOLERANCE', 0.05)
    at = rows_due_together()
    mover.prepare(at)
    wait_for(at, after=0.2)
    send = mover._apply_prepared
    report = leader.scheduler.move_due_jobs()
    assert mover.prepared is None and send == mover._apply_prepared
    assert len(report.enqueued) == len(set(report.enqueued)) == ROWS == len(runs(connection))  # by the pass itself


def test_no_later_than_the_smallest_misfire_grace_among_its_templates(leader, mover):
    at = rows_due_together(misfire_grace=0)
    mover.prepare(at)
    assert mover.prepared.tolerance == 0


def test_an_edit_after_the_plan_runs_the_edited_call_once(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    row = RepeatableJob.objects.get(name='together 3')
    row.args = [40, 2]
    row.save()  # its due slot is kept: the plan's entry still has its score, not its version
    wait_for(at)
    report = leader.scheduler.move_due_jobs()
    assert len(report.enqueued) == ROWS == len(runs(connection))
    args = sorted(run_args(connection).values())
    assert (40, 2) in args and (3, 1) not in args


def test_a_row_deleted_after_the_plan_never_runs(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    RepeatableJob.objects.filter(name='together 3').delete()
    wait_for(at)
    leader.scheduler.move_due_jobs()
    args = sorted(run_args(connection).values())
    assert len(args) == ROWS - 1 and (3, 1) not in args


def test_a_template_hash_deleted_by_someone_else_after_the_plan_is_dead_lettered_never_run(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    template = RepeatableJob.objects.get(name='together 3').template_id
    connection.delete(keys.job_key(template))  # the schedule entry stays: only its hash is gone
    wait_for(at)
    leader.scheduler.move_due_jobs()
    assert len(runs(connection)) == ROWS - 1 and not any(run.startswith(f'{template}_') for run in runs(connection))
    assert connection.hexists(keys.DEAD_LETTERS_KEY, template) and not connection.exists(keys.job_key(template))


def test_a_template_turned_into_another_type_after_the_plan_stops_nothing_else(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    template = RepeatableJob.objects.get(name='together 3').template_id
    connection.delete(keys.job_key(template))
    connection.set(keys.job_key(template), 'junk')
    wait_for(at)
    leader.scheduler.move_due_jobs()
    assert len(runs(connection)) == ROWS - 1 and connection.get(keys.job_key(template)) == b'junk'
    assert connection.hexists(keys.DEAD_LETTERS_KEY, template)


def test_a_pause_after_the_plan_holds_every_run_and_a_resume_runs_each_once(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    pause.pause(connection, ['default'], by='ops', reason='deploy', now=time.time())
    wait_for(at)
    assert leader.scheduler.move_due_jobs().enqueued == [] and runs(connection) == []
    assert connection.zcount(keys.SCHEDULED_JOBS_KEY, at, at) == ROWS  # still due, with their scores
    pause.resume(connection, ['default'])
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection)))


def test_entries_of_a_paused_queue_are_stepped_over_and_the_rest_planned(connection, leader, mover):
    at = rows_due_together(queue='high')
    rows_due_together(count=5, name='default', at=at)
    pause.pause(connection, ['high'], by='ops', reason='deploy', now=time.time())
    assert mover.prepare(at) == 5
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == 5 == len(runs(connection))


def test_a_deposed_leader_sends_nothing_it_planned(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    connection.set(keys.LOCK_KEY, 'someone else', px=60_000)  # its lease expired and another scheduler took it
    wait_for(at)
    with pytest.raises(LeadershipLost):
        leader.scheduler.move_due_jobs()
    assert runs(connection) == [] and connection.zcount(keys.SCHEDULED_JOBS_KEY, at, at) == ROWS


def test_a_lease_lost_while_planning_ends_the_plan_and_the_loop_hears_it(connection, loop, leader, monkeypatch):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_FROM', ROWS)
    monkeypatch.setattr(limits, 'PLAN_AHEAD_SECONDS_PER_ENTRY', 1.0)
    at = rows_due_together()
    mover = leader.scheduler.mover
    mover.batch_size = 5  # planning goes on batch after batch, renewing the lease between them
    connection.set(keys.LOCK_KEY, 'someone else', px=60_000)
    mover.lease._renewed_at = 0.0  # a renewal is due
    with pytest.raises(LeadershipLost):
        loop._plan_ahead(at, ROWS, time.time())
    assert mover.prepared is None and not leader.scheduler.lease.held


def test_a_plan_outlived_by_another_leaders_moves_moves_nothing_again(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    leader.scheduler.remove_lock()
    other = Scheduler(queue_name='default', lease_ttl=600, name='the other leader')
    assert other.acquire_lock()
    wait_for(at)
    assert len(other.move_due_jobs().enqueued) == ROWS  # the other leader moved them at their instant
    other.remove_lock()
    assert leader.scheduler.acquire_lock()  # leading again, with the plan it made before
    assert leader.scheduler.move_due_jobs().enqueued == []  # every entry's score has moved on: nothing again
    assert len(runs(connection)) == len(set(runs(connection))) == ROWS


def test_a_script_cache_flushed_after_the_plan_moves_each_once(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    connection.script_flush()  # a Redis restart between the plan and the instant
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection)))
    for run in runs(connection):
        assert b'\x00' not in connection.hget(keys.job_key(run), 'enqueued_at')


def test_redis_out_of_memory_at_the_instant_writes_nothing_and_the_next_pass_moves_each_once(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    used = connection.info('memory')['used_memory']
    connection.config_set('maxmemory-policy', 'noeviction')
    connection.config_set('maxmemory', max(1, used // 2))
    wait_for(at)
    try:
        with pytest.raises(redis.ResponseError, match=r'OOM|maxmemory'):
            leader.scheduler.move_due_jobs()
        assert runs(connection) == [] and connection.zcount(keys.SCHEDULED_JOBS_KEY, at, at) == ROWS
    finally:
        connection.config_set('maxmemory', 0)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection)))


def test_redis_turned_read_only_at_the_instant_writes_nothing_and_once_writable_moves_each_once(
    connection, leader, mover
):
    at = rows_due_together()
    mover.prepare(at)
    connection.replicaof('127.0.0.1', free_port())  # a failover demoted it: a replica of a primary not up yet
    wait_for(at)
    try:
        with pytest.raises(redis.exceptions.ReadOnlyError):
            leader.scheduler.move_due_jobs()
        assert runs(connection) == [] and connection.zcount(keys.SCHEDULED_JOBS_KEY, at, at) == ROWS
    finally:
        connection.replicaof('NO', 'ONE')
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection)))
    assert leader.scheduler.move_due_jobs().enqueued == []


def test_a_schedule_turned_into_another_type_at_the_instant_moves_nothing_and_once_restored_each_once(
    connection, leader, mover
):
    at = rows_due_together()
    mover.prepare(at)
    saved = connection.dump(keys.SCHEDULED_JOBS_KEY)
    connection.delete(keys.SCHEDULED_JOBS_KEY)
    connection.set(keys.SCHEDULED_JOBS_KEY, 'written by someone else')
    wait_for(at)
    with pytest.raises(redis.ResponseError, match='WRONGTYPE'):
        leader.scheduler.move_due_jobs()
    assert runs(connection) == [] and connection.get(keys.SCHEDULED_JOBS_KEY) == b'written by someone else'
    connection.delete(keys.SCHEDULED_JOBS_KEY)
    connection.restore(keys.SCHEDULED_JOBS_KEY, 0, saved)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection))) == len(runs(connection))


def test_a_connection_cut_at_the_instant_loses_and_repeats_nothing(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    wait_for(at)
    connection.client_kill_filter(_type='normal', skipme=True)  # the mover's pooled connection goes with it
    moved: list[str] = []
    with contextlib.suppress(redis.exceptions.ConnectionError):  # the loop waits it out and passes again
        moved += leader.scheduler.move_due_jobs().enqueued
    moved += leader.scheduler.move_due_jobs().enqueued
    moved += leader.scheduler.move_due_jobs().enqueued
    assert len(moved) == len(set(moved)) == ROWS == len(set(runs(connection))) == len(runs(connection))


# Keeps Redis busy for ``ARGV[1]`` seconds, as a slow command or a long fork would: nothing else runs meanwhile.
def test_redis_stalled_past_the_socket_timeout_at_the_instant_moves_each_once(connection, leader, mover):
    at = rows_due_together()
    mover.prepare(at)
    wait_for(at)
    stall = threading.Thread(target=connection.eval, args=(STALL, 0, 1.0))
    stall.start()
    with short_socket_timeout(leader.scheduler.connection, 0.2):
        time.sleep(0.1)  # Redis is stalled: the plan's send waits for replies longer than the socket allows
        with pytest.raises(redis.exceptions.TimeoutError):
            leader.scheduler.move_due_jobs()
        stall.join()
    assert runs(connection) == []  # the calls never ran: the client had gone when Redis read them
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection))) == len(runs(connection))
    assert leader.scheduler.dead_letters() == {}


def test_a_plan_applied_after_its_sender_timed_out_runs_nothing_again(connection, leader, mover):
    at = rows_due_together(1_500, at=round(time.time() + 6, 3))
    assert mover.prepare(at) == 1_500
    wait_for(at)
    with short_socket_timeout(leader.scheduler.connection, 0.005), pytest.raises(redis.exceptions.TimeoutError):
        leader.scheduler.move_due_jobs()  # Redis applies the calls; their replies come too late
    time.sleep(0.5)
    applied = len(runs(connection))
    assert applied > 0
    later = leader.scheduler.move_due_jobs().enqueued
    assert leader.scheduler.move_due_jobs().enqueued == []
    assert applied + len(later) == 1_500 == len(set(runs(connection))) == len(runs(connection))
    assert leader.scheduler.dead_letters() == {}


def test_templates_reading_their_previous_run_are_planned_at_the_instant(connection, leader, mover):
    at = rows_due_together(overlap='skip', interval=1, interval_unit='seconds')
    assert mover.prepare(at) == ROWS  # a first run: no previous run to read
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS
    assert mover.prepare(at + 1) == 0 and not mover.prepared.batches  # the first runs may end before the next slot
    wait_for(at + 1)
    report = leader.scheduler.move_due_jobs()
    assert len(report.skipped) == ROWS and len(runs(connection)) == ROWS  # still queued: skipped at the instant


def test_a_payload_forged_after_the_plan_is_never_copied_into_a_run(connection, caplog):
    scheduler = Scheduler(connection=connection, callable_allowed=lambda path: path.startswith('tests.'))
    assert scheduler.acquire_lock()
    at = datetime.fromtimestamp(round(time.time() + LEAD, 3), UTC)
    for index in range(3):
        scheduler.schedule(at, tasks.add, args=(index, 1), interval=3600, id=f'api-{index}')
    assert scheduler.mover.prepare(at.timestamp()) == 3
    forged = Job.create('os.system', args=('true',), connection=connection)
    connection.hset(keys.job_key('api-1'), 'data', forged.to_dict()['data'])
    wait_for(at.timestamp())
    with caplog.at_level(logging.ERROR):
        scheduler.move_due_jobs()
    assert sorted(run_args(connection).values()) == [(0, 1), (2, 1)]
    assert connection.hexists(keys.DEAD_LETTERS_KEY, 'api-1')  # vetted again by the pass, and refused


# -- the loop: when it plans ahead ------------------------------------------------------------------------------


@pytest.fixture
def loop(leader):
    return Loop(leader.scheduler, leader.scheduler.mover.stop)


def test_the_loop_wakes_early_enough_to_plan_many_entries_due_together(loop, monkeypatch):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_SECONDS_PER_ENTRY', 0.01)
    now = time.time()
    later = now + 2 * limits.PLAN_AHEAD_MAX_LEAD
    assert loop._plan_ahead(later, 100, now) == pytest.approx(later - 1)  # 100 entries: a second's lead
    assert loop._plan_ahead(later, limits.PLAN_AHEAD_FROM - 1, now) == later  # too few: at the instant
    assert loop._plan_ahead(later, 10**9, now) == later - limits.PLAN_AHEAD_MAX_LEAD


def test_close_to_the_instant_the_loop_plans_and_sleeps_until_it(connection, loop, leader, monkeypatch):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_FROM', ROWS)
    monkeypatch.setattr(limits, 'PLAN_AHEAD_SECONDS_PER_ENTRY', 1.0)
    at = rows_due_together()
    assert loop._plan_ahead(at, ROWS, time.time()) == at
    assert leader.scheduler.mover.prepared.entries == ROWS


def test_a_plan_that_fails_is_only_a_lost_head_start(connection, loop, leader, monkeypatch, caplog):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_FROM', ROWS)
    monkeypatch.setattr(limits, 'PLAN_AHEAD_SECONDS_PER_ENTRY', 1.0)
    at = rows_due_together()

    def broken(at: float) -> int:
        raise ValueError('a bug')

    monkeypatch.setattr(leader.scheduler.mover, 'prepare', broken)
    with caplog.at_level(logging.WARNING):
        assert loop._plan_ahead(at, ROWS, time.time()) == at
    assert 'ahead' in caplog.text and leader.scheduler.mover.prepared is None
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS


def test_whoever_watches_the_loop_hears_of_each_run_sent_with_its_queue_kind_and_due_time(leader, mover):
    heard = []

    class Listener:
        def jobs_enqueued(self, jobs, at):
            heard.extend((job, at) for job in jobs)

        def lease_renewed(self):
            pass

        def tick_done(self, scheduler):
            pass

    leader.scheduler.observer = Listener()
    at = rows_due_together()
    mover.prepare(at)
    wait_for(at)
    leader.scheduler.move_due_jobs()
    assert len(heard) == ROWS
    assert {(job.queue, job.kind, job.due) for job, _ in heard} == {('default', 'interval', at)}
    assert all(when >= at for _, when in heard)


def test_the_running_loop_plans_many_runs_ahead_and_sends_each_once_at_its_instant(connection):
    scheduler = Scheduler(queue_name='default', interval=5, lease_ttl=600, name='planning-loop')
    count = limits.PLAN_AHEAD_FROM + 20
    at = rows_due_together(count=count, at=round(time.time() + 2, 3))
    plans = []
    prepare = scheduler.mover.prepare

    def spied(instant: float, until: float | None = None) -> int:
        plans.append((instant, prepare(instant, until)))
        return plans[-1][1]

    scheduler.mover.prepare = spied
    runner = threading.Thread(target=scheduler.run)
    runner.start()
    try:
        deadline = time.time() + 20
        while len(runs(connection)) < count and time.time() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.request_stop()
        runner.join(10)
    assert plans[-1] == (at, count) and {instant for instant, _ in plans} == {at}  # in one step or more
    assert len(runs(connection)) == len(set(runs(connection))) == count
    stamps = [
        Job.fetch(run, connection=connection).enqueued_at.replace(tzinfo=UTC).timestamp() for run in runs(connection)
    ]
    assert min(stamps) >= at


def test_a_plan_made_in_steps_sends_each_run_once(connection, leader, mover):
    at = rows_due_together()
    mover.batch_size = 5
    steps = [mover.prepare(at, until=0.0)]  # a step plans one batch at least
    while not mover.prepared.complete:
        steps.append(mover.prepare(at, until=0.0))
    assert steps == [5, 10, 15, 20, 20]  # the last read finds the end
    wait_for(at)
    assert len(leader.scheduler.move_due_jobs().enqueued) == ROWS == len(set(runs(connection)))


def test_jobs_due_while_the_loop_plans_ahead_move_between_its_steps(connection, monkeypatch):
    monkeypatch.setattr(limits, 'PLAN_AHEAD_SECONDS_PER_ENTRY', 0.03)  # 120 entries: a lead of 3.6 s
    scheduler = Scheduler(queue_name='default', interval=5, lease_ttl=600, name='stepping-loop')
    scheduler.mover.batch_size = 5
    count = limits.PLAN_AHEAD_FROM + 20
    at = rows_due_together(count=count, at=round(time.time() + 4, 3))
    plan_batch = scheduler.mover.plan_batch
    queued_while_planning = []

    def slow_plan_batch(*args, **kwargs):  # planning 120 takes about 2.4 s
        time.sleep(0.1)
        if 'enqueued_at' in kwargs:  # a batch planned ahead (a pass plans with the real "now")
            queued_while_planning.append(connection.llen(QUEUE))
        return plan_batch(*args, **kwargs)

    scheduler.mover.plan_batch = slow_plan_batch
    runner = threading.Thread(target=scheduler.run)
    runner.start()
    try:
        wait_for(at - 3.0)  # planning has begun
        one_off = scheduler.enqueue_in(timedelta(milliseconds=300), tasks.add, 1, 1)
        wait_for(at, after=1.0)
    finally:
        scheduler.request_stop()
        runner.join(10)
    assert one_off.id in runs(connection)
    assert 1 in queued_while_planning  # the one-off was in its queue while batches were still being planned
    assert len(runs(connection)) == len(set(runs(connection))) == count + 1
