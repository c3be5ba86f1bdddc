"""Compact templates of database rows (``core.compact``): a small listpack hash, the run's whole RQ job built at fire
time, templates of the previous layout still moving (and rewritten by reconciliation), and compact templates forged
by someone else dead-lettered, never crashing the loop nor running a callable that is not allowed."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import compact, keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.core.jobs import TEMPLATE_FORMAT
from django_rq_scheduled.core.mover import MoveReport
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from django_rq_scheduled.servers import servers, template_job
from django_rq_scheduled.sync import reconcile
from tests.conftest import run_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
LISTPACK_VALUE_LIMIT = 64  # Redis's hash-max-listpack-value default


def soon(seconds: float = 0.1) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def wait_until_due(seconds: float = 0.15) -> None:
    time.sleep(seconds + 0.05)


def every_minute(**options: object) -> RepeatableJob:
    values: dict[str, object] = {'name': 'every', 'callable': 'tests.tasks.add', 'args': [1, 2], 'interval': 1,
                                 'interval_unit': 'minutes', 'scheduled_time': soon()}  # fmt: skip
    return RepeatableJob.objects.create(**{**values, **options})


def test_a_rows_template_is_a_small_listpack_without_what_runs_get_at_fire_time(connection):
    rows = [
        every_minute(),
        CronJob.objects.create(name='cron', callable='tests.tasks.add', args=[1], cron_string='*/5 * * * *'),
        ScheduledJob.objects.create(name='once', callable='tests.tasks.add', scheduled_time=soon(3600)),
    ]
    for row in rows:
        key = keys.job_key(row.template_id)
        raw = connection.hgetall(key)
        assert compact.MARKER in raw, row.name
        assert not {b'meta', b'created_at', b'status', b'success_callback_name'} & set(raw), row.name
        assert all(len(value) <= LISTPACK_VALUE_LIMIT for value in raw.values()), row.name
        assert connection.object('encoding', key) == b'listpack', row.name
        assert connection.memory_usage(key, samples=0) < 320, row.name
    template = fetch_template(connection, rows[1].template_id)
    assert template.meta['cron_string'] == '*/5 * * * *'
    assert template.meta[keys.META_KEY]['owner'] == f'django_rq_scheduled.cronjob:{rows[1].pk}'
    assert template.to_dict()['success_callback_name'] == 'django_rq_scheduled.core.capture.record_success'


def test_an_occurrence_gets_the_whole_rq_job_and_its_run_is_recorded(leader, connection, redis_url):
    row = every_minute(timeout=77, description='mine')
    wait_until_due()
    leader()
    [run] = row.runs.all()
    job = Job.fetch(run.rq_job_id, connection=connection)
    assert job.func_name == 'tests.tasks.add' and job.args == (1, 2)
    assert (job.timeout, job.description, job.origin, job.get_status()) == (77, 'mine', 'default', 'queued')
    assert job.meta[keys.META_KEY]['template'] == row.template_id and job.created_at is not None
    assert job.to_dict()['success_callback_name'] == 'django_rq_scheduled.core.capture.record_success'
    assert not any(compact.is_compact_field(name) for name in connection.hkeys(job.key))
    ours = fetch_template(connection, row.template_id).meta[keys.META_KEY]
    assert (ours['runs'], ours['last_run_id']) == (1, run.rq_job_id)
    run_worker(redis_url)
    leader()
    run.refresh_from_db()
    assert run.status == 'finished'


def test_a_one_off_rows_template_becomes_its_whole_rq_job_when_moved(leader, connection, redis_url):
    row = ScheduledJob.objects.create(name='once', callable='tests.tasks.add', args=[2, 3], scheduled_time=soon())
    wait_until_due()
    leader()
    raw = connection.hgetall(keys.job_key(row.template_id))
    assert not any(compact.is_compact_field(name) for name in raw)
    job = Job.fetch(row.template_id, connection=connection)
    assert job.get_status() == 'queued' and job.created_at is not None
    assert job.meta[keys.META_KEY]['fire_time'] == row.scheduled_time.timestamp()
    assert job.to_dict()['failure_callback_name'] == 'django_rq_scheduled.core.capture.record_failure'
    run_worker(redis_url)
    leader()
    row.refresh_from_db()
    [run] = row.runs.all()
    assert run.status == 'finished' and job.latest_result() is not None


def previous_layout(connection, row, runs: int = 0) -> None:
    """What the previous release wrote for ``row``: a whole RQ job hash with pickled meta, and a version of the
    previous template format."""
    row = type(row).objects.get(pk=row.pk)  # as loaded by sync: plain values
    scheduler = servers().scheduler_for(row.queue)
    job = template_job(scheduler, row, runs)
    key = keys.job_key(row.template_id)
    connection.delete(key)
    connection.hset(key, mapping=job.to_dict())
    connection.hset(keys.VERSIONS_KEY, row.template_id, 'format-3-version')


def test_a_template_of_the_previous_layout_still_moves_and_keeps_its_layout(leader, connection):
    row = every_minute()
    previous_layout(connection, row)
    wait_until_due()
    [occurrence] = leader.scheduler.move_due_jobs().enqueued  # a move before any reconciliation rewrote it
    assert Job.fetch(occurrence, connection=connection).get_status() == 'queued'
    template = Job.fetch(row.template_id, connection=connection)  # the old layout: RQ reads its meta
    assert template.meta[keys.META_KEY]['runs'] == 1
    assert compact.MARKER not in connection.hgetall(template.key)
    leader.hook(leader.scheduler)  # its run is recorded, and reconciliation rewrites the template compact
    assert [run.rq_job_id for run in row.runs.all()] == [occurrence]
    assert fetch_template(connection, row.template_id).meta[keys.META_KEY]['runs'] == 1
    assert compact.MARKER in connection.hgetall(template.key)


def test_reconciliation_rewrites_a_template_of_the_previous_layout_compact_keeping_its_runs(leader, connection):
    row = every_minute()
    previous_layout(connection, row, runs=4)
    assert TEMPLATE_FORMAT >= 4
    assert reconcile().written == [row.template_id]
    raw = connection.hgetall(keys.job_key(row.template_id))
    assert compact.MARKER in raw and b'meta' not in raw
    assert fetch_template(connection, row.template_id).meta[keys.META_KEY]['runs'] == 4


def test_the_api_runs_a_rows_compact_template_now_as_an_extra_run(connection):
    row = every_minute(scheduled_time=soon(3600))
    scheduler = Scheduler(connection=connection)
    handle = Job.fetch(row.template_id, connection=connection)
    run = scheduler.enqueue_job(handle)
    assert run.id.startswith(f'{row.template_id}_now_')
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None  # its pending run stays


# -- hostile: compact templates forged or broken by someone else ----------------------------------------------------

FORGERIES = {  # a change to a compact template's fields, and what the dead letter's reason names
    'runs of the wrong type': ({'~n': '"many"'}, "compact template: runs: expected a whole number, got 'many'"),
    'a kind no rule knows': ({'~k': 'weekly'}, 'compact template: kind: expected one of'),
    'an interval template without its interval': ({'~i': None}, 'compact template: an interval template needs'),
    'a value that is not JSON': ({'~lft': '{oops'}, "compact template: field '~lft' is not JSON"),
    'an unknown field': ({'~zz': '1'}, "compact template: unknown field '~zz'"),
    'retries out of bounds': ({'~rt': '-3'}, 'cannot plan: retries'),
}


@pytest.mark.parametrize(('change', 'reason'), FORGERIES.values(), ids=FORGERIES.keys())
def test_a_broken_compact_template_is_dead_lettered_and_the_rest_still_moves(leader, connection, change, reason):
    broken, fine = every_minute(name='broken'), every_minute(name='fine')
    key = keys.job_key(broken.template_id)
    for name, value in change.items():
        if value is None:
            connection.hdel(key, name)
        else:
            connection.hset(key, name, value)
    wait_until_due()
    leader()
    dead = connection.hgetall(keys.DEAD_LETTERS_KEY)
    assert set(dead) == {broken.template_id.encode()}
    assert reason in json.loads(dead[broken.template_id.encode()])['reason']
    assert fine.runs.count() == 1 and broken.runs.count() == 0


def test_a_forged_compact_template_calling_what_is_not_allowed_never_runs(leader, connection):
    row = every_minute()
    forged = Job.create('os.system', args=('true',), connection=connection)
    connection.hset(keys.job_key(row.template_id), 'data', forged.to_dict()['data'])
    leader.scheduler.callable_allowed = lambda path: path.startswith('tests.')
    wait_until_due()
    leader()
    assert connection.llen('rq:queue:default') == 0
    reason = json.loads(connection.hget(keys.DEAD_LETTERS_KEY, row.template_id))['reason']
    assert 'os.system' in reason


def test_an_edit_landing_between_a_moves_read_and_its_write_keeps_the_edit(leader, connection):
    row = every_minute()
    wait_until_due()
    mover = leader.scheduler.mover
    now = leader.scheduler.clock.now()
    batch = mover.plan_batch(*mover.read_due(now), now)  # the loop has read and planned the due template
    row.args = [40, 2]
    row.save()  # synced at once: its due slot is kept (editing never skips a due run), so the score is the same
    mover.apply_batch(batch, MoveReport(), fenced=True)
    template = fetch_template(connection, row.template_id)
    assert template.args == (40, 2)  # the edit's call, not the copy the move had read
    ours = template.meta[keys.META_KEY]
    assert ours['version'] == row.version() == connection.hget(keys.VERSIONS_KEY, row.template_id).decode()
    assert ours['runs'] == 1 and len(connection.lrange('rq:queue:default', 0, -1)) == 1
