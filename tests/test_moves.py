"""Moving due jobs (fakeredis, frozen clock): one-off, drift-free intervals, repeat, misfires, overlap, poison."""

from __future__ import annotations

import zlib
from datetime import timedelta, timezone

import pytest
from redis.exceptions import NoScriptError
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.errors import LeadershipLost
from django_rq_scheduled.core.mover import PendingReplies
from tests import tasks
from tests.frozen import T0

UTC = timezone.utc


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def score_of(connection, member):
    return connection.zscore(keys.SCHEDULED_JOBS_KEY, member)


def test_one_off_moves_once_with_rqs_enqueue_fields(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, 1, 2, job_id='once')
    assert scheduler.enqueue_jobs() == []
    clock.move_to(T0)
    jobs = scheduler.enqueue_jobs()
    assert [j.id for j in jobs] == ['once']
    assert queued(fake_connection) == ['once']
    job = Job.fetch('once', connection=fake_connection)
    assert job.get_status() == 'queued'
    assert job.enqueued_at is not None
    assert job.timeout == 180  # the queue's default, as RQ's enqueue_job writes it
    assert fake_connection.sismember('rq:queues', 'rq:queue:default')
    assert score_of(fake_connection, 'once') is None
    assert scheduler.enqueue_jobs() == []


def test_due_time_has_millisecond_precision(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0 + timedelta(milliseconds=500), tasks.add, job_id='half')
    clock.move_to(T0 + timedelta(milliseconds=499))
    assert scheduler.enqueue_jobs() == []
    clock.move_to(T0 + timedelta(milliseconds=500))
    assert [j.id for j in scheduler.enqueue_jobs()] == ['half']


def test_at_front_pushes_to_the_head(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='back')
    scheduler.enqueue_at(T0 + timedelta(seconds=1), tasks.add, job_id='front', at_front=True)
    clock.move_to(T0 + timedelta(seconds=2))
    scheduler.enqueue_jobs()
    assert queued(fake_connection) == ['front', 'back']


def test_interval_occurrences_are_fresh_jobs_and_do_not_drift(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=60, id='tick')
    clock.move_to(T0 + timedelta(seconds=31))  # a late tick: rq-scheduler would reschedule at T0+91
    [job] = scheduler.enqueue_jobs()
    assert job.id == keys.occurrence_id('tick', int(T0.timestamp() * 1000))
    assert score_of(fake_connection, 'tick') == (T0 + timedelta(seconds=60)).timestamp()
    run = Job.fetch(job.id, connection=fake_connection)
    assert run.args == (1, 2)  # a tuple, as RQ stores them
    assert run.get_status() == 'queued'
    assert run.meta == {keys.META_KEY: {'template': 'tick', 'fire_time': T0.timestamp()}}
    template = Job.fetch('tick', connection=fake_connection)
    assert template.get_status() == 'scheduled'
    assert template.meta[keys.META_KEY]['runs'] == 1
    clock.move_to(T0 + timedelta(seconds=60))
    [second] = scheduler.enqueue_jobs()
    assert second.id != job.id
    assert queued(fake_connection) == [job.id, second.id]


def test_repeat_is_the_total_number_of_runs(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, interval=10, repeat=3, id='thrice')
    runs = []
    for step in range(6):
        clock.move_to(T0 + timedelta(seconds=10 * step))
        runs += scheduler.enqueue_jobs()
    assert len(runs) == 3
    assert 'thrice' not in scheduler
    assert not fake_connection.exists(keys.job_key('thrice'))  # retired templates do not leak


def test_misfires_coalesce_into_one_run(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, interval=60, id='m')
    clock.move_to(T0 + timedelta(seconds=600.5))  # ten slots missed
    [job] = scheduler.enqueue_jobs()
    assert job.id == keys.occurrence_id('m', int((T0 + timedelta(seconds=600)).timestamp() * 1000))
    assert score_of(fake_connection, 'm') == (T0 + timedelta(seconds=660)).timestamp()


