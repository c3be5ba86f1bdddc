"""The leader's feedback cadence in the background (as ``manage.py rqscheduler`` runs it): a backlog of run records
is read to its end by one round, not one ``DRAIN_SECONDS`` per tick, and a long reconciliation holds it up not."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import time_machine

from django_rq_scheduled import Scheduler, feedback
from django_rq_scheduled.core import keys
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import ScheduledJob
from django_rq_scheduled.reconciliation import Reconciler
from django_rq_scheduled.runs import Run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
ROWS = 40


def leader():
    scheduler = Scheduler(queue_name='default', name='cadence')
    assert scheduler.acquire_lock()
    return scheduler


def move_a_burst(connection, scheduler):
    """ROWS one-offs due together, moved by the leader: their records wait in Redis."""
    due = datetime.now(UTC) + timedelta(seconds=1)
    ScheduledJob.objects.bulk_create(
        [ScheduledJob(name=f'b{i}', callable='tests.tasks.add', scheduled_time=due) for i in range(ROWS)]
    )
    with time_machine.travel(due + timedelta(seconds=1), tick=True):
        assert scheduler.acquire_lock()
        assert len(scheduler.move_due_jobs().enqueued) == ROWS
    assert connection.llen(keys.RUNS_KEY) == ROWS


@pytest.fixture
def small_batches(monkeypatch):
    """Each drain reads one batch of 5 and stops, as if each batch took longer than DRAIN_SECONDS."""
    monkeypatch.setattr(feedback, 'FEEDBACK_BATCH', 5)
    monkeypatch.setattr(feedback, 'DRAIN_SECONDS', 0.0)


def test_one_background_round_reads_the_whole_backlog(connection, small_batches):
    scheduler = leader()
    move_a_burst(connection, scheduler)
    hook = DatabaseSync(reconcile_interval=3600)
    hook(scheduler)  # one tick: no other tick comes to read the rest
    hook.wait(60)
    assert connection.llen(keys.RUNS_KEY) == 0
    assert ScheduledJob.objects.filter(has_run=True).count() == Run.objects.count() == ROWS


def test_the_foreground_round_still_reads_one_drain_per_tick(connection, small_batches):
    scheduler = leader()
    move_a_burst(connection, scheduler)
    DatabaseSync(reconcile_interval=3600, background=False)(scheduler)
    assert connection.llen(keys.RUNS_KEY) == ROWS - 5  # a tick's time is bounded in the foreground


def test_a_reconciliation_at_work_holds_up_no_feedback(connection, monkeypatch):
    scheduler = leader()
    entered, release = threading.Event(), threading.Event()
    reconcile = Reconciler.run

    def slow_reconciliation(self, **kwargs):
        entered.set()
        release.wait(30)  # every row of a large bulk_create changed, say
        return reconcile(self, **kwargs)

    monkeypatch.setattr(Reconciler, 'run', slow_reconciliation)
    hook = DatabaseSync(reconcile_interval=3600)
    hook(scheduler)  # the first tick syncs the code's schedules; the reconciliation starts at the next
    hook._worker.join(30)
    hook(scheduler)
    assert entered.wait(10)
    move_a_burst(connection, scheduler)
    hook._worker.join(30)
    hook(scheduler)  # a tick while the reconciliation works: feedback, and no second reconciliation
    hook._worker.join(30)
    assert hook._reconciler.is_alive()
    assert connection.llen(keys.RUNS_KEY) == 0 and Run.objects.count() == ROWS
    release.set()
    hook.wait(30)
    assert not hook._reconciler.is_alive()
