"""Repeatable jobs whose first run is at or before the save: it runs at once, exactly once, then every interval on
the slots ``start + k * interval``; the misfire grace keeps judging the slots the scheduler genuinely missed.

Rows are synced to the suite's Redis and moved in-process with a frozen clock, then once through the admin form
and once by a real ``manage.py rqscheduler`` process.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone as django_timezone
from rq.job import Job
from rq.serializers import DefaultSerializer

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys, moves, scores
from django_rq_scheduled.core.jobs import template_meta
from django_rq_scheduled.models import RepeatableJob
from tests.admin_forms import POLICY_DEFAULTS
from tests.processes import OutputReader, django_shell, kill, queue_ids, scheduler_process, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def every_hour(start: datetime, **extra) -> RepeatableJob:
    return RepeatableJob.objects.create(
        name='hourly', callable='tests.tasks.add', scheduled_time=start, interval=1, interval_unit='hours', **extra
    )


def due(connection, row) -> datetime | None:
    score = connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id)
    return None if score is None else scores.utc_datetime(score)


def move(connection) -> list[str]:
    """The ids of the runs the scheduler enqueues now (the host's clock: frozen here)."""
    return [job.id for job in Scheduler(connection=connection).enqueue_jobs()]


def run_of(row, fire_time: datetime) -> str:
    return keys.occurrence_id(row.template_id, int(fire_time.timestamp() * 1000))


# -- the slot arithmetic ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('start', 'begun', 'expected'),
    [
        pytest.param(100.0, False, 100.0, id='ahead'),
        pytest.param(100.0, True, 100.0, id='ahead-begun'),
        pytest.param(40.0, False, 40.0, id='exactly-now'),
        pytest.param(10.0, False, 40.0, id='past-runs-its-latest-slot-at-once'),
        pytest.param(10.0, True, 70.0, id='past-begun-resumes-after-now'),
        pytest.param(40.0, True, 40.0, id='exactly-now-begun'),
        pytest.param(-1e9 + 20, False, 40.0, id='far-past'),
    ],
)
def test_the_first_due_slot(start, begun, expected):
    assert scores.first_due_slot(start, 30.0, 40.0, begun=begun) == pytest.approx(expected)


# -- planning: a first run's lateness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('late_from', 'outcome'),
    [
        pytest.param(None, moves.SKIPPED_MISFIRE, id='a-slot-missed-by-downtime'),
        pytest.param(5_000 - 30, moves.ENQUEUED, id='written-at-the-grace-ago'),
        pytest.param(5_000 - 31, moves.SKIPPED_MISFIRE, id='written-longer-ago-than-the-grace'),
        pytest.param(500, moves.SKIPPED_MISFIRE, id='written-before-its-slot'),
    ],
)
def test_a_first_run_is_late_only_from_when_its_template_was_written(late_from, outcome):
    planner = moves.Planner(
        now=5_000,
        enqueued_at='',
        serializer=DefaultSerializer,
        queue_info=lambda origin, queue_class: moves.QueueInfo(f'rq:queue:{origin}', None),
        default_timezone='UTC',
    )
    meta = template_meta('interval', interval=3_600, misfire_grace=30, late_from=late_from)
    entry = planner.plan(moves.Parsed('t', 1_000, {b'origin': b'default'}, meta))  # its slot: 4,000 s ago
    assert entry.outcome == outcome


# -- sync and the move ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('late_by', [timedelta(0), timedelta(seconds=1), timedelta(minutes=59)], ids=str)
def test_a_first_run_at_or_before_the_save_runs_at_once_exactly_once_then_every_interval(connection, clock, late_by):
    start = T0 - late_by
    row = every_hour(start, misfire_grace=30)  # a grace shorter than late_by: it counts from the save
    assert due(connection, row) == start
    assert move(connection) == [run_of(row, start)]
    assert move(connection) == []
    assert due(connection, row) == start + HOUR
    clock.move_to(start + HOUR)
    assert move(connection) == [run_of(row, start + HOUR)]


def test_a_first_run_far_in_the_past_runs_once_for_its_latest_slot_then_follows_the_slots(connection, clock):
    start = T0 - timedelta(days=400, minutes=17)
    latest = T0 - timedelta(minutes=17)
    row = every_hour(start, misfire_grace=60)
    assert due(connection, row) == latest
    assert move(connection) == [run_of(row, latest)]  # once, not once per slot since, and not skipped
    assert move(connection) == []
    assert due(connection, row) == latest + HOUR  # 43 minutes on: the slots stay start + k hours
    run = Job.fetch(run_of(row, latest), connection=connection)
    assert run.meta[keys.META_KEY]['fire_time'] == latest.timestamp()


def test_a_first_run_due_at_the_save_is_skipped_if_the_scheduler_stays_down_past_its_grace(connection, clock):
    row = every_hour(T0, misfire_grace=30)
    clock.move_to(T0 + timedelta(seconds=31))
    assert move(connection) == []
    assert due(connection, row) == T0 + HOUR


