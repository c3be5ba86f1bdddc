"""The fast path of plain one-offs of our API (``core.fast_moves``), on a real Redis: what it moves whole, and every
job it must leave to the planned path (forged, stale or edited marks, templates, paused or unknown queues, odd
members), which then moves or dead-letters it as before."""

from __future__ import annotations

import hashlib
import pickle
import time
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import fast_moves, keys, pause
from django_rq_scheduled.core.allowlist import AllowList
from django_rq_scheduled.core.errors import LeadershipLost
from tests import tasks

pytestmark = pytest.mark.integration

UTC = timezone.utc
ALLOWED = AllowList(['tests.tasks.add'])
KEY = 'a key of the tests'


def past() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=1)


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


def make(connection, *, rule=ALLOWED, key=KEY, **kwargs) -> Scheduler:
    return Scheduler(connection=connection, callable_allowed=rule, signing_key=key, **kwargs)


@pytest.fixture(autouse=True)
def clean(connection):
    connection.flushdb()
    yield
    connection.flushdb()


def refused_payload() -> bytes:
    """The payload of a job calling what the allow-list refuses (written by someone else)."""
    return zlib.compress(pickle.dumps(('tests.tasks.fail', None, ('boom',), {})))


def test_plain_one_offs_move_whole_in_redis_with_rqs_enqueue_fields(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='plain')
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='front', at_front=True, job_ttl=300, timeout=30)
    jobs = scheduler.enqueue_jobs()
    assert sorted(job.id for job in jobs) == ['front', 'plain']
    assert planned == []
    assert queued(connection) == ['front', 'plain']  # at_front: LPUSH, as the planned path does
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    assert connection.sismember(keys.QUEUES_SET_KEY, 'rq:queue:default')
    plain, front = Job.fetch('plain', connection=connection), Job.fetch('front', connection=connection)
    assert plain.get_status() == front.get_status() == 'queued'
    assert plain.enqueued_at is not None
    assert plain.timeout == scheduler.queues.info('default', None).default_timeout  # as RQ's enqueue_job writes
    assert front.timeout == 30
    assert 0 < connection.ttl(keys.job_key('front')) <= 300
    assert connection.ttl(keys.job_key('plain')) == -1


def test_a_batch_writes_each_queue_as_one_by_one_pushes_would_both_ends_mixed(connection, planned):
    scheduler = make(connection)
    connection.rpush('rq:queue:default', 'there-before')
    due = past()
    fronts = {'j1': False, 'j2': True, 'j3': False, 'j4': True}
    for number, (job_id, at_front) in enumerate(fronts.items()):
        scheduler.enqueue_at(due + timedelta(seconds=number), tasks.add, number, 1, job_id=job_id, at_front=at_front)
    scheduler.enqueue_at(due, tasks.add, 9, 1, job_id='other', queue_name='high')
    scheduler.enqueue_jobs()
    assert planned == []
    # One by one in due order: RPUSH j1, LPUSH j2, RPUSH j3, LPUSH j4.
    assert queued(connection) == ['j4', 'j2', 'there-before', 'j1', 'j3']
    assert queued(connection, 'high') == ['other']
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_a_batch_larger_than_one_command_takes_moves_each_job_once_in_due_order(connection, planned):
    scheduler = make(connection, batch_size=2_500)
    due = past()
    ids = [f'big-{number:04d}' for number in range(2_300)]
    with connection.pipeline(transaction=False):
        for number, job_id in enumerate(ids):
            scheduler.enqueue_at(due + timedelta(milliseconds=number), tasks.add, number, 1, job_id=job_id)
    assert [job.id for job in scheduler.enqueue_jobs()] == ids
    assert planned == [] and queued(connection) == ids
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_the_handles_enqueue_jobs_returns_are_separate_jobs(connection):
    scheduler = make(connection)
    for i in range(3):
        scheduler.enqueue_at(past(), tasks.add, i, 1, job_id=f'j{i}')
    jobs = scheduler.enqueue_jobs()
    jobs[0].meta['mine'] = True
    assert [job.id for job in jobs] == ['j0', 'j1', 'j2']
    assert 'mine' not in jobs[1].meta
    jobs[2].refresh()
    assert jobs[2].args == (2, 1)


