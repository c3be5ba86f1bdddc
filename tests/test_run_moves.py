"""The plain run of a periodic template sent compactly ('P', ``core.run_moves``), on a real Redis: it writes exactly
what the same move spelled out command by command writes, with foreign data, duplicates and other kinds of entry
in the same batch, and it fails an entry alone on a key of the wrong type."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import redis

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import compact, keys, move_script, moves, plan_ahead, run_moves
from django_rq_scheduled.core.mover import MoveReport
from django_rq_scheduled.models import RepeatableJob, ScheduledJob
from tests import tasks

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc


def make_rows(at: float, count: int = 6) -> None:
    """Rows of every option a run's move depends on, all due at ``at``, with one-offs between them."""
    when = datetime.fromtimestamp(at, UTC)
    options = [
        {},
        {'ttl': 300, 'timeout': 30, 'result_ttl': 50},
        {'at_front': True},
        {'queue': 'high'},
        {'repeat': 1},  # its last run: the template is retired, a move spelled out
        {'misfire_grace': 600, 'retries': 2},
    ]
    rows = [
        RepeatableJob(
            name=f'periodic {index}',
            callable='tests.tasks.add',
            args=[index, 1],
            interval=1,
            interval_unit='hours',
            scheduled_time=when,
            **options[index % len(options)],
        )
        for index in range(count)
    ]
    RepeatableJob.objects.bulk_create(rows)
    ScheduledJob.objects.bulk_create(
        [ScheduledJob(name=f'once {index}', callable='tests.tasks.add', args=[index, 2], scheduled_time=when)
         for index in range(3)]
    )  # fmt: skip
    api = Scheduler(queue_name='default')
    api.schedule(datetime.fromtimestamp(at, UTC), tasks.add, args=(7, 7), interval=60)  # copied in Redis: spelled out


def keyspace(connection) -> dict[bytes, tuple]:
    readers = {
        b'hash': connection.hgetall,
        b'list': lambda key: connection.lrange(key, 0, -1),
        b'zset': lambda key: connection.zrange(key, 0, -1, withscores=True),
        b'set': connection.smembers,
        b'string': connection.get,
    }
    state = {}
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key)
        state[key] = (kind, readers[kind](key), connection.ttl(key) > 0)
    return state


def snapshot(connection) -> dict[bytes, tuple[int, bytes]]:
    return {key: (connection.pttl(key), connection.dump(key)) for key in connection.scan_iter(count=1000)}


def restore(connection, saved) -> None:
    connection.flushdb()
    for key, (ttl, dumped) in saved.items():
        connection.restore(key, max(ttl, 0), dumped)


def planned(mover, at: float, duplicate: bool = False):
    pairs, fields = mover.read_due(at, count=5_000)
    if duplicate:  # a periodic row twice in one call, in a row and apart (an API caller's list): moved once
        first = next(index for index, (member, _) in enumerate(pairs) if member.startswith(b'drqs-repeatablejob'))
        order = [*range(first + 1), first, *range(first + 1, len(pairs)), first]
        pairs, fields = [pairs[index] for index in order], [fields[index] for index in order]
    return mover.plan_batch(pairs, fields, at)


def applied(connection, mover, batch, saved, monkeypatch, *, compact: bool):
    restore(connection, saved)
    with monkeypatch.context() as patch:
        if not compact:
            patch.setattr(run_moves, 'compact_run', lambda entry, shared: None)
        report = MoveReport()
        mover.apply_batch(batch, report, fenced=True)
    return report.enqueued, keyspace(connection)


def compact_kinds(mover, batch) -> list[str]:
    argv = mover._move_argv(batch.planner, batch.fast_entries, fenced=True)
    return [value for value in argv if value == 'P']


def assert_same_writes(connection, mover, batch, monkeypatch) -> list[str]:
    saved = snapshot(connection)
    enqueued, compact_state = applied(connection, mover, batch, saved, monkeypatch, compact=True)
    spelled_enqueued, spelled_state = applied(connection, mover, batch, saved, monkeypatch, compact=False)
    assert enqueued == spelled_enqueued
    assert compact_state.keys() == spelled_state.keys()
    for key in compact_state:
        assert compact_state[key] == spelled_state[key], key
    return enqueued


@pytest.fixture
def mover(leader):
    return leader.scheduler.mover


