"""The fast path of rows' one-offs (``core.fast_rows``), on a real Redis: a marked template moved whole in Redis
writes exactly what the planned path writes (job hash, meta, run record, done marker), and every template it must
leave (forged, copied, edited or stale marks, fields added or removed, shapes our sync never writes, a misfire, a
paused queue, another serializer, Redis out of memory) is left untouched to the planned path, which decides as
before."""

from __future__ import annotations

import json
import pickle
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import fast_rows, keys, pause
from django_rq_scheduled.core.allowlist import AllowList
from django_rq_scheduled.core.mover import MoveReport
from django_rq_scheduled.core.outcomes import SKIPPED_MISFIRE
from django_rq_scheduled.models import Run, ScheduledJob
from django_rq_scheduled.servers import servers
from tests import tasks
from tests.adversarial.test_loop import needs_redis_server, out_of_memory  # noqa: F401 (a fixture)
from tests.conftest import STALL, run_worker, short_socket_timeout
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
VARIANTS = {
    'defaults': {},
    'every option': {'queue': 'high', 'timeout': 50, 'result_ttl': -1, 'ttl': 100, 'at_front': True,
                     'description': 'mine', 'misfire_grace': 600, 'overlap': 'skip', 'kwargs': {'x': [1, 'é']}},
    'no expiry, a grace': {'ttl': None, 'misfire_grace': 3600, 'args': [7, 8]},
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean(connection):
    connection.flushdb()
    yield
    connection.flushdb()


def row(name='once', **options) -> ScheduledJob:
    values = {'name': name, 'callable': 'tests.tasks.add', 'args': [2, 3], 'scheduled_time': datetime.now(UTC)}
    return ScheduledJob.objects.create(**{**values, **options})


def leader(connection, **kwargs) -> Scheduler:
    connection.delete(keys.LOCK_KEY)  # an earlier leader of the test gives way
    scheduler = Scheduler(connection=connection, **kwargs)
    assert scheduler.acquire_lock()
    return scheduler


def fast_pass(scheduler: Scheduler) -> list[str]:
    """The fast path alone, as the first step of a pass runs it: the ids it moved."""
    report = MoveReport()
    scheduler.mover.fast.run(report)
    return report.enqueued


def template_key(schedule: ScheduledJob) -> str:
    return keys.job_key(schedule.template_id)


def refused_payload() -> bytes:
    return zlib.compress(pickle.dumps(('tests.tasks.fail', None, ('boom',), {})))


def state(connection) -> dict:
    """Everything a move leaves in Redis, comparable: hashes (meta unpickled), lists (run records parsed), the
    schedule, expiries."""
    seen = {}
    for name in sorted(connection.keys('*')):
        kind = connection.type(name)
        if kind == b'hash':
            value = connection.hgetall(name)
            if b'meta' in value:
                value[b'meta'] = pickle.loads(value[b'meta'])
        elif kind == b'list':
            value = connection.lrange(name, 0, -1)
            if name == keys.RUNS_KEY.encode():
                value = [json.loads(item) for item in value]
        elif kind == b'zset':
            value = connection.zrange(name, 0, -1, withscores=True)
        elif kind == b'set':
            value = connection.smembers(name)
        else:
            value = connection.get(name)
        seen[name] = (value, connection.ttl(name) > 0)
    seen.pop(keys.LOCK_KEY.encode(), None)
    return seen


def moved(connection, scheduler: Scheduler, now: float) -> dict:
    scheduler.mover.clock.now = lambda: now  # type: ignore[method-assign]  # both paths stamp the same times
    scheduler.move_due_jobs()
    return state(connection)


@pytest.mark.parametrize('options', VARIANTS.values(), ids=VARIANTS.keys())
def test_a_rows_one_off_moves_whole_in_redis_exactly_as_the_planned_path_moves_it(connection, planned, options):
    schedules = [row(f'once-{n}', **options) for n in range(3)]
    assert all(connection.hexists(template_key(s), keys.ROW_MARK_FIELD) for s in schedules)
    snapshot = [(name, connection.dump(name)) for name in connection.keys('*')]
    now = time.time() + 1
    fast = moved(connection, leader(connection), now)
    assert planned == []
    connection.flushdb()
    for name, dumped in snapshot:
        connection.restore(name, 0, dumped)
    slow = leader(connection)
    slow.mover.fast = None
    assert moved(connection, slow, now) == fast
    assert sorted(planned) == sorted(s.template_id for s in schedules)
    [record, *_] = fast[keys.RUNS_KEY.encode()][0]
    assert record['outcome'] == 'enqueued' and record['finished'] and record['runs'] == 1
    job = fast[template_key(schedules[0]).encode()][0]
    assert job[b'status'] == b'queued' and keys.ROW_MARK_FIELD.encode() not in job
    assert not [name for name in job if name.startswith((b'~', b'^'))]


def test_a_worker_runs_a_fast_moved_row_and_its_outcome_reaches_the_row(connection, redis_url, planned):
    from django_rq_scheduled.feedback import DatabaseSync

    schedule = row()
    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    assert fast_pass(scheduler) == [schedule.template_id]
    feedback = DatabaseSync(reconcile_interval=3600, background=False)
    feedback(scheduler)
    run_worker(redis_url)
    scheduler.move_due_jobs()
    feedback(scheduler)
    schedule.refresh_from_db()
    [run] = Run.objects.all()
    assert (run.status, run.rq_job_id, schedule.has_run) == ('finished', schedule.template_id, True)
    assert planned == []


def test_without_a_trusted_key_no_row_is_marked_and_all_move_planned(connection, monkeypatch, planned):
    monkeypatch.setattr(servers().scheduler_for('default').jobs, 'signer', None)
    schedule = row()
    assert not connection.hexists(template_key(schedule), keys.ROW_MARK_FIELD)
    scheduler = leader(connection)
    assert fast_pass(scheduler) == []
    scheduler.move_due_jobs()
    assert planned == [schedule.template_id]
    assert connection.lrange('rq:queue:default', 0, -1) == [schedule.template_id.encode()]


def test_a_forged_mark_gets_no_row_past_the_allow_list(connection, settings, planned):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    schedule = row()
    assert connection.hexists(template_key(schedule), keys.ROW_MARK_FIELD)
    connection.hset(
        template_key(schedule), mapping={'data': refused_payload(), keys.ROW_MARK_FIELD: 'f' * fast_rows.MARK_DIGITS}
    )
    scheduler = leader(connection)
    assert fast_pass(scheduler) == []
    scheduler.move_due_jobs()
    assert planned == [schedule.template_id]
    assert connection.llen('rq:queue:default') == 0
    assert 'callable refused' in scheduler.dead_letters()[schedule.template_id]


def test_the_sync_marks_under_the_allow_list_in_force_once_it_changes(connection, settings):
    """The sync's schedulers are cached; a changed ALLOWED_CALLABLES (override_settings, a test's ``settings``) must
    reach them, or every row made after it would be marked under the old allow-list and left to the planned path."""
    before = row('before')
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.add']}
    after = row('after')
    assert fast_pass(leader(connection)) == [after.template_id]  # the first row's mark: another allow-list's
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, before.template_id) is not None


