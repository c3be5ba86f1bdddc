"""An occurrence copied from its template inside the move script (``occurrence_copy``), on a real Redis: the same
job hash as the client's copy, and never a template changed since it was planned and vetted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys, occurrence_copy
from django_rq_scheduled.core.mover import MoveReport
from tests import tasks

UTC = timezone.utc
ALLOWED = 'tests.'
TIMES = ('created_at', 'enqueued_at')


def allowed(path: str) -> bool:
    return path.startswith(ALLOWED)


@pytest.fixture
def api(connection):
    scheduler = Scheduler(connection=connection, callable_allowed=allowed)
    assert scheduler.acquire_lock()
    return scheduler


def due_template(scheduler, template_id='t', **options):
    past = datetime.now(UTC) - timedelta(seconds=5)
    scheduler.schedule(past, tasks.add, args=(1, 2), interval=3600, id=template_id, description='sum', **options)
    return template_id


def planned(scheduler):
    mover = scheduler.mover
    now = mover.clock.now()
    return mover, mover.plan_batch(*mover.read_due(now), now)


def run_hashes(connection):
    runs = [member.decode() for member in connection.lrange('rq:queue:default', 0, -1)]
    return {run: connection.hgetall(keys.job_key(run)) for run in runs}


def without_times(raw):
    return {name: value for name, value in raw.items() if name.decode() not in TIMES}


def test_the_script_copies_the_same_job_hash_as_the_client(connection, api, monkeypatch):
    due_template(api, 'copied', ttl=600, result_ttl=30)
    mover, batch = planned(api)
    assert batch.planner.copy_in_redis  # a real Redis has sha1hex: the script copies
    assert [c[0] for c in batch.entries[0].commands].count(occurrence_copy.COPY_COMMAND) == 1
    snapshot = connection.hgetall(keys.job_key('copied')), connection.zscore(keys.SCHEDULED_JOBS_KEY, 'copied')
    mover.apply_batch(batch, MoveReport(), fenced=True)
    [(run, by_script)] = run_hashes(connection).items()
    # The same move, the client copying the whole template it read, as before (and as on fakeredis).
    connection.delete(keys.job_key(run), 'rq:queue:default')
    connection.hset(keys.job_key('copied'), mapping=snapshot[0])
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'copied': snapshot[1]})
    monkeypatch.setattr(occurrence_copy, 'supported', lambda connection: False)
    mover._copies = None
    mover, batch = planned(api)
    assert not batch.planner.copy_in_redis
    mover.apply_batch(batch, MoveReport(), fenced=True)
    [(again, by_client)] = run_hashes(connection).items()
    assert again == run and without_times(by_script) == without_times(by_client)
    assert b'description' in by_script and Job.fetch(run, connection=connection).args == (1, 2)


def test_a_payload_forged_after_vetting_is_never_copied(connection, api):
    due_template(api)
    mover, batch = planned(api)  # read and vetted: tests.tasks.add
    forged = Job.create('os.system', args=('true',), connection=connection)
    connection.hset(keys.job_key('t'), 'data', forged.to_dict()['data'])
    report = MoveReport()
    mover.apply_batch(batch, report, fenced=True)
    assert report.enqueued == [] and connection.llen('rq:queue:default') == 0  # left alone, still due
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, 't') is not None
    api.move_due_jobs()  # read again, vetted again: refused
    assert connection.llen('rq:queue:default') == 0
    assert 'os.system' in json.loads(connection.hget(keys.DEAD_LETTERS_KEY, 't'))['reason']


def test_a_callback_added_after_vetting_is_never_copied(connection, api):
    due_template(api)
    mover, batch = planned(api)
    connection.hset(keys.job_key('t'), 'success_callback_name', 'os.system')
    mover.apply_batch(batch, MoveReport(), fenced=True)
    assert connection.llen('rq:queue:default') == 0
    api.move_due_jobs()
    assert connection.llen('rq:queue:default') == 0
    assert 'success_callback_name refused' in json.loads(connection.hget(keys.DEAD_LETTERS_KEY, 't'))['reason']


def test_a_field_added_that_planning_does_not_read_is_copied(connection, api):
    due_template(api)
    mover, batch = planned(api)
    connection.hset(keys.job_key('t'), 'description', 'edited')
    mover.apply_batch(batch, MoveReport(), fenced=True)
    [raw] = run_hashes(connection).values()
    assert raw[b'description'] == b'edited'


def test_a_template_replaced_by_another_type_is_dead_lettered(connection, api):
    due_template(api)
    mover, batch = planned(api)
    connection.delete(keys.job_key('t'))
    connection.set(keys.job_key('t'), 'not a hash')
    mover.apply_batch(batch, MoveReport(), fenced=True)  # never raises
    assert connection.llen('rq:queue:default') == 0
    assert 'WRONGTYPE' in json.loads(connection.hget(keys.DEAD_LETTERS_KEY, 't'))['reason']


def test_a_template_deleted_after_planning_is_not_recreated(connection, api):
    due_template(api)
    mover, batch = planned(api)
    connection.delete(keys.job_key('t'))
    mover.apply_batch(batch, MoveReport(), fenced=True)
    assert connection.llen('rq:queue:default') == 0 and not connection.exists(keys.job_key('t'))


def test_a_template_of_many_fields_is_copied_whole(connection, api):
    due_template(api)
    connection.hset(keys.job_key('t'), mapping={f'extra{i}': i for i in range(20_000)})  # beyond Lua's unpack
    api.move_due_jobs()
    [raw] = run_hashes(connection).values()
    assert raw[b'extra19999'] == b'19999' and raw[b'description'] == b'sum'


def test_run_state_and_compact_fields_are_not_copied(connection, api):
    due_template(api)
    connection.hset(keys.job_key('t'), mapping={'result': 'old', 'worker_name': 'w', '~x': '1', '^y': '2'})
    api.move_due_jobs()
    [raw] = run_hashes(connection).values()
    assert not {b'result', b'worker_name', b'~x', b'^y'} & set(raw)
    assert raw[b'status'] == b'queued'


def test_the_copy_survives_a_script_flush(connection, api):
    due_template(api, 'a')
    api.move_due_jobs()
    connection.script_flush()
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {'a': 0})
    api.move_due_jobs()
    assert connection.llen('rq:queue:default') == 2


def test_a_deposed_leader_copies_nothing(connection, api):
    due_template(api)
    mover, batch = planned(api)
    connection.set(keys.LOCK_KEY, 'someone else')
    with pytest.raises(Exception, match='lease'):
        mover.apply_batch(batch, MoveReport(), fenced=True)
    assert connection.llen('rq:queue:default') == 0


def test_the_digest_matches_the_scripts(connection):
    raw = {b'origin': b'default', b'data': b'\x00\xff|:~', b'meta': b'', b'success_callback_name': 'caf\u00e9'}
    connection.hset('h', mapping={name: value for name, value in raw.items() if value != b''})
    move = occurrence_copy.MOVE
    functions = move[move.index('local copy_planning') : move.index('local function copy_template')]
    script = connection.register_script(
        f'local unpack = unpack or table.unpack\n{functions}\nreturn planning_digest(KEYS[1])'
    )
    assert script(keys=['h']).decode() == occurrence_copy.digest(raw)