def test_the_loop_moves_them_the_same_way_and_observers_count_them(connection, planned):
    scheduler = make(connection, batch_size=10)
    for i in range(25):
        scheduler.enqueue_at(past(), tasks.add, i, 1, job_id=f'j{i}')
    seen = []

    class Counting:
        def jobs_enqueued(self, jobs, at):
            seen.extend(jobs)

        def lease_renewed(self):
            pass

        def tick_done(self, scheduler):
            pass

    scheduler.observer = Counting()
    assert scheduler.acquire_lock()
    report = scheduler.move_due_jobs()
    assert len(report.enqueued) == 25 and planned == []
    assert len(seen) == 25
    assert {(job.queue, job.kind) for job in seen} == {('default', 'one-off')}


def test_a_forged_mark_gets_no_job_past_the_allow_list(connection, planned):
    job = Job.create(tasks.add, args=(1, 2), connection=connection, id='forged', status='scheduled')
    job.origin = 'default'
    job.save()
    connection.hset(job.key, mapping={'data': refused_payload(), keys.FAST_MARK_FIELD: 'f' * 40})
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'forged': time.time() - 60})
    assert make(connection).enqueue_jobs() == []
    assert queued(connection) == []
    assert planned == ['forged']
    assert 'callable refused' in make(connection).dead_letters()['forged']


def test_a_mark_made_with_another_key_is_not_trusted(connection, planned):
    make(connection, key='another key').enqueue_at(past(), tasks.add, 1, 2, job_id='other')
    make(connection).enqueue_jobs()
    assert planned == ['other']  # moved, but planned and checked: the mark did not verify
    assert queued(connection) == ['other']


def test_a_payload_edited_after_writing_falls_back_and_is_refused(connection, planned):
    make(connection).enqueue_at(past(), tasks.add, 1, 2, job_id='edited')
    connection.hset(keys.job_key('edited'), 'data', refused_payload())  # the mark stays, now wrong
    make(connection).enqueue_jobs()
    assert queued(connection) == []
    assert planned == ['edited']
    assert 'edited' in make(connection).dead_letters()


@pytest.mark.parametrize('field', ['meta', 'origin', 'success_callback_name', 'retry_intervals'])
def test_any_other_signed_field_edited_falls_back(connection, planned, field):
    make(connection).enqueue_at(past(), tasks.add, 1, 2, job_id='edited')
    value = {
        'meta': pickle.dumps({'x': 1}), 'origin': 'default ', 'success_callback_name': 'os.system',
        'retry_intervals': '[1, "x"]',
    }[field]  # fmt: skip
    connection.hset(keys.job_key('edited'), field, value)
    make(connection).enqueue_jobs()
    assert planned == ['edited']


def test_a_mark_from_before_the_allow_list_changed_is_not_trusted(connection, planned):
    # Written when every callable could run (the mark says so), moved under an allow-list that refuses it.
    make(connection, rule=None).enqueue_at(past(), tasks.fail, 'x', job_id='old')
    make(connection).enqueue_jobs()
    assert queued(connection) == []
    assert planned == ['old']
    assert 'callable refused' in make(connection).dead_letters()['old']


def test_a_mark_copied_onto_another_job_is_not_trusted(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='one')
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='two')
    mark = connection.hget(keys.job_key('one'), keys.FAST_MARK_FIELD)
    connection.hset(keys.job_key('two'), keys.FAST_MARK_FIELD, mark)
    scheduler.enqueue_jobs()
    assert planned == ['two']


