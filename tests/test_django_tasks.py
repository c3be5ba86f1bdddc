"""Django Tasks as the callables of schedules (docs/tasks.rst): the django-tasks backport's ``@task`` functions run
through their backend, django-tasks-rq's by the loop's own move and real RQ workers, the others through the bridge.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils.module_loading import import_string
from rq import SimpleWorker
from rq.job import Job

from django_rq_scheduled import Scheduler, conf, task_calls
from django_rq_scheduled.core import capture, keys
from django_rq_scheduled.models import RepeatableJob, Run, ScheduledJob
from tests.conftest import ROOT

pytest.importorskip('django_tasks_rq')
from django_tasks import TaskResultStatus
from django_tasks_rq import Job as TaskJob

from django_rq_scheduled.task_job import Job as MixedJob
from tests import django_task_functions as functions

UTC = timezone.utc
PATH = 'tests.django_task_functions'


def due_now(callable: str, **options: object) -> ScheduledJob:
    return ScheduledJob.objects.create(
        name=callable, callable=callable, scheduled_time=datetime.now(UTC) - timedelta(seconds=1), **options
    )


def run_task_worker(url: str, *queues: str, job_class: str = 'django_tasks_rq.Job') -> subprocess.CompletedProcess:
    """A real RQ worker of Django (django-rq's ``rqworker``) with django-tasks-rq's job class, in burst mode."""
    command = [
        sys.executable, '-m', 'django', 'rqworker', '--burst', '--job-class', job_class,
        '--settings', 'tests.settings', *(queues or ('default',)),
    ]  # fmt: skip
    env = {**os.environ, 'DRQS_TEST_REDIS_URL': url, 'PYTHONPATH': str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)


def run_in_process(connection, queue: str = 'default', *, job_class: type[Job] = Job) -> None:
    """The queue's jobs, run by a worker in this process: it sees what the test changed in modules and backends."""
    SimpleWorker([queue], connection=connection, job_class=job_class).work(burst=True)


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_task_is_accepted_as_callable_by_its_path_or_itself():
    row = ScheduledJob(name='t', callable=functions.add, args=[1, 2], scheduled_time=datetime.now(UTC))
    row.full_clean()
    assert row.callable == f'{PATH}.add'
    ScheduledJob(name='u', callable=f'{PATH}.add', args=[1, 2], scheduled_time=datetime.now(UTC)).full_clean()


def refusal(**fields: object) -> dict[str, list[str]]:
    row = ScheduledJob(**{'name': 't', 'scheduled_time': datetime.now(UTC), **fields})
    with pytest.raises(ValidationError) as caught:
        row.full_clean(validate_unique=False)
    return caught.value.message_dict


@pytest.mark.django_db
def test_the_allow_list_applies_to_the_tasks_function_path():
    with override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': ['tests.tasks.*']}):
        assert 'not allowed' in refusal(callable=f'{PATH}.add', args=[1, 2])['callable'][0]
    with override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': [f'{PATH}.*']}):
        ScheduledJob(name='t', callable=f'{PATH}.add', args=[1, 2], scheduled_time=datetime.now(UTC)).full_clean()
        assert f'is the task {PATH}.add' in refusal(callable=f'{PATH}.alias', args=[1, 2])['callable'][0]


@pytest.mark.django_db
def test_a_task_whose_backend_is_not_configured_or_refuses_it_is_refused_on_callable():
    with override_settings(TASKS={'default': {'BACKEND': 'django_tasks.backends.dummy.DummyBackend'}}):
        assert 'cannot run' in refusal(callable=f'{PATH}.later', args=['x'])['callable'][0]
    with override_settings(TASKS={'default': {'BACKEND': 'django_tasks_rq.RQBackend', 'QUEUES': ['default']}}):
        message = refusal(callable=f'{PATH}.on_high', queue='high')['callable'][0]
        assert "Queue 'high' is not valid for backend" in message


@pytest.mark.django_db
def test_a_task_on_the_rq_backend_must_be_scheduled_on_its_own_queue():
    assert 'runs on the RQ queue high' in refusal(callable=f'{PATH}.on_high')['queue'][0]
    ScheduledJob(name='t', callable=f'{PATH}.on_high', queue='high', scheduled_time=datetime.now(UTC)).full_clean()


@pytest.mark.django_db
def test_arguments_the_task_cannot_take_or_its_backend_cannot_store_are_refused_on_their_field():
    assert 'too many positional arguments' in refusal(callable=f'{PATH}.add', args=[1, 2, 3])['args'][0]
    assert (
        "unexpected keyword argument 'c'" in refusal(callable=f'{PATH}.add', args=[1, 2], kwargs={'c': 3})['kwargs'][0]
    )
    assert "missing a required argument: 'b'" in refusal(callable=f'{PATH}.add', args=[1])['args'][0]
    assert 'kwargs' in refusal(callable=f'{PATH}.add', args=[1], kwargs={'b': datetime.now(UTC)})
    assert 'args' in refusal(callable=f'{PATH}.add', args=[1, b'bytes'])


def test_the_bridge_is_where_the_allow_list_trusts_it_to_be():
    assert import_string(conf.TASK_BRIDGE) is task_calls.enqueue_task


# -- the RQ backend: the loop's own move, real workers -----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_task_every_second_runs_through_the_rq_backend_and_its_result_is_the_task_apis(leader, redis_url):
    row = RepeatableJob.objects.create(
        name='sum', callable=f'{PATH}.add', args=[2, 3], interval=1, interval_unit='seconds',
        scheduled_time=datetime.now(UTC) - timedelta(milliseconds=10),
    )  # fmt: skip
    leader()
    [run] = row.runs.all()
    assert run.status == 'queued'
    assert functions.add.get_result(run.rq_job_id).status == TaskResultStatus.READY
    run_task_worker(redis_url)
    leader()
    run.refresh_from_db()
    assert run.status == 'finished', run.error
    result = functions.add.get_result(run.rq_job_id)
    assert (result.status, result.return_value, result.args, result.backend) == (
        TaskResultStatus.SUCCESSFUL,
        5,
        [2, 3],
        'default',
    )


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_failing_task_fails_its_run_with_its_error_and_its_task_result(leader, redis_url):
    run_id = due_now(f'{PATH}.explode').template_id
    leader()
    run_task_worker(redis_url)
    leader()
    [run] = ScheduledJob.objects.get().runs.all()
    assert run.rq_job_id == run_id
    assert run.status == 'failed' and run.error.startswith('ValueError: boom')
    result = functions.explode.get_result(run.rq_job_id)
    assert result.status == TaskResultStatus.FAILED
    # The backend's own failure callback ran after ours: it is what records the exception class.
    assert [error.exception_class_path for error in result.errors] == ['builtins.ValueError']


@pytest.mark.django_db(transaction=True)
def test_a_task_run_by_hand_is_the_job_its_backend_would_have_enqueued(redis_url):
    job = due_now(f'{PATH}.add', args=[1, 1]).run_now()
    assert job.func_name == f'{PATH}.add' and job.meta['backend_name'] == 'default'
    assert job.meta[keys.CHAINED_CALLBACKS_META_KEY] == task_calls.RQ_BACKEND_CALLBACKS
    assert job._success_callback_name == 'django_rq_scheduled.core.capture.record_success'
    assert functions.add.get_result(job.id).status == TaskResultStatus.READY


# -- other backends: the bridge ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_task_on_the_immediate_backend_is_enqueued_there_once_by_the_bridge(leader, redis_url, connection):
    due_now(f'{PATH}.remember', args=['hello'])
    leader()
    [run] = ScheduledJob.objects.get().runs.all()
    assert Job.fetch(run.rq_job_id, connection=connection).func_name == conf.TASK_BRIDGE
    run_task_worker(redis_url, job_class='django_rq_scheduled.task_job.Job')  # runs plain jobs and tasks alike
    leader()
    run.refresh_from_db()
    assert run.status == 'finished', run.error
    assert connection.lrange(functions.CALLS_KEY, 0, -1) == [b'hello']
    result_id = Job.fetch(run.rq_job_id, connection=connection).return_value()
    assert isinstance(result_id, str) and len(result_id) == 32


@pytest.mark.django_db(transaction=True)
def test_a_task_on_the_dummy_backend_links_its_run_to_its_task_result(leader, redis_url, connection):
    due_now(f'{PATH}.later', args=['x'])
    leader()
    run_in_process(connection)
    leader()
    [run] = ScheduledJob.objects.get().runs.all()
    assert run.status == 'finished', run.error
    result = functions.later.get_result(Job.fetch(run.rq_job_id, connection=connection).return_value())
    assert (result.status, result.args) == (TaskResultStatus.READY, ['x'])


# -- hostile ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_path_that_is_no_longer_a_task_at_fire_time_fails_its_run_with_the_reason(
    leader, redis_url, connection, monkeypatch, caplog
):
    due_now(f'{PATH}.remember', args=['x'], queue='high')
    ScheduledJob.objects.create(
        name='rq', callable=f'{PATH}.add', args=[1, 2], scheduled_time=datetime.now(UTC) - timedelta(seconds=1)
    )
    leader()
    monkeypatch.setattr(functions, 'remember', functions.plain)  # a deploy turned them into plain functions
    monkeypatch.setattr(functions, 'add', functions.plain)
    with caplog.at_level(logging.ERROR, logger=capture.__name__):
        run_in_process(connection, job_class=TaskJob)
        run_in_process(connection, 'high', job_class=MixedJob)
    leader()
    errors = {run.schedule_name: run.error for run in Run.objects.all()}
    assert 'is not a Django Task' in errors[f'{PATH}.remember']
    assert 'does not point to a Task' in errors['rq']
    assert connection.llen(functions.CALLS_KEY) == 0
    assert 'on_failure callback django_tasks_rq.backend.failed_callback' in caplog.text  # logged, outcome kept