def test_a_batch_sent_compactly_writes_exactly_what_it_writes_spelled_out(connection, mover, monkeypatch):
    at = round(time.time() + 30, 3)
    make_rows(at, count=12)
    batch = planned(mover, at)
    assert len(compact_kinds(mover, batch)) == 10  # every periodic row but the two on their last run
    enqueued = assert_same_writes(connection, mover, batch, monkeypatch)
    assert len(enqueued) == len(set(enqueued)) == 12 + 3 + 1


def test_a_member_twice_in_one_call_moves_once(connection, mover, monkeypatch):
    at = round(time.time() + 30, 3)
    make_rows(at)
    batch = planned(mover, at, duplicate=True)
    enqueued = assert_same_writes(connection, mover, batch, monkeypatch)
    assert len(enqueued) == len(set(enqueued))


def test_more_runs_in_a_call_than_one_write_of_the_script_takes(connection, mover, monkeypatch):
    at = round(time.time() + 60, 3)
    RepeatableJob.objects.bulk_create(
        [
            RepeatableJob(name=f'many {index}', callable='tests.tasks.add', args=[index, 1], interval=1,
                          interval_unit='hours', scheduled_time=datetime.fromtimestamp(at, UTC),
                          at_front=index % 3 == 0)
            for index in range(1_500)
        ]
    )  # fmt: skip
    batch = planned(mover, at)
    assert len(compact_kinds(mover, batch)) == 1_500
    enqueued = assert_same_writes(connection, mover, batch, monkeypatch)
    assert len(set(enqueued)) == 1_500
    assert connection.llen('rq:queue:default') == 1_500
    assert connection.zcount(keys.SCHEDULED_JOBS_KEY, at + 3600, at + 3600) == 1_500


@pytest.mark.parametrize(
    'corrupt',
    ['a run key', 'a queue key', 'the run records key', 'a template key'],
)
def test_a_key_of_the_wrong_type_fails_its_entries_alone_as_spelled_out(connection, mover, monkeypatch, corrupt):
    at = round(time.time() + 30, 3)
    make_rows(at)
    batch = planned(mover, at)
    first = next(entry for entry in batch.entries if entry.enqueued_id and entry.member.startswith('drqs-'))
    foreign = {
        'a run key': keys.job_key(first.enqueued_id),
        'a queue key': 'rq:queue:high',
        'the run records key': keys.RUNS_KEY,
        'a template key': keys.job_key(first.member),
    }[corrupt]
    connection.delete(foreign)
    connection.set(foreign, 'written by someone else')
    enqueued = assert_same_writes(connection, mover, batch, monkeypatch)
    assert connection.get(foreign) == b'written by someone else'  # never overwritten
    assert first.enqueued_id not in enqueued or corrupt == 'a queue key'
    rest = 1 if corrupt == 'the run records key' else 3  # every row records its runs: only the API template moves
    assert len(enqueued) == len(set(enqueued)) >= rest


def test_runs_planned_ahead_of_templates_edited_or_deleted_since_are_left_as_spelled_out(
    connection, mover, monkeypatch
):
    at = round(time.time() + 30, 3)
    make_rows(at)
    batch = planned(mover, at)
    pairs = zip(batch.decoded, batch.entries)
    guarded = [entry.member for item, entry in pairs if plan_ahead.guarded(item, entry) and item.compact]
    edited, deleted = guarded[:2]
    connection.hset(keys.job_key(edited), compact.VERSION_FIELD, 'edited since')
    connection.delete(keys.job_key(deleted))
    enqueued = assert_same_writes(connection, mover, batch, monkeypatch)
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, edited) == at  # left due: the next pass plans it again
    assert not any(run.startswith((edited, deleted)) for run in enqueued)
    assert len(enqueued) >= 3