@pytest.mark.parametrize(
    'field, value',
    [
        ('data', refused_payload()),
        ('origin', 'high'),
        ('description', 'changed'),
        ('~v', 'ffff'),
        ('~ft', '1.5'),
        ('~g', '1'),
    ],
)
def test_an_edited_field_under_a_true_mark_is_left_to_the_planned_path(connection, planned, field, value):
    schedule = row(misfire_grace=3600)
    connection.hset(template_key(schedule), field, value)
    assert fast_pass(leader(connection)) == []
    assert planned == [] and connection.hexists(template_key(schedule), keys.ROW_MARK_FIELD)
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, schedule.template_id) is not None


@pytest.mark.parametrize(
    'field, value',
    [
        ('result', pickle.dumps('what a worker would unpickle')),
        ('success_callback_name', 'os.system'),
        ('meta', pickle.dumps({'x': 1})),
        ('~r', 'false'),
        ('~n', '1'),
        ('dependency_ids', '["other"]'),
        ('status', 'canceled'),
        ('ttl', '5'),
    ],
)
def test_a_field_added_under_a_true_mark_is_left_to_the_planned_path(connection, planned, field, value):
    schedule = row()
    connection.hset(template_key(schedule), field, value)
    assert fast_pass(leader(connection)) == []
    leader(connection).move_due_jobs()
    assert planned == [schedule.template_id]


