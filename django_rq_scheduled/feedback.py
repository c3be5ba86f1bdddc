"""Redis → rows: the loop's run records written back into their rows, and the tick hook that does it (with
reconciliation) for ``manage.py rqscheduler``.

Feedback is monotonic: a row's run count never goes back, so a reader paused with old records cannot undo a newer
reader's work. Records stay in Redis until their rows are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timezone
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from redis import Redis
from redis.exceptions import ResponseError

from . import history, records
from .bulk import BulkWriter
from .code_sync import sync_code_schedules
from .conf import get_setting
from .core import keys, scripts
from .core.errors import REDIS_OUTAGE_ERRORS
from .declared import DeclarationError
from .models import SCHEDULE_MODELS, ScheduleBase
from .reconciliation import Reconciler
from .retention import Pruner
from .servers import servers
from .yielding import yielding_to

if TYPE_CHECKING:
    from .core.scheduler import Scheduler

logger = logging.getLogger(__name__)

MODELS_BY_LABEL = {model._meta.label_lower: model for model in SCHEDULE_MODELS}
FEEDBACK_BATCH = 10_000
"""The loop's records (a few hundred bytes each) read from Redis per pass, with as many of the workers' records
(``history.OUTCOME_BATCH``)."""
DRAIN_SECONDS = 1.0
IDLE_WAIT_SECONDS = 1.0
"""The longest a background reconciliation waits, between two of its batches, for the loop to finish its moves."""
MAX_RUN_COUNT = 2**31 - 1  # what a PositiveIntegerField holds on every database
UTC = timezone.utc


def apply_feedback(connection: Redis, *, using: str = 'default') -> int:
    """Copies the loop's run records into their rows with ``update()``, and into runs (``history``) with the workers'
    outcome records waiting beside them; returns how many of the loop's records were read.

    Records stay in Redis until their rows are written, so a database outage only delays feedback. A record that
    cannot be read or written (foreign data, a row gone) is logged and dropped: it never holds up the others. A run
    whose enqueue and outcome records wait together (a backlog, a short job) is written once, complete.
    """
    read = connection.lrange(keys.RUNS_KEY, 0, FEEDBACK_BATCH - 1)
    if not read:
        return 0
    outcomes = _waiting_outcomes(connection)
    latest: dict[tuple[type[ScheduleBase], Any], dict[str, Any]] = {}
    facts: list[records.Fact] = []
    for raw in read:
        parsed = _parse_record(raw)
        if parsed is not None:
            model, pk, fields, fact = parsed
            latest[model, pk] = fields  # records are in order: the last one per row wins
            if fact is not None:
                facts.append(fact)
    _write_feedback(latest, using=using)
    transitions = history.record_facts(facts + history.outcome_facts(outcomes), using=using)
    connection.eval(scripts.TRIM_IF_HEAD, 1, keys.RUNS_KEY, read[0], len(read))
    history.forget_outcomes(connection, outcomes)
    history.send_signals(transitions)
    return len(read)


def _waiting_outcomes(connection: Redis) -> list[bytes]:
    try:
        return history.outcome_batch(connection)
    except ResponseError:
        return []  # foreign data at the key: reported by the outcomes' own step, which fails on it


def _write_feedback(latest: dict[tuple[type[ScheduleBase], Any], dict[str, Any]], *, using: str) -> None:
    try:
        with transaction.atomic(using=using):
            _record(list(latest.items()), using=using)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the records wait in Redis
    except DatabaseError:
        logger.warning('A batch of run feedback failed; writing it row by row')
        for item in latest.items():
            try:
                with transaction.atomic(using=using):
                    _record([item], using=using)
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError as exc:
                (model, pk), _ = item
                logger.error('Dropping the run feedback of %s %s: %s', model.__name__, pk, exc)


def _record(items: list[tuple[tuple[type[ScheduleBase], Any], dict[str, Any]]], *, using: str) -> None:
    """One statement per model and set of fields, run over the rows. Never backwards: a reader that was paused
    with older records must not undo a newer reader's work (``run_count`` only grows)."""
    groups: dict[tuple[type[ScheduleBase], tuple[str, ...]], list[tuple[Any, dict[str, Any]]]] = {}
    for (model, pk), fields in items:
        groups.setdefault((model, tuple(sorted(fields))), []).append((pk, fields))
    writer = BulkWriter(using)
    for (model, _names), changes in groups.items():
        writer.update_values(model, changes, at_most='run_count')