def test_misfire_grace_skips_a_run_that_is_too_late(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, interval=60, id='g', misfire_grace=30)
    clock.move_to(T0 + timedelta(seconds=645))
    assert scheduler.enqueue_jobs() == []
    assert queued(fake_connection) == []
    assert score_of(fake_connection, 'g') == (T0 + timedelta(seconds=660)).timestamp()
    clock.move_to(T0 + timedelta(seconds=661))
    assert len(scheduler.enqueue_jobs()) == 1


def test_overlap_skip_waits_for_the_previous_run(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, interval=10, id='o', overlap='skip')
    clock.move_to(T0)
    [first] = scheduler.enqueue_jobs()
    clock.move_to(T0 + timedelta(seconds=10))
    assert scheduler.enqueue_jobs() == []  # the first run is still queued
    Job.fetch(first.id, connection=fake_connection).set_status('finished')
    clock.move_to(T0 + timedelta(seconds=20))
    assert len(scheduler.enqueue_jobs()) == 1


def test_cron_occurrences_follow_the_cron_string(scheduler, fake_connection, clock):
    clock.move_to(T0 - timedelta(seconds=30))
    scheduler.cron('*/5 * * * *', tasks.add, id='c', repeat=2)
    assert score_of(fake_connection, 'c') == T0.timestamp()
    clock.move_to(T0 + timedelta(seconds=1))
    assert len(scheduler.enqueue_jobs()) == 1
    assert score_of(fake_connection, 'c') == (T0 + timedelta(minutes=5)).timestamp()
    clock.move_to(T0 + timedelta(minutes=5))
    assert len(scheduler.enqueue_jobs()) == 1
    assert 'c' not in scheduler


def test_cron_that_runs_out_is_retired_to_the_dead_letters(scheduler, fake_connection, clock):
    scheduler.cron('0 12 1 6 * 0 2030', tasks.add, id='last')  # croniter: seconds, then year
    clock.move_to(T0)
    assert len(scheduler.enqueue_jobs()) == 1
    assert 'last' not in scheduler
    assert 'no future fire time' in scheduler.dead_letters()['last']


def test_poison_jobs_go_to_dead_letters_and_the_rest_still_run(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='a')
    scheduler.enqueue_at(T0, tasks.add, job_id='corrupt')
    scheduler.enqueue_at(T0, tasks.add, job_id='missing')
    scheduler.enqueue_at(T0, tasks.add, job_id='badmeta')
    scheduler.enqueue_at(T0, tasks.add, job_id='z')
    fake_connection.hset(keys.job_key('corrupt'), 'data', zlib.compress(b'not a pickle'))
    fake_connection.delete(keys.job_key('missing'))
    fake_connection.hset(keys.job_key('badmeta'), 'meta', b'\x80garbage')
    clock.move_to(T0)
    assert sorted(j.id for j in scheduler.enqueue_jobs()) == ['a', 'z']
    dead = scheduler.dead_letters()
    assert set(dead) == {'corrupt', 'missing', 'badmeta'}
    assert 'payload' in dead['corrupt']
    assert 'missing' in dead['missing']
    assert 'meta' in dead['badmeta']
    assert scheduler.count() == 0
    assert scheduler.retry_dead_letter('corrupt') is True
    assert 'corrupt' in scheduler


def test_wrong_type_under_a_queue_key_fails_only_that_job(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='ok')
    scheduler.enqueue_at(T0, tasks.add, job_id='blocked', queue_name='high')
    fake_connection.set('rq:queue:high', 'not a list')
    clock.move_to(T0)
    assert [j.id for j in scheduler.enqueue_jobs()] == ['ok']
    assert 'WRONGTYPE' in scheduler.dead_letters()['blocked']
    assert fake_connection.hget(keys.job_key('blocked'), 'status') == b'scheduled'  # nothing half-applied