@pytest.mark.django_db(transaction=True)
def test_the_bridge_never_enqueues_what_is_not_an_allowed_task(redis_url, connection):
    scheduler = Scheduler(queue_name='default', connection=connection)
    with override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': [f'{PATH}.*']}):
        foreign = [('os.system', ['echo pwned'], {}), (f'{PATH}.plain', [1, 2], {})]
        jobs = [scheduler.enqueue_in(timedelta(0), conf.TASK_BRIDGE, *call) for call in foreign]
        scheduler.acquire_lock()
        scheduler.move_due_jobs()
        run_in_process(connection)
    failures = [Job.fetch(job.id, connection=connection).latest_result().exc_string for job in jobs]
    assert 'os.system is not allowed by ALLOWED_CALLABLES' in failures[0]
    assert 'is not a Django Task' in failures[1]


def test_the_backends_callback_runs_after_the_outcome_is_recorded_and_its_error_is_only_logged(
    fake_connection, caplog, monkeypatch
):
    monkeypatch.setitem(capture.CHAINABLE, 'on_success', 'tests.test_django_tasks.chained_that_fails')
    job = Job.create('tests.tasks.add', connection=fake_connection, id='j')
    job.meta[keys.CHAINED_CALLBACKS_META_KEY] = {'on_success': 'tests.test_django_tasks.chained_that_fails'}
    with caplog.at_level(logging.ERROR, logger=capture.__name__):
        capture.record_success(job, fake_connection, 3)
    assert fake_connection.llen(keys.OUTCOMES_KEY) == 1
    assert chained_calls == [('j', 3)]
    assert 'on_success callback tests.test_django_tasks.chained_that_fails of job j failed' in caplog.text