def test_a_field_removed_under_a_true_mark_is_left(connection, planned):
    schedule = row(description='mine')
    connection.hdel(template_key(schedule), 'description')
    assert fast_pass(leader(connection)) == []


def test_a_mark_copied_onto_another_rows_template_is_not_trusted(connection, planned):
    first, second = row('first'), row('second')
    mark = connection.hget(template_key(first), keys.ROW_MARK_FIELD)
    connection.delete(template_key(second))
    connection.copy(template_key(first), template_key(second))
    connection.hset(template_key(second), keys.ROW_MARK_FIELD, mark)
    assert fast_pass(leader(connection)) == [first.template_id]


def test_marks_made_under_another_allow_list_or_key_are_not_trusted(connection, planned):
    schedule = row()
    assert fast_pass(leader(connection, callable_allowed=AllowList(['tests.tasks.*']))) == []
    assert fast_pass(leader(connection, signing_key='another key')) == []
    assert fast_pass(leader(connection)) == [schedule.template_id]


def test_a_loop_with_another_serializer_leaves_rows_to_the_planned_path(connection, planned):
    schedule = row()
    scheduler = leader(connection, serializer=JSONSerializer)
    assert scheduler.mover.fast.row_key == b''
    assert fast_pass(scheduler) == []
    assert connection.hexists(template_key(schedule), keys.ROW_MARK_FIELD)


@pytest.mark.parametrize(
    'field, value',
    [
        ('~ft', '1795964504'),  # an int: the planned path's meta would hold an int
        ('~ft', '1.7e9'),
        ('~g', '1234567890'),  # past what the script packs as a 4-byte int
        ('~g', '1.5'),
        ('~ov', 'a b'),
        ('~v', 'not hex'),
        ('ttl', 'soon'),
        ('~k', 'interval'),
    ],
)
def test_a_shape_our_sync_never_writes_is_left_even_under_a_true_mark(connection, planned, field, value):
    schedule = row(misfire_grace=60)
    key = template_key(schedule)
    connection.hset(key, field, value)
    fields = {name.decode(): value for name, value in connection.hgetall(key).items()}
    fields.pop(keys.ROW_MARK_FIELD)
    signer = servers().scheduler_for('default').jobs.signer
    connection.hset(key, keys.ROW_MARK_FIELD, signer.row_mark(schedule.template_id, fields))
    assert fast_pass(leader(connection)) == []
    assert connection.hget(key, field) == value.encode()


def test_a_mark_over_true_fields_still_moves_when_signed_by_hand(connection, planned):
    """The counterpart of the test above: a hand-made mark over the fields as written verifies."""
    schedule = row(misfire_grace=60)
    key = template_key(schedule)
    fields = {name.decode(): value for name, value in connection.hgetall(key).items()}
    fields.pop(keys.ROW_MARK_FIELD)
    signer = servers().scheduler_for('default').jobs.signer
    assert connection.hget(key, keys.ROW_MARK_FIELD).decode() == signer.row_mark(schedule.template_id, fields)
    assert fast_pass(leader(connection)) == [schedule.template_id]


def test_a_run_past_its_misfire_grace_is_left_and_the_planned_path_records_the_skip(connection, planned):
    schedule = row(misfire_grace=5)
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {schedule.template_id: time.time() - 60})
    scheduler = leader(connection)
    assert fast_pass(scheduler) == []
    scheduler.move_due_jobs()
    assert planned == [schedule.template_id]
    assert connection.llen('rq:queue:default') == 0
    [record] = [json.loads(item) for item in connection.lrange(keys.RUNS_KEY, 0, -1)]
    assert record['outcome'] == SKIPPED_MISFIRE


