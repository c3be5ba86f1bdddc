"""The leader's feedback cadence in the background (as ``manage.py rqscheduler`` runs it): a backlog of run records
is read to its end by one round, not one ``DRAIN_SECONDS`` per tick, and a long reconciliation holds it up not."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import time_machine

from django_rq_scheduled import Scheduler, feedback, sync
from django_rq_scheduled.core import keys
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import ScheduledJob
from django_rq_scheduled.reconciliation import Reconciler
from django_rq_scheduled.runs import Run
from django_rq_scheduled.yielding import yielding_to

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


def test_one_background_round_reads_the_whole_backlog(connection, small_batches, monkeypatch):
    # The first tick's full reconciliation, in its own thread, would write the same tables: on the tests' in-memory
    # SQLite (shared cache) a write beside it fails at once ("database table is locked") instead of waiting, and the
    # round stops until a next tick this test never gives.
    monkeypatch.setattr(Reconciler, 'run', lambda self, full: None)
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


def test_syncs_in_a_yielding_thread_wait_between_their_batches(connection):
    waits = []
    rows = [
        ScheduledJob(name=f'y{i}', callable='tests.tasks.add', scheduled_time=datetime(2030, 1, 1, tzinfo=UTC))
        for i in range(1200)
    ]
    ScheduledJob.objects.bulk_create(rows)  # its own sync, in no yielding block: it waits for nothing
    with yielding_to(lambda: waits.append(1)):
        report = sync.reconcile()
    assert report.unchanged == 1200
    assert len(waits) == 2 + 2  # between three batches of 500 rows, and of the orphan check over their templates


def test_a_background_reconciliation_waits_while_the_loop_moves(connection):
    ScheduledJob.objects.bulk_create(
        [
            ScheduledJob(name=f'w{i}', callable='tests.tasks.add', scheduled_time=datetime(2030, 1, 1, tzinfo=UTC))
            for i in range(1200)
        ]
    )
    scheduler = leader()
    hook = DatabaseSync(reconcile_interval=3600)
    hook(scheduler)
    hook._worker.join(30)
    scheduler.loop.idle.clear()  # a burst of moves, say
    hook(scheduler)  # starts the (full) reconciliation, which waits after its first batch
    hook._reconciler.join(0.5)
    assert hook._reconciler.is_alive()
    scheduler.loop.idle.set()
    hook.wait(30)
    assert not hook._reconciler.is_alive()


def test_each_kind_of_failure_in_a_round_is_logged_once_per_streak_and_recovery_once(caplog):
    from django.db import OperationalError
    from redis.exceptions import ResponseError

    def fails(exc):
        def step():
            raise exc

        return step

    sync = DatabaseSync(reconcile_interval=3600)
    locked, wrong_type = OperationalError('database table is locked'), ResponseError('WRONGTYPE foreign data')
    with caplog.at_level('DEBUG', logger='django_rq_scheduled.feedback'):
        sync._run_steps([fails(locked), fails(wrong_type)], raise_errors=False)  # the second is not hidden
        sync._run_steps([fails(locked), fails(wrong_type)], raise_errors=False)
        sync._run_steps([fails(locked), fails(KeyError('a new kind'))], raise_errors=False)
        sync._run_steps([lambda: None], raise_errors=False)
    loud = [r for r in caplog.records if r.levelname in ('WARNING', 'ERROR', 'INFO')]
    told = [str(r.exc_info[1]) if r.exc_info else r.getMessage() for r in loud]
    assert len(told) == 4, told
    assert 'database table is locked' in told[0] and told[1] == 'WRONGTYPE foreign data'
    assert told[2] == "'a new kind'" and told[3] == 'Run feedback and reconciliation work again'