def test_a_deposed_leader_cannot_enqueue(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='fenced')
    clock.move_to(T0)
    assert scheduler.acquire_lock()
    fake_connection.set(keys.LOCK_KEY, 'someone-else')  # the lease expired and another process took it
    with pytest.raises(LeadershipLost):
        scheduler.move_due_jobs()
    assert queued(fake_connection) == []
    assert 'fenced' in scheduler
    assert scheduler.is_leader is False


def test_enqueue_jobs_leaves_the_work_to_the_current_leader(fake_connection, clock):
    leader = Scheduler(connection=fake_connection, name='leader')
    other = Scheduler(connection=fake_connection, name='other')
    leader.enqueue_at(T0, tasks.add, job_id='x')
    clock.move_to(T0)  # (fakeredis expires keys on the travelled clock: take the lease after travelling)
    assert leader.acquire_lock()
    assert other.enqueue_jobs() == []
    assert [j.id for j in leader.enqueue_jobs()] == ['x']


def test_a_job_changed_after_planning_is_left_alone(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='moved')
    clock.move_to(T0)
    pairs = fake_connection.zrangebyscore(keys.SCHEDULED_JOBS_KEY, '-inf', '+inf', withscores=True)
    scheduler.change_execution_time('moved', T0 + timedelta(hours=1))  # a producer, between read and write
    assert scheduler.acquire_lock()
    report = scheduler.mover.move_members(pairs, fenced=True)
    assert report.enqueued == []
    assert queued(fake_connection) == []


def test_batches_cover_every_due_job(fake_connection, clock):
    scheduler = Scheduler(connection=fake_connection, batch_size=7)
    for i in range(50):
        scheduler.enqueue_at(T0, tasks.add, i, job_id=f'b{i}')
    clock.move_to(T0)
    assert scheduler.acquire_lock()
    report = scheduler.move_due_jobs()
    assert sorted(report.enqueued) == sorted(f'b{i}' for i in range(50))
    assert report.batches == 8
    assert len(queued(fake_connection)) == 50


def test_rq_scheduler_templates_keep_same_id_behaviour(fake_connection, clock):
    from rq_scheduler import Scheduler as RQScheduler

    theirs = RQScheduler(connection=fake_connection)
    theirs.schedule(T0, tasks.add, args=[2, 3], interval=60, repeat=2, id='legacy')
    ours = Scheduler(connection=fake_connection)
    clock.move_to(T0 + timedelta(seconds=5))
    assert [j.id for j in ours.enqueue_jobs()] == ['legacy']
    assert Job.fetch('legacy', connection=fake_connection).meta['repeat'] == 1
    assert score_of(fake_connection, 'legacy') == (T0 + timedelta(seconds=60)).timestamp()
    clock.move_to(T0 + timedelta(seconds=60))
    assert [j.id for j in ours.enqueue_jobs()] == ['legacy']
    assert 'legacy' not in ours
    assert queued(fake_connection) == ['legacy', 'legacy']


def test_scores_written_with_more_than_millisecond_precision_still_move(scheduler, fake_connection, clock):
    scheduler.enqueue_at(T0, tasks.add, job_id='precise')
    fake_connection.zadd(keys.SCHEDULED_JOBS_KEY, {'precise': T0.timestamp() + 0.123456789})
    clock.move_to(T0 + timedelta(seconds=1))
    assert [j.id for j in scheduler.enqueue_jobs()] == ['precise']


def test_a_full_batch_that_cannot_move_does_not_spin(fake_connection, clock):
    scheduler = Scheduler(connection=fake_connection, batch_size=3)
    for i in range(3):
        scheduler.enqueue_at(T0, tasks.add, job_id=f'stuck{i}')
        fake_connection.hdel(keys.job_key(f'stuck{i}'), 'origin')
    fake_connection.set(keys.DEAD_LETTERS_KEY, 'not a hash')  # not even the dead letters can be written
    clock.move_to(T0)
    assert scheduler.acquire_lock()
    report = scheduler.move_due_jobs()
    assert report.batches == 1 and report.enqueued == [] and report.dead == []
    assert scheduler.count() == 3