def _parse_record(
    raw: bytes | str,
) -> tuple[type[ScheduleBase], Any, dict[str, Any], records.Fact | None] | None:
    """The row, the fields a run record sets and the run it tells of, or None (logged) for a record no row can
    take."""
    try:
        record = records.loads(raw)
        label, pk = keys.parse_owner(record['owner'])
        model = MODELS_BY_LABEL[label]
        pk = records.row_pk(model, pk)
        fields = _feedback_fields(model, record)
        return model, pk, fields, records.decision_fact(record, model, pk, at=fields.get('last_run'))
    except Exception as exc:
        logger.warning('Dropping a malformed run record %r: %r', raw[:200], exc)
        return None


def _feedback_fields(model: type[ScheduleBase], record: dict[str, Any]) -> dict[str, Any]:
    runs = record['runs']
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= MAX_RUN_COUNT:
        raise ValueError(f'runs: {runs!r}')
    fields: dict[str, Any] = {'run_count': runs, 'next_run': records.epoch_time(record.get('next'))}
    if record.get('job'):
        fields['last_run'] = records.epoch_time(record['at'])
        if not model.is_periodic:
            fields['has_run'] = True
    return fields


def _drain(read: Callable[[Redis], int], connection: Redis, batch: int) -> bool:
    """Reads batches until the backlog is read or the time is up, so ingestion keeps pace with a busy schedule;
    returns whether the backlog is read."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while read(connection) >= batch:
        if time.monotonic() >= deadline:
            return False
    return True


class DatabaseSync:
    """The loop's tick hook: run feedback into rows, and reconciliation every ``reconcile_interval``.

    In the background (the default), feedback and reconciliation each run in a thread of their own, started by a
    tick when the last one is done: the database may be slow or locked (SQLite under a writer, a paused process
    holding a lock), and the loop must keep renewing its lease and moving due jobs meanwhile. They are apart because
    a reconciliation may take long (every row of a large ``bulk_create`` is changed for ``CHANGED_MARGIN``), and a
    burst of runs must not wait for it; the feedback thread reads batches until the backlog is read, not one
    ``DRAIN_SECONDS`` per tick. With ``background=False`` (burst runs, tests) both run in the tick itself.
    """

    def __init__(
        self,
        reconcile_interval: float,
        *,
        background: bool = True,
        on_reconciled: Callable[[float], object] | None = None,
    ) -> None:
        self.reconcile_interval = reconcile_interval
        self.background = background
        self.on_reconciled = on_reconciled
        self._next_reconcile = 0.0
        self._term: int | None = None
        self._full_pass_due = True
        self._worker: threading.Thread | None = None
        self._reconciler: threading.Thread | None = None
        self._behind = False
        self._next_care = 0.0
        self._failing_kinds: set[type[Exception]] = set()
        self._pruner = Pruner()
        self._running: set[str] = set()
        self._runs_left = False
        self._code_synced = False

    def __call__(self, scheduler: Scheduler) -> None:
        if not self.background:
            self._sync(scheduler, raise_errors=True)
            return
        # A thread still at work is left to it: this tick's feedback waits in Redis for its next round.
        if not _alive(self._worker):
            self._worker = _started(self._feed_while_behind, scheduler, 'drqs-database-sync')
        # The first reconciliation follows the sync of the schedules declared in code (they are rows it reads).
        if self._code_synced and not _alive(self._reconciler) and self._reconciliation_due(scheduler):
            self._reconciler = _started(self._reconcile_in_background, scheduler, 'drqs-reconciliation')

    def _feed_while_behind(self, scheduler: Scheduler) -> None:
        """Rounds of feedback, one after the other while a backlog waits and this process leads."""
        while True:
            steps = self._feedback_steps(scheduler)
            if time.monotonic() >= self._next_care:  # its periodic care too, however long the backlog lasts
                self._next_care = time.monotonic() + self.reconcile_interval
                steps.append(lambda: self._look_after_runs(scheduler))
            self._run_steps(steps, raise_errors=False)
            if not (self._behind and scheduler.lease.held):
                return

    def _reconcile_in_background(self, scheduler: Scheduler) -> None:
        # Between its batches it waits while the loop moves due jobs (at most a second each time: never starved).
        with yielding_to(lambda: scheduler.loop.wait_idle(IDLE_WAIT_SECONDS)):
            self._run_steps([lambda: self._reconcile(scheduler.connection)], raise_errors=False)

    def _reconciliation_due(self, scheduler: Scheduler) -> bool:
        if scheduler.lease.terms != self._term:
            # It starts leading (a start, a return after an outage or after another leader): what Redis holds may
            # have been lost or changed behind its back meanwhile, and rows deleted while their sync could not reach
            # Redis are not found by their changes: a full pass, now.
            self._term, self._full_pass_due, self._next_reconcile = scheduler.lease.terms, True, 0.0
        if time.monotonic() < self._next_reconcile:
            return False
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        return True

    def _feedback_steps(self, scheduler: Scheduler) -> list[Callable[[], object]]:
        connection = scheduler.connection
        self._behind = False  # until a step says a backlog is left
        steps: list[Callable[[], object]] = [] if self._code_synced else [self._sync_code_schedules]
        return [
            *steps,
            lambda: self._read_run_records(connection),
            lambda: self._read_outcomes(connection),
            lambda: self._sweep(connection),
        ]

    def _sync(self, scheduler: Scheduler, *, raise_errors: bool = False) -> None:
        """One round of everything, in order, in the tick itself."""
        steps = self._feedback_steps(scheduler)
        if self._reconciliation_due(scheduler):
            steps += [lambda: self._reconcile(scheduler.connection), lambda: self._look_after_runs(scheduler)]
        self._run_steps(steps, raise_errors=raise_errors)

    def _run_steps(self, steps: list[Callable[[], object]], *, raise_errors: bool) -> None:
        from django.db import close_old_connections, connections

        failures = []
        try:
            close_old_connections()
            for step in steps:  # each on its own: a step that fails (foreign data, a bug) holds up no other
                try:
                    step()
                except Exception as exc:
                    if raise_errors:
                        raise
                    failures.append(exc)
        finally:
            if not raise_errors:
                connections.close_all()  # this thread's
        for failure in failures:  # each: one step's failure must not hide another's (a table locked, foreign data)
            self._log_failure(failure)
        if not failures and self._failing_kinds:
            logger.info('Run feedback and reconciliation work again')
            self._failing_kinds.clear()

    def _sync_code_schedules(self) -> None:
        """Once, when this process starts leading: a deploy updates the schedules declared in code."""
        try:
            plan = sync_code_schedules()
        except DeclarationError as exc:
            logger.error('The schedules declared in code were not synced: %s', exc)  # until a fixed deploy
        else:
            if not plan.empty:
                logger.info('Schedules declared in code synced: %s', '; '.join(plan.lines()))
        self._code_synced = True

    def _read_run_records(self, connection: Redis) -> None:
        self._runs_left = False  # if reading them fails, the outcomes are read on their own
        self._runs_left = not _drain(apply_feedback, connection, FEEDBACK_BATCH)
        self._behind = self._behind or self._runs_left

    def _read_outcomes(self, connection: Redis) -> None:
        # While the loop's records wait, their outcomes are read beside them (each run then written once, complete):
        # reading outcomes ahead would write their runs twice.
        if not self._runs_left:
            read = _drain(history.ingest_outcomes, connection, history.OUTCOME_BATCH)
            self._behind = self._behind or not read

    def _reconcile(self, connection: Redis) -> None:
        """A full pass when it starts leading (or after a failed full pass), else the incremental one, which is full
        too when Redis lost its data (``reconciliation``). A failed incremental pass is simply done again: its
        watermark did not move on."""
        started = time.monotonic()
        full, self._full_pass_due = self._full_pass_due, False
        try:
            Reconciler(connection).run(full=full)
        except Exception:
            self._full_pass_due = full
            raise
        if self.on_reconciled is not None:
            self.on_reconciled(time.monotonic() - started)

    def _sweep(self, connection: Redis) -> None:
        self._running |= history.sweep_open_runs(connection, servers().queues_on(connection))

    def _look_after_runs(self, scheduler: Scheduler) -> None:
        """Now and then: fails the runs whose worker died (RQ's cleanup of abandoned jobs, which calls their failure
        callback), and prunes the history."""
        running, self._running = self._running, set()
        for queue_name in sorted(running):
            scheduler.queues.get(queue_name, None).started_job_registry.cleanup()
        self._pruner.prune(days=get_setting('RUN_HISTORY_DAYS'), per_schedule=get_setting('RUN_HISTORY_PER_SCHEDULE'))

    def _log_failure(self, exc: Exception) -> None:
        # Once per streak and kind with its traceback (unless Redis or the database is simply away), then quietly.
        kind = type(exc)
        if kind in self._failing_kinds:
            logger.debug('Run feedback or reconciliation still failing: %r', exc)
        elif isinstance(exc, (*REDIS_OUTAGE_ERRORS, OperationalError, InterfaceError)):
            logger.warning('Run feedback or reconciliation failed (%r); tried again at the next tick', exc)
        else:
            logger.error('Run feedback or reconciliation failed; tried again at the next tick', exc_info=exc)
        self._failing_kinds.add(kind)

    def wait(self, timeout: float | None = None) -> None:
        """Waits for a running round of feedback and reconciliation (tests, shutdown)."""
        for thread in (self._worker, self._reconciler):
            if thread is not None:
                thread.join(timeout)


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _started(target: Callable[[Scheduler], None], scheduler: Scheduler, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=(scheduler,), name=name, daemon=True)
    thread.start()
    return thread