def test_an_entry_of_another_kind_rescheduling_a_later_run_leaves_that_run_alone(connection, mover):
    # The script reads the scores of a stretch of runs at once: a write by another kind of entry between them
    # must not be hidden by what it read before.
    at = round(time.time() + 30, 3)
    make_rows(at, count=12)
    batch = planned(mover, at)
    runs = [entry for entry in batch.fast_entries if run_moves.compact_run(entry, run_moves.SharedFields())]
    first, later = runs[0], runs[-1]
    other = next(entry for entry in batch.fast_entries if entry not in runs)
    rescheduler = moves.Entry(
        member=other.member, score=other.score, requires_hash=False,
        commands=[('ZADD', keys.SCHEDULED_JOBS_KEY, str(at + 999), later.member)],
    )  # fmt: skip
    entries = [*runs[:-1], rescheduler, later, first]
    argv = mover._move_argv(batch.planner, entries, fenced=True)
    assert argv.count('P') == len(runs) + 1  # compact runs on both sides of it
    results = mover._call_move(argv)
    assert results[: len(runs) - 1] == [1] * (len(runs) - 1)
    assert results[len(runs) - 1 :] == [1, 0, 0]  # rescheduled, or already moved: not at the planned score
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, later.member) == at + 999
    assert not connection.exists(keys.job_key(later.enqueued_id))
    assert connection.llen('rq:queue:default') + connection.llen('rq:queue:high') == len(runs) - 1


def test_a_redis_without_zmscore_reads_each_score_alone_and_writes_the_same(connection, mover, redis_url):
    # Redis before 6.2 has no ZMSCORE: a user denied it by an ACL gets the same error inside the script.
    at = round(time.time() + 30, 3)
    make_rows(at, count=12)
    batch = planned(mover, at)
    argv = mover._move_argv(batch.planner, batch.fast_entries, fenced=True)
    saved = snapshot(connection)
    results = mover._call_move(argv)
    written = keyspace(connection)
    restore(connection, saved)
    user = 'drqs-test-no-zmscore'
    connection.acl_setuser(user, enabled=True, nopass=True, keys=['*'], channels=['*'], commands=['+@all', '-zmscore'])
    limited = redis.Redis.from_url(redis_url, username=user, password='')
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.zmscore(keys.SCHEDULED_JOBS_KEY, ['x'])
        again = limited.evalsha(mover._move_script.sha, len(move_script.MOVE_KEYS), *move_script.MOVE_KEYS, *argv)
    finally:
        limited.connection_pool.disconnect()
        connection.acl_deluser(user)
    assert again == results and results.count(1) >= 10
    assert keyspace(connection) == written


def test_a_job_class_with_its_own_key_prefix_is_sent_spelled_out(connection, mover, monkeypatch):
    at = round(time.time() + 30, 3)
    make_rows(at)
    batch = planned(mover, at)
    monkeypatch.setattr(mover.job_class, 'redis_job_namespace_prefix', 'other:job:')
    assert compact_kinds(mover, batch) == []


def test_only_the_plain_shape_is_sent_compactly(mover):
    at = time.time()

    class Entry:
        one_off = None
        slow_path = False
        requires_hash = True
        member = 'drqs-x'
        enqueued_id = 'drqs-x_at_1'
        commands = [
            ('HSET', 'rq:job:drqs-x_at_1', b'status', 'queued', b'data', b'payload'),
            ('SADD', keys.QUEUES_SET_KEY, 'rq:queue:default'),
            ('RPUSH', 'rq:queue:default', 'drqs-x_at_1'),
            ('HSET', 'rq:job:drqs-x', '~n', '1'),
            ('ZADD', keys.SCHEDULED_JOBS_KEY, str(at + 60), 'drqs-x'),
        ]

    plain = Entry()
    assert run_moves.compact_run(plain, run_moves.SharedFields())[0] == 'P'
    variants = {
        'another step after it': [*plain.commands, ('DEL', 'rq:job:drqs-x')],
        'pushed under another id': [*plain.commands[:2], ('RPUSH', 'rq:queue:default', 'other'), *plain.commands[3:]],
        'another queue registered': [plain.commands[0], ('SADD', keys.QUEUES_SET_KEY, 'rq:queue:x'),
                                     *plain.commands[2:]],
        'another template updated': [*plain.commands[:3], ('HSET', 'rq:job:other', '~n', '1'), plain.commands[4]],
        'another member rescheduled': [*plain.commands[:4], ('ZADD', keys.SCHEDULED_JOBS_KEY, '1', 'other')],
        'a record elsewhere': [*plain.commands, ('RPUSH', 'rq:other', '{}')],
        'an expectation on another field': [('DRQS_EXPECT', 'rq:job:drqs-x', 'status', 'queued'), *plain.commands],
        'a half field': [('HSET', 'rq:job:drqs-x_at_1', b'status'), *plain.commands[1:]],
    }  # fmt: skip
    for name, commands in variants.items():
        entry = Entry()
        entry.commands = commands
        assert run_moves.compact_run(entry, run_moves.SharedFields()) is None, name