def test_a_first_run_ahead_of_the_save_and_missed_keeps_the_misfire_rules(connection, clock):
    start = T0 + timedelta(minutes=5)
    row = every_hour(start, misfire_grace=30)
    clock.move_to(start + timedelta(seconds=31))  # the scheduler was down when the first run was due
    assert move(connection) == []
    assert due(connection, row) == start + HOUR
    row.description = 'edited after the skipped first run'
    row.save()  # the schedule has begun: the skipped run does not come back
    assert due(connection, row) == start + HOUR
    assert move(connection) == []


def test_an_edit_after_the_first_run_does_not_run_it_again(connection, clock):
    row = every_hour(T0)
    assert move(connection) == [run_of(row, T0)]
    clock.move_to(T0 + timedelta(seconds=10))
    row.description = 'edited after the first run'
    row.save()
    assert due(connection, row) == T0 + HOUR
    assert move(connection) == []


def test_an_edit_before_the_first_run_moved_keeps_it_due(connection, clock):
    row = every_hour(T0, misfire_grace=30)
    clock.move_to(T0 + timedelta(seconds=20))
    row.description = 'edited before the scheduler moved the first run'
    row.save()
    clock.move_to(T0 + timedelta(seconds=45))  # later than the grace after the first save, not after this one
    assert due(connection, row) == T0
    assert move(connection) == [run_of(row, T0)]


# -- the admin form ---------------------------------------------------------------------------------------------


def test_the_admin_form_starts_a_repeatable_job_now_and_it_runs_at_once(client, connection):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    url = reverse('admin:django_rq_scheduled_repeatablejob_add')
    before = django_timezone.now().replace(microsecond=0)
    form = client.get(url).context['adminform'].form
    initial = form['scheduled_time'].value()
    assert before <= initial <= django_timezone.now()
    data = {
        'name': 'clumsy', 'callable': 'tests.tasks.add', 'args': '[1, 2]', 'kwargs': '{}', 'queue': 'default',
        'enabled': 'on', 'interval': '15', 'interval_unit': 'minutes', 'overlap': 'allow', 'misfire_grace': '5',
        **POLICY_DEFAULTS,
        'scheduled_time_0': f'{initial:%Y-%m-%d}', 'scheduled_time_1': f'{initial:%H:%M:%S}',
    }  # fmt: skip
    assert client.post(url, data).status_code == 302  # saved as the form came, a moment later
    row = RepeatableJob.objects.get()
    assert row.scheduled_time == initial
    assert move(connection) == [run_of(row, initial)]
    assert due(connection, row) == initial + timedelta(minutes=15)


def test_the_admin_form_default_is_in_the_current_time_zone(client, connection, settings):
    settings.TIME_ZONE = 'Europe/Paris'
    with time_machine.travel(datetime(2031, 7, 1, 6, 0, 5, 700_000, tzinfo=UTC), tick=False):
        client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
        page = client.get(reverse('admin:django_rq_scheduled_repeatablejob_add')).content.decode()
    assert 'name="scheduled_time_0" value="2031-07-01"' in page
    assert 'name="scheduled_time_1" value="08:00:05"' in page  # Paris in summer, to the second


# -- a real scheduler process ---------------------------------------------------------------------------------------

CREATE_ROW = """
import json
from django.utils import timezone
from django_rq_scheduled.models import RepeatableJob
row = RepeatableJob.objects.create(
    name='now', callable='tests.tasks.add', args=[1, 2], scheduled_time=timezone.now(), interval=2,
    interval_unit='seconds', misfire_grace=1,
)
print(json.dumps([row.template_id, row.scheduled_time.timestamp()]))
"""


def fire_times(connection) -> list[float]:
    """The fire times of the runs waiting in the default queue, in order."""
    jobs = [Job.fetch(job_id, connection=connection) for job_id in queue_ids(connection)]
    return [job.meta[keys.META_KEY]['fire_time'] for job in jobs]


@pytest.mark.slow
def test_a_running_scheduler_runs_a_first_run_saved_as_now_at_once(connection, redis_url):
    process = scheduler_process(redis_url, '--interval', '0.2', name='first-runs')
    output = OutputReader(process)
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=30)
        template_id, start = json.loads(django_shell(redis_url, CREATE_ROW))
        wait_for(lambda: fire_times(connection), timeout=1.5)  # at once, not one interval later
        wait_for(lambda: len(fire_times(connection)) >= 2, timeout=5)
        assert fire_times(connection)[:2] == [pytest.approx(start, abs=0.001), pytest.approx(start + 2, abs=0.001)]
        assert all(job_id.startswith(f'{template_id}_at_') for job_id in queue_ids(connection))
        assert stop(process) == 0
    finally:
        kill(process)
    assert 'Traceback' not in output.text, output.text
