"""Hostile callers of the ``Scheduler`` API and hostile producers writing into Redis: nothing outside the allow-list
runs, and the scheduler never runs code from a payload. Grow this module with every new way in."""

from __future__ import annotations

import os
import pickle
import sys
import warnings
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.allowlist import AllowList
from tests import hostile_tasks, tasks

pytestmark = pytest.mark.integration
UTC = timezone.utc
PAST = datetime(2020, 1, 1, tzinfo=UTC)

# Paths that name os.system through a module the allow-list trusts.
SMUGGLED = [
    'tests.tasks.os.system',  # an attribute chain: tests/tasks.py imports os
    'tests.hostile_tasks.system',  # imported by the module (from os import system), not defined there
    'tests.hostile_tasks.os.system',
    'tests.hostile_tasks.imported_add',  # defined in tests.tasks: allowed only under its own module's name
    'os.system',
    'tests.tasks..add',
    'tests.tasks.add ',
    '.tests.tasks.add',
]


@pytest.fixture
def restricted(settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*', 'tests.hostile_tasks.*']}


def queued(connection, queue='default'):
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


@pytest.mark.parametrize('path', SMUGGLED)
def test_the_api_refuses_every_smuggled_path_at_call_time(connection, restricted, path):
    scheduler = Scheduler(connection=connection)
    for schedule in (
        lambda: scheduler.enqueue_at(PAST, path),
        lambda: scheduler.enqueue_in(timedelta(seconds=1), path),
        lambda: scheduler.schedule(PAST, path, interval=60),
        lambda: scheduler.cron('* * * * *', path),
    ):
        with pytest.raises(ValueError, match='func'):
            schedule()
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    assert not connection.keys('rq:job:*')


def test_a_function_object_defined_elsewhere_is_judged_by_its_own_module(connection, settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.hostile_tasks.*']}
    scheduler = Scheduler(connection=connection)
    with pytest.raises(ValueError, match='not allowed'):
        scheduler.enqueue_at(PAST, hostile_tasks.imported_add, 1, 2)  # it is tests.tasks.add
    with pytest.raises(ValueError, match='not allowed'):
        scheduler.enqueue_at(PAST, os.system, 'true')
    scheduler.enqueue_at(PAST, hostile_tasks.defined_here, job_id='fine')
    assert 'fine' in scheduler


def test_a_bound_method_is_refused_when_callables_are_restricted(connection, restricted):
    scheduler = Scheduler(connection=connection)
    with pytest.raises(ValueError, match='bound method'):
        scheduler.enqueue_at(PAST, hostile_tasks.Boom().__reduce__)


@pytest.mark.parametrize('path', SMUGGLED)
def test_a_foreign_producer_smuggling_a_path_gets_a_dead_letter_and_nothing_runs(connection, restricted, path):
    # rq-scheduler 0.14's client, or any producer: it writes the job hash and the schedule entry itself.
    from rq_scheduler import Scheduler as RQScheduler

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            RQScheduler(connection=connection).enqueue_at(PAST.replace(tzinfo=None), path, 'echo smuggled')
        except ValueError:
            pytest.skip(f'RQ itself refuses {path!r}')
    assert Scheduler(connection=connection).enqueue_jobs() == []
    assert queued(connection) == []
    [reason] = Scheduler(connection=connection).dead_letters().values()
    assert 'refused' in reason


def _hash_with(connection, job_id, **fields):
    job = Job.create(tasks.add, args=(1, 2), id=job_id, connection=connection)
    job.origin = 'default'
    job.save()
    if fields:
        connection.hset(job.key, mapping=fields)
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {job_id: PAST.timestamp()})
    return job


def _pickled(payload):
    return zlib.compress(pickle.dumps(payload))


@pytest.mark.parametrize(
    'payload',
    [
        (hostile_tasks.Boom(), None, (), {}),  # the function name itself is a pickle that runs code
        ('tests.tasks.add', hostile_tasks.Boom(), (), {}),  # an "instance" that runs code
        (b'tests.tasks.add', None, (), {}),
        (None, None, (), {}),
        (42, None, (), {}),
        ('tests.tasks.add', None),
        'tests.tasks.add',
        {'func': 'tests.tasks.add'},
    ],
    ids=['reduce-name', 'reduce-instance', 'bytes-name', 'none-name', 'int-name', 'short', 'str', 'dict'],
)
def test_hostile_payloads_never_run_code_in_the_scheduler_and_are_dead_lettered(connection, restricted, payload):
    hostile_tasks.CALLS.clear()
    _hash_with(connection, 'hostile', data=_pickled(payload))
    scheduler = Scheduler(connection=connection)
    assert scheduler.enqueue_jobs() == []
    assert hostile_tasks.CALLS == []
    assert queued(connection) == []
    assert 'hostile' in scheduler.dead_letters()


def test_pickled_arguments_are_not_unpickled_by_the_scheduler(connection, restricted):
    # The callable is allowed; the arguments are the worker's business (documented: RQ's own trust model), but the
    # scheduler itself must not run them while it checks the job.
    hostile_tasks.CALLS.clear()
    _hash_with(connection, 'args-boom', data=_pickled(('tests.tasks.add', None, (hostile_tasks.Boom(),), {})))
    assert [job.id for job in Scheduler(connection=connection).enqueue_jobs()] == ['args-boom']
    assert hostile_tasks.CALLS == []


def test_pickled_meta_is_never_run_and_a_periodic_job_that_must_copy_it_is_dead_lettered(connection, restricted):
    hostile_tasks.CALLS.clear()
    meta = pickle.dumps({'interval': 60, 'boom': hostile_tasks.Boom()})
    _hash_with(connection, 'meta-boom', meta=meta)  # rq-scheduler's own periodic job: its meta is written back
    _hash_with(connection, 'meta-boom-once', meta=pickle.dumps({'boom': hostile_tasks.Boom()}))
    scheduler = Scheduler(connection=connection)
    assert [job.id for job in scheduler.enqueue_jobs()] == ['meta-boom-once']
    assert hostile_tasks.CALLS == []
    assert 'cannot copy' in scheduler.dead_letters()['meta-boom']


def test_our_template_whose_meta_gained_an_unresolved_object_is_dead_lettered_not_copied(connection, restricted):
    # Planning skips the search for stand-ins when reading the meta made none: here it made one, so it searches.
    hostile_tasks.CALLS.clear()
    scheduler = Scheduler(connection=connection)
    scheduler.schedule(PAST, tasks.add, args=[1, 2], interval=3600, id='ours-boom')
    meta = Job.fetch('ours-boom', connection=connection).meta
    connection.hset(keys.job_key('ours-boom'), 'meta', pickle.dumps({**meta, 'boom': hostile_tasks.Boom()}))
    assert scheduler.enqueue_jobs() == []
    assert hostile_tasks.CALLS == []
    assert 'cannot copy' in scheduler.dead_letters()['ours-boom']


def test_plain_data_in_meta_survives_the_safe_reading(connection, restricted):
    stamp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    scheduler = Scheduler(connection=connection)
    scheduler.schedule(PAST, tasks.add, args=[1, 2], interval=3600, id='plain', meta={'when': stamp, 'n': {1, 2}})
    [run] = scheduler.enqueue_jobs()
    run.refresh()
    assert run.meta['when'] == stamp and run.meta['n'] == {1, 2}


def test_json_serialized_jobs_are_read_as_json(connection, restricted):
    scheduler = Scheduler(connection=connection, serializer=JSONSerializer)
    scheduler.enqueue_at(PAST, 'tests.tasks.add', 1, 2, job_id='json')
    assert [job.id for job in scheduler.enqueue_jobs()] == ['json']
    payload = zlib.compress(JSONSerializer.dumps(['tests.tasks.os.system', None, ['true'], {}]))
    _hash_with(connection, 'json-smuggled', data=payload)
    assert scheduler.enqueue_jobs() == []
    assert 'json-smuggled' in scheduler.dead_letters()


def test_a_refused_path_is_never_imported(settings):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    os.environ.pop('DRQS_TEST_IMPORTED_SIDE_EFFECT', None)
    sys.modules.pop('tests.import_side_effect', None)
    from django_rq_scheduled.conf import allow_list

    assert not allow_list()('tests.import_side_effect.run')
    assert 'tests.import_side_effect' not in sys.modules
    assert 'DRQS_TEST_IMPORTED_SIDE_EFFECT' not in os.environ


@pytest.mark.parametrize(
    ('path', 'allowed'),
    [
        ('tests.tasks.add', True),
        ('tests.tasks.record', True),
        ('tests.tasks.os.system', False),
        ('tests.tasks', False),
        ('tests.tasks.TRACE_KEY', False),  # not callable
        ('tests.tasks.missing', False),
        ('tests.hostile_tasks.system', False),
        ('tests.hostile_tasks.Boom', True),  # a class defined there
        ('tests.hostile_tasks.defined_here', True),
    ],
)
def test_the_allow_list_rule(path, allowed):
    assert AllowList(['tests.tasks.*', 'tests.hostile_tasks.*'])(path) is allowed


@pytest.mark.parametrize(
    ('pattern', 'path', 'matches'),
    [
        ('tests.tasks.*', 'tests.tasks.add', True),
        ('tests.*.add', 'tests.tasks.add', True),
        ('tests.*', 'tests.tasks.add', False),  # `*` stays within one segment
        ('tests.tasks.a*', 'tests.tasks.add', True),
        ('tests.tasks.add', 'tests.tasks.add', True),
        ('*.*.*', 'tests.tasks.os', False),  # matches, but os is not defined in tests.tasks
    ],
)
def test_patterns_match_segment_by_segment(pattern, path, matches):
    assert AllowList([pattern])(path) is matches


@pytest.mark.parametrize('value', [None, 42, b'tests.tasks.add', ['tests.tasks.add'], 'tests', '', 'a.b\x00c'])
def test_the_allow_list_refuses_what_is_not_a_path(value):
    assert not AllowList(['*.*.*'])(value)
    assert not AllowList(None).refusal('tests.tasks.add')


# -- the callbacks a job names: a worker imports and calls them too -------------------------------------------------


@pytest.mark.parametrize('field', ['success_callback_name', 'failure_callback_name', 'stopped_callback_name'])
@pytest.mark.parametrize('path', ['os.system', 'tests.hostile_tasks.system', 'tests.tasks.os.system'])
def test_a_foreign_job_whose_callback_the_allow_list_refuses_is_dead_lettered(connection, restricted, field, path):
    _hash_with(connection, 'evil-callback', **{field: path})
    scheduler = Scheduler(connection=connection)
    assert scheduler.enqueue_jobs() == []
    assert queued(connection) == []
    assert f'{field} refused' in scheduler.dead_letters()['evil-callback']


def test_the_api_refuses_a_callback_the_allow_list_refuses(connection, restricted):
    from rq import Callback

    scheduler = Scheduler(connection=connection)
    with pytest.raises(ValueError, match='on_success/on_failure/on_stopped: success_callback_name refused'):
        scheduler.enqueue_at(PAST, tasks.add, 1, 2, on_success=Callback('os.system'))
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_allowed_callbacks_and_those_of_run_capture_are_enqueued(connection, restricted):
    from django_rq_scheduled.core import capture

    _hash_with(connection, 'captured', success_callback_name=capture.callbacks()['on_success'].name)
    _hash_with(connection, 'allowed-callback', failure_callback_name='tests.tasks.add')
    assert sorted(job.id for job in Scheduler(connection=connection).enqueue_jobs()) == ['allowed-callback', 'captured']


def test_a_dead_letter_whose_callback_is_refused_is_not_put_back(connection, restricted):
    _hash_with(connection, 'evil-callback', failure_callback_name='os.system')
    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_jobs()
    with pytest.raises(ValueError, match='job_id: evil-callback would not run: failure_callback_name refused'):
        scheduler.retry_dead_letter('evil-callback')
    assert 'evil-callback' in scheduler.dead_letters()
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