def test_a_paused_queue_keeps_its_rows_due(connection, planned):
    schedule = row()
    pause.pause(connection, ['default'], by='test', reason='', now=time.time())
    scheduler = leader(connection)
    assert fast_pass(scheduler) == []
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, schedule.template_id) is not None
    pause.resume(connection, ['default'])
    assert fast_pass(scheduler) == [schedule.template_id]


def test_a_template_key_of_another_type_is_left_to_the_planned_path(connection, planned):
    schedule = row()
    connection.delete(template_key(schedule))
    connection.set(template_key(schedule), 'not a hash')
    scheduler = leader(connection)
    assert fast_pass(scheduler) == []
    scheduler.move_due_jobs()
    assert planned == [schedule.template_id]
    assert schedule.template_id in scheduler.dead_letters()


def test_a_score_that_is_not_a_finite_number_is_left(connection, planned):
    schedule = row()
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {schedule.template_id: float('-inf')})
    assert fast_pass(leader(connection)) == []
    assert connection.llen(keys.RUNS_KEY) == 0


@needs_redis_server
def test_out_of_memory_writes_nothing_and_every_row_moves_once_memory_is_freed(connection, out_of_memory):  # noqa: F811
    schedules = [row(f'oom-{n}') for n in range(20)]
    scheduler = leader(connection, batch_size=7)
    before = {s.template_id: connection.hgetall(template_key(s)) for s in schedules}
    out_of_memory.fill()
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        fast_pass(scheduler)
    assert {s.template_id: connection.hgetall(template_key(s)) for s in schedules} == before
    assert connection.llen('rq:queue:default') == 0 and connection.llen(keys.RUNS_KEY) == 0
    out_of_memory.free()
    assert sorted(fast_pass(scheduler)) == sorted(before)
    assert sorted(connection.lrange('rq:queue:default', 0, -1)) == sorted(name.encode() for name in before)
    assert connection.llen(keys.RUNS_KEY) == 20


def test_a_rows_mark_keeps_its_template_a_listpack_and_costs_one_allocation_size_at_most(connection):
    schedule = row(misfire_grace=3600)
    key = template_key(schedule)
    unmarked = {name: value for name, value in connection.hgetall(key).items() if name != keys.ROW_MARK_FIELD.encode()}
    twin = key.replace('drqs-', 'drqz-')  # a key name of the same length
    connection.hset(twin, mapping=unmarked)
    assert connection.object('encoding', key) == b'listpack'
    # 49 bytes of listpack: the allocator's next size up, 32 or 64 bytes at these sizes (jemalloc)
    assert connection.memory_usage(key, samples=0) - connection.memory_usage(twin, samples=0) <= 64


def test_only_one_off_templates_of_the_plain_shape_are_marked():
    assert fast_rows.markable({'~k': 'once', 'data': b'x', 'origin': 'default'})
    assert not fast_rows.markable({'~k': 'interval', 'data': b'x'})
    assert not fast_rows.markable({'~k': 'once', '~rt': '3'})


def test_a_queue_key_of_another_type_leaves_its_rows_to_the_planned_path(connection, planned):
    schedule = row()
    connection.set('rq:queue:default', 'not a list')
    assert fast_pass(leader(connection)) == []
    assert connection.hexists(template_key(schedule), keys.ROW_MARK_FIELD)
    assert connection.get('rq:queue:default') == b'not a list'


def test_an_api_one_off_with_an_id_shaped_like_a_rows_is_moved_once_the_planned_way(connection, planned):
    scheduler = leader(connection)
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(minutes=1), tasks.add, 1, 2, job_id='drqs-report-5')
    assert fast_pass(scheduler) == []
    scheduler.move_due_jobs()
    assert planned == ['drqs-report-5']
    assert connection.lrange('rq:queue:default', 0, -1) == [b'drqs-report-5']


# -- races with the user's edits, and Redis failing under the move ---------------------------------------------------


