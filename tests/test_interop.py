"""Both ways with the real rq-scheduler 0.14 on a real Redis, with real RQ workers running the jobs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from rq.job import Job
from rq_scheduler import Scheduler as RQScheduler

from django_rq_scheduled import Scheduler
from tests import tasks
from tests.conftest import run_worker

pytestmark = pytest.mark.integration

UTC = timezone.utc


def trace(connection):
    return [json.loads(item) for item in connection.lrange(tasks.TRACE_KEY, 0, -1)]


def labels(connection):
    return sorted(item['label'] for item in trace(connection))


def test_jobs_scheduled_by_rq_scheduler_are_run_through_our_loop(connection, redis_url):
    theirs = RQScheduler(connection=connection)
    now = datetime.now(UTC).replace(tzinfo=None)  # rq-scheduler wants naive UTC
    theirs.enqueue_at(now + timedelta(seconds=30), tasks.record, 'enqueue_at')
    theirs.enqueue_in(timedelta(seconds=40), tasks.record, 'enqueue_in')
    theirs.schedule(now + timedelta(seconds=50), tasks.record, args=['interval'], interval=60, repeat=2, id='iv')
    cron_job = theirs.cron('* * * * *', tasks.record, args=['cron'], repeat=1, id='cr')
    assert cron_job.meta['cron_string'] == '* * * * *'

    ours = Scheduler(connection=connection, name='ours')
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=65), tick=False):
        first = sorted(j.id for j in ours.enqueue_jobs())
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=125), tick=False):
        second = sorted(j.id for j in ours.enqueue_jobs())

    assert 'iv' in first and 'cr' in first and len(first) == 4
    assert second == ['iv']  # interval template: second and last run (repeat=2), same id as rq-scheduler does
    assert ours.count() == 0
    run_worker(redis_url)
    assert labels(connection) == ['cron', 'enqueue_at', 'enqueue_in', 'interval', 'interval']


def test_our_one_off_jobs_are_run_through_rq_schedulers_loop(connection, redis_url):
    ours = Scheduler(connection=connection)
    now = datetime.now(UTC)
    ours.enqueue_at(now + timedelta(seconds=10), tasks.record, 'ours-at', job_id='ours-at')
    ours.enqueue_in(timedelta(seconds=20), tasks.record, 'ours-in')
    ours.schedule(now + timedelta(seconds=5), tasks.record, args=['ours-schedule'])

    theirs = RQScheduler(connection=connection)
    with time_machine.travel(now + timedelta(seconds=30), tick=False):
        theirs.enqueue_jobs()
    assert theirs.count() == 0
    run_worker(redis_url)
    assert labels(connection) == ['ours-at', 'ours-in', 'ours-schedule']
    assert Job.fetch('ours-at', connection=connection).get_status() == 'finished'


def test_each_occurrence_of_our_periodic_jobs_is_its_own_job(connection, redis_url):
    ours = Scheduler(connection=connection)
    start = datetime.now(UTC) + timedelta(seconds=1)
    ours.schedule(start, tasks.add, args=[2, 3], interval=10, repeat=3, id='sum')
    ids = []
    for step in range(3):
        with time_machine.travel(start + timedelta(seconds=10 * step + 0.5), tick=False):
            ids += [j.id for j in ours.enqueue_jobs()]
    assert len(set(ids)) == 3
    run_worker(redis_url)
    results = [Job.fetch(job_id, connection=connection) for job_id in ids]
    assert [job.get_status() for job in results] == ['finished'] * 3
    assert [job.return_value() for job in results] == [5, 5, 5]


def test_enqueue_writes_the_same_hash_fields_as_rqs_own_enqueue(connection):
    """Our Lua move writes what RQ's Queue.enqueue_job writes; a newer RQ that changes this fails here."""
    from django_rq_scheduled.scheduler import Scheduler as S

    ours = S(connection=connection)
    when = datetime.now(UTC)
    ours.enqueue_at(when, tasks.add, 1, 2, job_id='via-ours', job_ttl=300, job_result_ttl=20)
    ours.enqueue_at(when, tasks.add, 1, 2, job_id='via-rq', job_ttl=300, job_result_ttl=20)
    job = Job.fetch('via-rq', connection=connection)
    connection.zrem('rq:scheduler:scheduled_jobs', 'via-rq')
    ours.get_queue_for_job(job).enqueue_job(job)
    ours.enqueue_jobs()
    volatile = {b'enqueued_at', b'created_at', b'data', b'description', b'drqs_mark'}  # the mark: per id
    ours_hash = {k: v for k, v in connection.hgetall('rq:job:via-ours').items() if k not in volatile}
    rq_hash = {k: v for k, v in connection.hgetall('rq:job:via-rq').items() if k not in volatile}
    assert ours_hash == rq_hash
    assert connection.ttl('rq:job:via-ours') == pytest.approx(connection.ttl('rq:job:via-rq'), abs=2)