def test_a_periodic_job_is_never_moved_whole_even_with_a_true_mark(connection, planned):
    scheduler = make(connection)
    template = scheduler.schedule(past(), tasks.add, args=(1, 2), interval=3600, id='every-hour')
    assert not connection.hexists(template.key, keys.FAST_MARK_FIELD)
    fields = {name.decode(): value for name, value in connection.hgetall(template.key).items()}
    signer = fast_moves.Signer.of(KEY, ALLOWED)
    connection.hset(template.key, keys.FAST_MARK_FIELD, signer.mark('every-hour', fields))
    scheduler.enqueue_jobs()
    assert planned == ['every-hour']
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 'every-hour') is not None  # still scheduled, next slot
    assert [job_id for job_id in queued(connection)] != ['every-hour']  # a fresh occurrence, not the template


def test_a_job_with_dependencies_is_not_marked_and_a_rewrite_drops_an_old_mark(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past() + timedelta(hours=2), tasks.add, 1, 2, job_id='later')
    assert connection.hexists(keys.job_key('later'), keys.FAST_MARK_FIELD)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='later', depends_on='missing-parent')
    assert not connection.hexists(keys.job_key('later'), keys.FAST_MARK_FIELD)
    scheduler.enqueue_jobs()
    assert planned == ['later']


def test_a_paused_queue_keeps_its_jobs_due_until_resumed(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='held')
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='other-queue', queue_name='high')
    pause.pause(connection, ['default'], by='test', reason='', now=time.time())
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    assert queued(connection) == [] and queued(connection, 'high') == ['other-queue']
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 'held') is not None
    pause.resume(connection, ['default'])
    planned.clear()
    scheduler.move_due_jobs()
    assert queued(connection) == ['held'] and planned == []


def test_every_queue_paused_moves_nothing(connection):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='held')
    pause.pause(connection, None, by='test', reason='', now=time.time())
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()
    assert queued(connection) == [] and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1


def test_an_unknown_queue_goes_planned_once_then_fast(connection, planned):
    scheduler = make(connection)
    assert scheduler.mover.fast is not None
    scheduler.mover.fast.origins = ['default']  # as outside Django, where only the scheduler's queue is known
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='first', queue_name='high')
    scheduler.enqueue_jobs()
    assert planned == ['first'] and queued(connection, 'high') == ['first']
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='second', queue_name='high')
    planned.clear()
    scheduler.enqueue_jobs()
    assert planned == [] and queued(connection, 'high') == ['first', 'second']


def test_noscript_after_a_restart_is_loaded_again(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='before')
    scheduler.enqueue_jobs()
    connection.script_flush()
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='after')
    scheduler.enqueue_jobs()
    assert queued(connection) == ['before', 'after'] and planned == []


def test_a_deleted_hash_is_dead_lettered_and_a_rescheduled_job_waits(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='deleted')
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='moved-later')
    connection.delete(keys.job_key('deleted'))
    scheduler.change_execution_time('moved-later', datetime.now(UTC) + timedelta(hours=1))
    scheduler.enqueue_jobs()
    assert queued(connection) == []
    assert 'job hash is missing' in scheduler.dead_letters()['deleted']
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 'moved-later') is not None


def test_a_member_that_is_not_utf8_is_never_moved_whole(connection, planned):
    # Without an allow-list a mark needs no key: someone else can make one that verifies, but not for such an id.
    member = b'\xff\xfe'
    fields = {'data': zlib.compress(pickle.dumps(('tests.tasks.add', None, (1, 2), {}))), 'origin': b'default'}
    signer = fast_moves.Signer.of(None, None)
    assert signer is not None
    forged = hashlib.sha1(signer.key + fast_moves.message(member, fields)).hexdigest()
    connection.hset(b'rq:job:' + member, mapping={**fields, 'status': 'scheduled', keys.FAST_MARK_FIELD: forged})
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {member: time.time() - 60})
    make(connection, rule=None, key=None).enqueue_jobs()
    assert queued(connection) == []
    assert planned == [member]
    assert connection.hexists(keys.DEAD_LETTERS_KEY, member)


def test_a_job_not_scheduled_any_more_goes_planned(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='odd')
    connection.hset(keys.job_key('odd'), 'status', 'finished')  # someone else's doing; the mark stays
    scheduler.enqueue_jobs()
    assert planned == ['odd']