chained_calls: list[tuple[str, object]] = []


def chained_that_fails(job: Job, connection: object, result: object) -> None:
    chained_calls.append((job.id, result))
    raise RuntimeError('theirs')


BLOCKED = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('django_tasks', 'django_tasks_rq') or name.startswith('django.tasks'):
            raise ImportError(f'{name} is blocked')
        return None

sys.meta_path.insert(0, Blocker())
import django
django.setup()
from datetime import datetime, timezone
from django_rq_scheduled import task_calls
from django_rq_scheduled.models import ScheduledJob
from django_rq_scheduled.servers import servers, template_job

assert task_calls.task_classes() == ()
row = ScheduledJob(name='plain', callable='tests.tasks.add', args=[1, 2], scheduled_time=datetime.now(timezone.utc))
row.full_clean(validate_unique=False)
job = template_job(servers().scheduler_for('default'), row, 0)
assert (job.func_name, job.args) == ('tests.tasks.add', (1, 2)), job.func_name
assert 'django_tasks' not in sys.modules
print('ok')
"""


def test_without_django_tasks_the_app_imports_and_plain_callables_work():
    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'tests.settings', 'PYTHONPATH': str(ROOT)}
    done = subprocess.run([sys.executable, '-c', BLOCKED], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == 'ok', done.stderr


@pytest.mark.django_db
def test_a_task_declared_in_code_is_a_row_of_its_function_path(monkeypatch):
    from django_rq_scheduled import declared

    monkeypatch.setattr(declared, '_decorated', {})
    assert declared.every(minutes=5, args=[1, 2])(functions.add) is functions.add
    assert declared._decorated[f'{PATH}.add'][0]['callable'] == f'{PATH}.add'
    found = declared.declaration('sum', {'callable': functions.add, 'interval': 5, 'args': [1, 2]})
    assert found.fields['callable'] == f'{PATH}.add'
    with pytest.raises(declared.DeclarationError, match='args'):
        declared.declaration('bad', {'callable': functions.add, 'interval': 5, 'args': [1]})


@pytest.mark.django_db
def test_a_change_of_the_tasks_backend_changes_the_rows_definition_digest():
    row = ScheduledJob(name='t', callable=f'{PATH}.later', args=['x'], scheduled_time=datetime.now(UTC))
    plain = ScheduledJob(name='p', callable='tests.tasks.add', args=[1, 2], scheduled_time=datetime.now(UTC))
    before = row.version(), plain.version()
    dummy_is_rq = {**settings.TASKS, 'dummy': {'BACKEND': 'django_tasks_rq.RQBackend'}}
    with override_settings(TASKS=dummy_is_rq):
        assert row.version() != before[0]
        assert plain.version() == before[1]


def test_a_callback_to_chain_that_is_not_the_rq_backends_is_never_called(caplog):
    import fakeredis

    job = Job.create('tests.tasks.add', connection=fakeredis.FakeRedis())
    job.meta[keys.CHAINED_CALLBACKS_META_KEY] = {
        'on_success': 'os.system',
        'on_failure': capture.CHAINABLE['on_success'],
    }
    capture._call_chained(job, 'on_success', None, 'rm -rf /')
    capture._call_chained(job, 'on_failure', None, None, None, None)  # the success callback named for failures
    assert caplog.text.count('not one we chain') == 2
