"""The fast path's calls pipelined with the client's work (``core.fast_moves.FastPass``), on a real Redis: each call
goes out before the batch of the one before is accounted for, and a failure at any step between them loses,
repeats or leaks nothing."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import fast_moves, keys
from django_rq_scheduled.core.allowlist import AllowList
from django_rq_scheduled.core.errors import LeadershipLost
from django_rq_scheduled.core.mover import MoveReport
from tests import tasks
from tests.conftest import STALL, short_socket_timeout

pytestmark = pytest.mark.integration

BATCH = 10
JOBS = 35  # three full batches, then one of 5 that ends the pass


@pytest.fixture
def scheduler(connection):
    connection.flushdb()
    scheduler = Scheduler(
        connection=connection, callable_allowed=AllowList(['tests.tasks.add']), signing_key='k', batch_size=BATCH
    )
    due = datetime.now(timezone.utc) - timedelta(minutes=1)
    for number in range(JOBS):
        scheduler.enqueue_at(due + timedelta(milliseconds=number), tasks.add, number, 1, job_id=f'j{number:02d}')
    yield scheduler
    connection.flushdb()


@pytest.fixture
def events(monkeypatch):
    """'sent' for each fast call written to Redis, in order with the calls of the report's ``as_moved``."""
    seen: list[str] = []
    original = fast_moves.FastPass._send

    def send(self, offset, queue_args):
        sent = original(self, offset, queue_args)
        seen.append('sent')
        return sent

    monkeypatch.setattr(fast_moves.FastPass, '_send', send)
    return seen


def queued(connection) -> list[str]:
    return [member.decode() for member in connection.lrange('rq:queue:default', 0, -1)]


def ids() -> list[str]:
    return [f'j{number:02d}' for number in range(JOBS)]


def in_use(connection) -> int:
    return len(connection.connection_pool._in_use_connections)


def test_each_batch_is_accounted_for_while_redis_moves_the_next(scheduler, events):
    report = MoveReport(as_moved=lambda moved: events.append(f'moved {len(moved)}'))
    assert scheduler.acquire_lock()
    scheduler.mover.move_due_jobs(report)
    assert events == ['sent', 'sent', 'moved 10', 'sent', 'moved 10', 'sent', 'moved 10', 'moved 5']
    assert report.enqueued == ids() and report.batches == 4


def test_enqueue_jobs_returns_the_handles_of_every_job_in_the_order_moved(scheduler, connection):
    scheduler.enqueue_at(datetime.now(timezone.utc) - timedelta(minutes=1), tasks.add, 1, 1, job_id='unmarked')
    connection.hdel(keys.job_key('unmarked'), keys.FAST_MARK_FIELD)  # the planned path moves it, after the fast batches
    handles = scheduler.enqueue_jobs()
    assert [job.id for job in handles] == [*ids(), 'unmarked'] == queued(connection)
    handles[3].refresh()
    assert handles[3].args == (3, 1) and handles[3].get_status() == 'queued'


def test_scripts_flushed_between_two_calls_are_loaded_again_and_each_job_moves_once(scheduler, connection):
    flushed = []

    def flush_once(moved):
        if not flushed:
            flushed.append(connection.script_flush())

    assert scheduler.acquire_lock()
    report = scheduler.mover.move_due_jobs(MoveReport(as_moved=flush_once))
    assert flushed and report.enqueued == ids() == queued(connection)
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_a_next_call_that_cannot_be_sent_still_accounts_for_the_batch_before(scheduler, connection, monkeypatch):
    original, calls, moved = fast_moves.FastPass._send, [], []

    def send(self, offset, queue_args):
        calls.append(offset)
        if len(calls) == 2:
            raise redis.ConnectionError('cut')
        return original(self, offset, queue_args)

    monkeypatch.setattr(fast_moves.FastPass, '_send', send)
    assert scheduler.acquire_lock()
    with pytest.raises(redis.ConnectionError):
        scheduler.mover.move_due_jobs(MoveReport(as_moved=moved.extend))
    assert moved == ids()[:BATCH] == queued(connection)
    monkeypatch.setattr(fast_moves.FastPass, '_send', original)
    assert scheduler.mover.move_due_jobs().enqueued == ids()[BATCH:]
    assert queued(connection) == ids() and in_use(connection) == 0


def test_accounting_that_fails_with_a_call_in_flight_closes_its_connection_and_loses_nothing(scheduler, connection):
    def fail(moved):
        raise RuntimeError('an observer of ours failed')

    assert scheduler.acquire_lock()
    with pytest.raises(RuntimeError):
        scheduler.mover.move_due_jobs(MoveReport(as_moved=fail))
    assert in_use(connection) == 0  # the call in flight's connection is closed, not left with a reply unread
    # Redis applied the call in flight: its batch is queued; the next pass moves the rest, none twice.
    assert queued(connection) == ids()[: 2 * BATCH]
    scheduler.mover.move_due_jobs()
    assert queued(connection) == ids() and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_a_lease_lost_between_two_calls_moves_nothing_more(scheduler, connection):
    def depose(moved):
        connection.set(keys.LOCK_KEY, 'someone else')

    assert scheduler.acquire_lock()
    with pytest.raises(LeadershipLost):
        scheduler.mover.fast.run(MoveReport(as_moved=depose))
    # The second call was in flight when the lease went; the third, sent after, was refused whole.
    assert queued(connection) == ids()[: 2 * BATCH]
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == JOBS - 2 * BATCH
    assert in_use(connection) == 0