def test_a_job_key_of_the_wrong_type_is_left_to_the_planned_path(connection, planned):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='fine')
    connection.set(keys.job_key('broken'), 'not a hash')
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'broken': time.time() - 60})
    scheduler.enqueue_jobs()
    assert queued(connection) == ['fine']
    assert planned == ['broken'] and 'broken' in scheduler.dead_letters()


def test_a_deposed_leader_moves_nothing(connection):
    scheduler = make(connection)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='fenced')
    assert scheduler.acquire_lock()
    connection.set(keys.LOCK_KEY, 'someone else')
    with pytest.raises(LeadershipLost):
        scheduler.move_due_jobs()
    assert queued(connection) == [] and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1


def test_an_allow_list_without_a_key_marks_and_trusts_nothing(connection, planned):
    scheduler = make(connection, key=None)
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='unmarked')
    assert not connection.hexists(keys.job_key('unmarked'), keys.FAST_MARK_FIELD)
    assert scheduler.mover.fast is None
    scheduler.enqueue_jobs()
    assert planned == ['unmarked'] and queued(connection) == ['unmarked']


def test_a_predicate_rule_cannot_be_fingerprinted_so_nothing_is_marked(connection):
    scheduler = make(connection, rule=lambda path: path == 'tests.tasks.add')
    scheduler.enqueue_at(past(), tasks.add, 1, 2, job_id='unmarked')
    assert not connection.hexists(keys.job_key('unmarked'), keys.FAST_MARK_FIELD)
    assert scheduler.mover.fast is None


def test_changing_the_rule_of_a_scheduler_changes_its_marks(connection, planned):
    scheduler = make(connection, rule=None)
    scheduler.enqueue_at(past(), tasks.fail, 'x', job_id='written-open')
    scheduler.callable_allowed = ALLOWED
    scheduler.enqueue_jobs()
    assert planned == ['written-open'] and queued(connection) == []


def test_a_batch_of_marked_one_offs_costs_one_round_trip(connection, round_trips):
    scheduler = make(connection, batch_size=100)
    for i in range(250):
        scheduler.enqueue_at(past(), tasks.add, i, 1, job_id=f'j{i}')
    assert scheduler.acquire_lock()
    scheduler.move_due_jobs()  # loads the scripts
    for i in range(250, 500):
        scheduler.enqueue_at(past(), tasks.add, i, 1, job_id=f'j{i}')
    round_trips['n'] = 0
    report = scheduler.move_due_jobs()
    assert len(report.enqueued) == 250
    # Three fast calls (100, 100, 50: the last not full ends the fast pass), one planned read finding nothing.
    assert round_trips['n'] == 3 + 1


def test_inside_django_producers_and_the_loop_share_a_key_derived_from_secret_key(settings, connection, planned):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    Scheduler(connection=connection).enqueue_at(past(), tasks.add, 1, 2, job_id='from-django')
    loop = Scheduler(queue_name='default')  # as manage.py rqscheduler builds it: settings' allow-list and key
    assert loop.mover.fast is not None
    assert loop.acquire_lock()
    loop.move_due_jobs()
    assert queued(connection) == ['from-django'] and planned == []
    assert settings.SECRET_KEY not in str(fast_moves.Signer.of(loop._signing_key, loop.callable_allowed))


def test_a_producer_with_another_secret_key_is_moved_the_planned_way(settings, connection, planned):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    settings.SECRET_KEY = 'another project'
    Scheduler(connection=connection).enqueue_at(past(), tasks.add, 1, 2, job_id='elsewhere')
    settings.SECRET_KEY = 'tests-only'
    loop = Scheduler(queue_name='default')
    assert loop.acquire_lock()
    loop.move_due_jobs()
    assert queued(connection) == ['elsewhere'] and planned == ['elsewhere']


def test_jobs_written_by_rq_scheduler_carry_no_mark_and_are_moved_the_planned_way(connection, planned):
    import rq_scheduler

    rq_scheduler.Scheduler(connection=connection).enqueue_at(past().replace(tzinfo=None), tasks.add, 1, 2)
    make(connection).enqueue_jobs()
    assert len(planned) == 1 and queued(connection) == [planned[0]]
