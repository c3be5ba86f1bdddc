"""Retries without workers (fakeredis, frozen clock): the policy as RQ's retry fields, on every occurrence whole;
the arguments of the ``Scheduler`` API; the delays in the order RQ reads them."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from rq.job import Job

from django_rq_scheduled.core import keys, retries
from tests import tasks
from tests.frozen import T0

UTC = timezone.utc


@pytest.mark.parametrize(
    ('count', 'delays', 'expected'),
    [
        (3, [10, 60, 300], [10, 60, 300]),
        (5, [10, 60], [10, 60, 60, 60, 60]),  # the last one repeats
        (2, [10, 60, 300], [10, 60]),
        (2, [], [0, 0]),  # at once
    ],
)
def test_rq_reads_the_delays_in_the_schedules_order(fake_connection, count, delays, expected):
    job = Job.create(tasks.add, connection=fake_connection)
    retries.apply(job, count, delays)
    used = []
    while job.should_retry:
        used.append(job.get_retry_interval())
        job.retries_left -= 1
    assert used == expected


def test_every_occurrence_starts_with_all_its_retries(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, args=[1, 2], interval=60, id='tick', retries=2, retry_delays=[5])
    template = Job.fetch('tick', connection=fake_connection)
    assert (template.retries_left, template.retry_intervals) == (2, [5, 5])  # the template carries RQ's fields
    fake_connection.hset(keys.job_key('tick'), 'retries_left', 0)  # as if a run had used them up in its hash
    for minute in range(2):
        clock.move_to(T0 + timedelta(minutes=minute))
        [job] = scheduler.enqueue_jobs()
        job.refresh()
        assert (job.retries_left, job.retry_intervals) == (2, [5, 5])
        assert job.meta[keys.META_KEY]['retries'] == 2


def test_a_one_off_and_a_cron_template_carry_their_retries(scheduler, fake_connection, clock):
    once = scheduler.schedule(T0, tasks.add, id='once', retries=1)
    cron = scheduler.cron('* * * * *', tasks.add, id='cron', retries=3, retry_delays=[1, 2])
    assert (Job.fetch(once.id, connection=fake_connection).retries_left, cron.retry_intervals) == (1, [1, 2, 2])
    clock.move_to(T0)
    assert {job.id for job in scheduler.enqueue_jobs()} == {'once', f'cron_at_{int(T0.timestamp() * 1000)}'}
    assert Job.fetch('once', connection=fake_connection).retries_left == 1


def test_no_retries_writes_no_retry_fields(scheduler, fake_connection, clock):
    scheduler.schedule(T0, tasks.add, interval=60, id='plain')
    assert fake_connection.hget(keys.job_key('plain'), 'retries_left') is None
    clock.move_to(T0)
    [job] = scheduler.enqueue_jobs()
    assert fake_connection.hget(keys.job_key(job.id), 'retries_left') is None


@pytest.mark.parametrize(
    ('options', 'argument'),
    [
        ({'retries': -1}, 'retries'),
        ({'retries': 101}, 'retries'),
        ({'retries': True}, 'retries'),
        ({'retries': '3'}, 'retries'),
        ({'retries': 1, 'retry_delays': [-1]}, 'retry_delays'),
        ({'retries': 1, 'retry_delays': 'abc'}, 'retry_delays'),
        ({'retries': 1, 'retry_delays': [1.5]}, 'retry_delays'),
        ({'retries': 1, 'retry_delays': [86_401]}, 'retry_delays'),
        ({'retries': 1, 'retry_delays': [1] * 101}, 'retry_delays'),
    ],
)
@pytest.mark.parametrize('kind', ['once', 'interval', 'cron'])
def test_bad_retry_arguments_name_themselves_and_write_nothing(scheduler, fake_connection, options, argument, kind):
    with pytest.raises(ValueError, match=f'^{argument}: '):
        if kind == 'cron':
            scheduler.cron('* * * * *', tasks.add, id='bad', **options)
        else:
            scheduler.schedule(T0, tasks.add, id='bad', interval=60 if kind == 'interval' else None, **options)
    assert fake_connection.keys('*') == []


def test_a_tuple_of_delays_is_a_list(scheduler):
    assert scheduler.schedule(T0, tasks.add, interval=60, retries=2, retry_delays=(1, 2)).retry_intervals == [1, 2]