def test_connections_cut_with_a_call_in_flight_lose_and_repeat_nothing(scheduler, connection, redis_url):
    killer = redis.Redis.from_url(redis_url)
    cuts = []

    def cut(moved):
        if moved[0] == 'j10':  # the third call is in flight
            cuts.append(killer.client_kill_filter(_type='normal', skipme=True))

    assert scheduler.acquire_lock()
    # Its reply lost (ConnectionError); or read before the cut, and the next call sent on a new connection.
    with contextlib.suppress(redis.ConnectionError):
        scheduler.mover.move_due_jobs(MoveReport(as_moved=cut))
    scheduler.mover.move_due_jobs()
    assert cuts and cuts[0] >= 1
    assert queued(connection) == ids() and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    assert in_use(connection) == 0
    killer.close()


def test_a_new_scheduler_loads_its_scripts_once_and_never_gets_noscript(scheduler, connection):
    connection.script_flush()
    assert scheduler.acquire_lock()
    connection.config_resetstat()
    report = MoveReport()
    scheduler.mover.fast.run(report)
    assert report.enqueued == ids()
    assert 'errorstat_NOSCRIPT' not in connection.info('errorstats')
    loads = connection.info('commandstats')['cmdstat_script|load']['calls']
    assert loads == 3  # the mover's pipelined scripts, the fast one among them, once each
    scheduler.enqueue_at(datetime.now(timezone.utc) - timedelta(minutes=1), tasks.add, 1, 1, job_id='later')
    scheduler.mover.fast.run(MoveReport())
    assert connection.info('commandstats')['cmdstat_script|load']['calls'] == loads
    assert 'errorstat_NOSCRIPT' not in connection.info('errorstats')


def test_redis_out_of_memory_between_two_calls_refuses_the_next_whole_and_each_job_moves_once(scheduler, connection):
    def fill_up(moved):
        if moved[0] == 'j00':  # the second call is in flight; the third meets a full Redis
            connection.config_set('maxmemory-policy', 'noeviction')
            connection.config_set('maxmemory', max(1, int(connection.info('memory')['used_memory']) - 200_000))

    assert scheduler.acquire_lock()
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            scheduler.mover.fast.run(MoveReport(as_moved=fill_up))
        assert queued(connection) == ids()[: 2 * BATCH]  # the refused call wrote nothing
        left = [job_id for job_id in ids()[2 * BATCH :] if connection.hget(keys.job_key(job_id), 'status')]
        assert {connection.hget(keys.job_key(job_id), 'status') for job_id in left} == {b'scheduled'}
    finally:
        connection.config_set('maxmemory', 0)
    scheduler.mover.move_due_jobs()
    assert queued(connection) == ids() and scheduler.dead_letters() == {} and in_use(connection) == 0


def test_redis_stalled_past_the_socket_timeout_with_a_call_in_flight_moves_each_job_once(
    scheduler, connection, redis_url
):
    staller = redis.Redis.from_url(redis_url)
    stalls: list[threading.Thread] = []

    def stall(moved):
        if moved[0] == 'j00':  # the second call is in flight; the third is sent into a Redis busy for 0.6 s
            stalls.append(threading.Thread(target=staller.eval, args=(STALL, 0, 0.6)))
            stalls[0].start()
            time.sleep(0.05)

    with short_socket_timeout(connection, 0.2):
        assert scheduler.acquire_lock()
        with pytest.raises(redis.exceptions.TimeoutError):
            scheduler.mover.fast.run(MoveReport(as_moved=stall))
        stalls[0].join()
    scheduler.mover.move_due_jobs()  # whether Redis ran the timed-out call or not, the rest moves, none twice
    assert queued(connection) == ids() and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    assert in_use(connection) == 0
    staller.close()


def test_the_schedule_turned_into_another_type_between_two_calls_raises_and_loses_nothing(scheduler, connection):
    saved: list[bytes] = []

    def break_schedule(moved):
        if moved[0] == 'j00':  # the second call is in flight; the third finds a string
            saved.append(connection.dump(keys.SCHEDULED_JOBS_KEY))
            connection.set(keys.SCHEDULED_JOBS_KEY, 'not a sorted set')

    assert scheduler.acquire_lock()
    with pytest.raises(redis.ResponseError, match='WRONGTYPE'):
        scheduler.mover.fast.run(MoveReport(as_moved=break_schedule))
    assert queued(connection) == ids()[: 2 * BATCH] and in_use(connection) == 0
    connection.restore(keys.SCHEDULED_JOBS_KEY, 0, saved[0], replace=True)  # as it was when broken
    scheduler.mover.move_due_jobs()
    assert queued(connection) == ids() and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