def test_an_edit_before_the_move_is_what_runs_and_one_after_it_runs_nothing_again(connection, planned):
    schedule = row(args=[1, 1])
    schedule.args = [40, 2]
    schedule.save()  # the sync writes the template anew, with a mark of its own
    scheduler = leader(connection)
    assert fast_pass(scheduler) == [schedule.template_id]
    job = Job.fetch(schedule.template_id, connection=connection)
    assert job.args == (40, 2)
    schedule.args = [5, 5]
    schedule.save()  # after its run: a one-off never runs twice, whatever was edited
    assert not connection.zscore(keys.SCHEDULED_JOBS_KEY, schedule.template_id)
    scheduler.move_due_jobs()
    assert connection.lrange('rq:queue:default', 0, -1) == [schedule.template_id.encode()]
    assert Job.fetch(schedule.template_id, connection=connection).args == (40, 2)
    assert connection.llen(keys.RUNS_KEY) == 1 and planned == []


def test_redis_stalled_past_the_socket_timeout_mid_move_moves_and_records_each_row_once(connection, redis_url):
    schedules = [row(f'stalled-{n}') for n in range(30)]
    staller = redis.Redis.from_url(redis_url)
    stalls: list[threading.Thread] = []

    def stall(moved):
        if not stalls:  # the second call is in flight; the third is sent into a Redis busy for 0.6 s
            stalls.append(threading.Thread(target=staller.eval, args=(STALL, 0, 0.6)))
            stalls[0].start()
            time.sleep(0.05)

    scheduler = leader(connection, batch_size=10)
    with short_socket_timeout(connection, 0.2):
        with pytest.raises(redis.exceptions.TimeoutError):
            scheduler.mover.fast.run(MoveReport(as_moved=stall))
        stalls[0].join()
    staller.close()
    scheduler.move_due_jobs()  # whether Redis ran the timed-out call or not: the rest moves, none twice
    moved = connection.lrange('rq:queue:default', 0, -1)
    records = [json.loads(item)['job'] for item in connection.lrange(keys.RUNS_KEY, 0, -1)]
    assert sorted(moved) == sorted(s.template_id.encode() for s in schedules)
    assert sorted(records) == sorted(s.template_id for s in schedules)


def test_a_loop_on_a_replica_waits_out_readonly_and_moves_each_row_once_promoted(settings, planned):
    primary = RedisServer().start()
    replica = RedisServer(extra_args=('--replicaof', '127.0.0.1', str(primary.port))).start()
    settings.RQ_QUEUES = {name: {'URL': primary.url} for name in ('default', 'high')}
    reader = redis.Redis.from_url(replica.url)
    scheduler = Scheduler(connection=reader, name='on-replica', interval=0.05, batch_size=7)
    loop = threading.Thread(target=scheduler.run)
    try:
        schedules = [row(f'replicated-{n}') for n in range(20)]
        deadline = time.monotonic() + 15
        redis.Redis.from_url(primary.url).set(keys.LOCK_KEY, scheduler.lease.token)  # as if it led, before
        while reader.zcard(keys.SCHEDULED_JOBS_KEY) < 20 or reader.get(keys.LOCK_KEY) is None:  # replicated
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(redis.exceptions.ReadOnlyError):  # the script's first write: nothing written
            fast_pass(scheduler)
        assert reader.hexists(template_key(schedules[0]), keys.ROW_MARK_FIELD) and reader.llen(keys.RUNS_KEY) == 0
        loop.start()
        time.sleep(1.0)
        assert reader.llen('rq:queue:default') == 0 and reader.zcard(keys.SCHEDULED_JOBS_KEY) == 20
        reader.replicaof('NO', 'ONE')  # the failover: the replica becomes the primary
        while reader.llen(keys.RUNS_KEY) < 20:
            assert time.monotonic() < deadline + 15
            time.sleep(0.02)
        moved = sorted(reader.lrange('rq:queue:default', 0, -1))
    finally:
        scheduler.request_stop()
        if loop.is_alive():
            loop.join(10)
        reader.close()
        replica.close()
        primary.close()
    assert moved == sorted(s.template_id.encode() for s in schedules)
    assert planned == []  # the rows went the fast way once Redis took writes
