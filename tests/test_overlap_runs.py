"""Overlap policies end to end: schedule rows, the leader (in-process, or a real ``manage.py rqscheduler``) and real
RQ workers running slow jobs while the next slots come. Counts and states are asserted, never durations."""

from __future__ import annotations

import itertools
import json
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker import Worker

from django_rq_scheduled.core import keys, overlap
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import RepeatableJob, Run
from tests import tasks
from tests.processes import OutputReader, django_shell, kill, scheduler_process, stop, wait_for
from tests.test_runs import kill_with_its_children, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
FIRST_RUN_IN = timedelta(milliseconds=100)
OPEN = ('queued', 'started')


def every_second(name: str, callable: str, args: list[object], **options: object) -> RepeatableJob:
    row = RepeatableJob.objects.create(
        name=name, callable=callable, args=args, interval=1, interval_unit='seconds',
        scheduled_time=datetime.now(UTC) + FIRST_RUN_IN, **options,
    )  # fmt: skip
    time.sleep(FIRST_RUN_IN.total_seconds() + 0.05)
    return row


def worker_ready(connection, url: str):
    worker = start_worker(url)
    wait_for(lambda: Worker.all(connection=connection), timeout=30)
    return worker


def tick_for(leader, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert leader.scheduler.acquire_lock()  # renews the lease, as the loop does
        leader()
        time.sleep(0.05)


def tick(leader) -> None:
    assert leader.scheduler.acquire_lock()
    leader()


def traced_jobs(connection) -> list[str]:
    return [json.loads(line)['args'][0] for line in connection.lrange(tasks.TRACE_KEY, 0, -1)]


def runs_of(row: RepeatableJob) -> list[Run]:
    return list(row.runs.order_by('fire_time'))


def test_buffer_one_runs_one_buffered_occurrence_per_busy_period(leader, redis_url, connection):
    worker = worker_ready(connection, redis_url)
    try:
        row = every_second('buffered', 'tests.tasks.slow_traced', [2.5], overlap='buffer_one')
        tick_for(leader, 7)
        buffered = fetch_template(connection, row.template_id).meta[keys.META_KEY].get(overlap.BUFFERED_META)
        # No more ticks: what is running ends; a buffered slot stays buffered. Then its outcome is read in.
        wait_for(lambda: not Worker.all(connection=connection)[0].get_current_job_id(), timeout=30)
        leader.hook(leader.scheduler)
    finally:
        kill_with_its_children(worker)
    runs = runs_of(row)
    decided = [run.fire_time.timestamp() for run in runs] + ([buffered] if buffered else [])
    first, last = min(decided), max(decided)
    slots = [first + i for i in range(round(last - first) + 1)]
    assert sorted(decided) == pytest.approx(slots, abs=0.002)  # every slot run, skipped or waiting: none lost
    executed = [run for run in runs if run.status != 'skipped']
    skipped = [run for run in runs if run.status == 'skipped']
    assert {run.reason for run in skipped} == {overlap.WAITING_REASON}
    assert len(executed) >= 3 and len(skipped) >= 2  # a run takes 2.5 s: slots come while it runs
    assert all(run.status == 'finished' for run in executed[:-1])
    traced = traced_jobs(connection)
    assert len(traced) == len(set(traced)) == len(executed)  # none twice
    assert set(traced) == {run.rq_job_id for run in executed}
    for previous, run in itertools.pairwise(executed):
        # the next run is the one slot that waited: enqueued once the previous one ended, not beside it
        assert run.fire_time < previous.ended_at <= run.enqueued_at
    waits = [(run.fire_time.timestamp(), run.enqueued_at.timestamp()) for run in executed[1:]]
    waits += [(buffered, math.inf)] if buffered else []
    for slot in skipped:  # skipped only because another slot was waiting then
        assert any(fire < slot.fire_time.timestamp() < enqueued for fire, enqueued in waits), (slot, waits, runs)
    assert not connection.hget(keys.BUFFERED_KEY, row.template_id) or buffered


def test_a_worker_killed_mid_run_releases_the_buffered_run(leader, redis_url, connection):
    worker = worker_ready(connection, redis_url)
    try:
        row = every_second('killed', 'tests.tasks.slow', [60], overlap='buffer_one')
        wait_for(lambda: tick(leader) or row.runs.get().status == 'started', timeout=30)
        first = row.runs.get()
        wait_for(lambda: tick(leader) or connection.hexists(keys.BUFFERED_KEY, row.template_id), timeout=10)
        kill_with_its_children(worker)
    finally:
        kill_with_its_children(worker)
    buffered = fetch_template(connection, row.template_id).meta[keys.META_KEY][overlap.BUFFERED_META]
    registry = StartedJobRegistry('default', connection=connection)
    connection.zadd(registry.key, {member: 1 for member in connection.zrange(registry.key, 0, -1)})  # lapsed
    caring = DatabaseSync(reconcile_interval=0, background=False)  # RQ's cleanup of abandoned jobs runs in it
    caring(leader.scheduler)
    caring(leader.scheduler)
    leader()
    first.refresh_from_db()
    assert (first.status, first.reason) == ('failed', 'worker died')
    released = row.runs.get(fire_time=datetime.fromtimestamp(buffered, UTC))
    assert released.status == 'queued'
    assert released.rq_job_id == keys.occurrence_id(row.template_id, round(buffered * 1000))


def test_cancel_other_cancels_a_queued_run_and_records_it(leader, redis_url, connection):
    row = every_second('replacing', 'tests.tasks.add', [1, 2], overlap='cancel_other')
    leader()
    time.sleep(1.1)  # the next slot comes while the first run still waits (no worker)
    leader()
    first, second = runs_of(row)
    assert (first.status, first.reason) == ('canceled', overlap.REPLACED_REASON)
    assert first.ended_at is not None and first.fire_time is not None
    assert second.status == 'queued'
    assert [m.decode() for m in connection.lrange('rq:queue:default', 0, -1)] == [second.rq_job_id]
    assert Job.fetch(first.rq_job_id, connection=connection).get_status() == 'canceled'
    row.refresh_from_db()
    assert row.run_count == 2 and row.next_run is not None


def test_cancel_other_stops_a_running_run_and_the_new_one_runs(leader, redis_url, connection):
    worker = worker_ready(connection, redis_url)
    try:
        row = every_second('stopping', 'tests.tasks.slow_first', [60], overlap='cancel_other')
        wait_for(lambda: tick(leader) or row.runs.get().status == 'started', timeout=30)
        first = row.runs.get()
        wait_for(lambda: tick(leader) or Run.objects.get(pk=first.pk).status == 'stopped', timeout=30)
        wait_for(lambda: tick(leader) or row.runs.filter(status='finished').exists(), timeout=30)
    finally:
        kill_with_its_children(worker)
    first.refresh_from_db()
    assert first.status == 'stopped' and first.ended_at is not None
    assert Job.fetch(first.rq_job_id, connection=connection).get_status() == 'stopped'
    [after] = [run for run in runs_of(row) if run.fire_time > first.fire_time][:1]
    assert after.status in ('finished', 'canceled')  # the one that replaced it ran (or was replaced in its turn)
    assert row.runs.filter(status='finished').exists()


CREATE_ROW = """
import itertools
import json
import math
from datetime import timedelta
from django.utils import timezone
from django_rq_scheduled.models import RepeatableJob
row = RepeatableJob.objects.create(
    name='buffered', callable='tests.tasks.slow', args=[4], scheduled_time=timezone.now() + timedelta(seconds=0.5),
    interval=3, interval_unit='seconds', overlap='buffer_one',
)
print(json.dumps([row.template_id, row.scheduled_time.timestamp()]))
"""


@pytest.mark.slow
def test_a_running_scheduler_enqueues_the_buffered_run_when_the_run_ends_not_at_the_next_slot(connection, redis_url):
    worker = worker_ready(connection, redis_url)
    process = scheduler_process(redis_url, name='overlap')
    output = OutputReader(process)
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=30)
        template, start = json.loads(django_shell(redis_url, CREATE_ROW))
        first, waiting = (keys.occurrence_id(template, round((start + k) * 1000)) for k in (0, 3))
        wait_for(lambda: connection.hget(keys.job_key(waiting), 'enqueued_at'), timeout=30)
        assert stop(process) == 0
    finally:
        kill(process)
        kill_with_its_children(worker)
    ended = Job.fetch(first, connection=connection).ended_at
    enqueued = Job.fetch(waiting, connection=connection).enqueued_at
    assert ended is not None and enqueued is not None
    assert ended.timestamp() - 0.01 <= enqueued.timestamp() < start + 6  # after the run ended, before the next slot
    assert 'Traceback' not in output.text, output.text