def test_a_backlog_of_mixed_jobs_read_ahead_moves_each_once(fake_connection, clock):
    """Batch k + 1 is planned while batch k moves: a template due again, or a poison job, still moves once."""
    from rq_scheduler import Scheduler as RQScheduler

    scheduler = Scheduler(connection=fake_connection, batch_size=4)
    for i in range(20):
        scheduler.enqueue_at(T0, tasks.add, i, job_id=f'one-{i}')
    for i in range(3):
        scheduler.schedule(T0 - timedelta(seconds=10), tasks.add, interval=1, repeat=3, id=f'ours-{i}')
        scheduler.enqueue_at(T0, tasks.add, job_id=f'poison-{i}')
        fake_connection.hset(keys.job_key(f'poison-{i}'), 'data', b'garbage')
    # rq-scheduler's template, due again right after its move: read twice, moved once per pass.
    RQScheduler(connection=fake_connection).schedule(T0 - timedelta(seconds=10), tasks.add, interval=1, id='theirs')
    clock.move_to(T0)
    assert scheduler.acquire_lock()
    report = scheduler.move_due_jobs()
    ids = queued(fake_connection)
    assert sorted(i for i in ids if i.startswith('one-')) == sorted(f'one-{i}' for i in range(20))
    assert len(ids) == len(set(ids) - {'theirs'}) + ids.count('theirs')
    assert ids.count('theirs') == 1
    assert sorted(report.dead) == ['poison-0', 'poison-1', 'poison-2']
    runs = [i for i in ids if i.startswith('ours-')]
    assert sorted(run.split('_at_')[0] for run in runs) == ['ours-0', 'ours-1', 'ours-2']  # coalesced: one each
    assert report.batches >= 7


def test_scripts_flushed_in_the_middle_of_a_backlog_are_loaded_again(fake_connection, clock, monkeypatch):
    scheduler = Scheduler(connection=fake_connection, batch_size=5)
    for i in range(30):
        scheduler.enqueue_at(T0, tasks.add, i, job_id=f'f{i}')
    clock.move_to(T0)
    assert scheduler.acquire_lock()
    plan_batch = scheduler.mover.plan_batch
    calls = []

    def flush_on_the_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            fake_connection.script_flush()  # e.g. Redis restarted between two batches
        return plan_batch(*args)

    monkeypatch.setattr(scheduler.mover, 'plan_batch', flush_on_the_third_batch)
    replies = []
    wait = PendingReplies.wait
    monkeypatch.setattr(PendingReplies, 'wait', lambda pending: replies.append(wait(pending)) or replies[-1])
    report = scheduler.move_due_jobs()
    assert any(isinstance(reply, NoScriptError) for pair in replies for reply in pair)
    assert sorted(report.enqueued) == sorted(f'f{i}' for i in range(30))
    assert sorted(queued(fake_connection)) == sorted(f'f{i}' for i in range(30))
    assert scheduler.count() == 0


def test_a_job_key_that_changed_type_after_the_read_fails_alone_and_half_writes_nothing(
    scheduler, fake_connection, clock
):
    scheduler.enqueue_at(T0, tasks.add, job_id='fine')
    scheduler.enqueue_at(T0, tasks.add, job_id='changed')
    clock.move_to(T0)
    pairs, fields = scheduler.mover.read_due(T0.timestamp())
    fake_connection.delete(keys.job_key('changed'))
    fake_connection.set(keys.job_key('changed'), 'a string now')  # between the read and the move
    assert scheduler.acquire_lock()
    report = scheduler.mover.move_members(pairs, fenced=True, fields=fields)
    assert report.enqueued == ['fine']
    assert report.dead == ['changed']
    assert 'WRONGTYPE' in scheduler.dead_letters()['changed']
    assert queued(fake_connection) == ['fine']
    assert fake_connection.get(keys.job_key('changed')) == b'a string now'
