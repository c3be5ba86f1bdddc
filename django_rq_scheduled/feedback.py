"""Redis → rows: the loop's run records written back into their rows, and the tick hook that does it (with
reconciliation) for ``manage.py rqscheduler``.

Feedback is monotonic: a row's run count never goes back, so a reader paused with old records cannot undo a newer
reader's work. Records stay in Redis until their rows are written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from redis import Redis

from .core import keys, scripts
from .core.errors import REDIS_OUTAGE_ERRORS
from .models import SCHEDULE_MODELS, ScheduleBase
from .sync import reconcile

if TYPE_CHECKING:
    from .core.scheduler import Scheduler

logger = logging.getLogger(__name__)

FEEDBACK_BATCH = 1000
MAX_RUN_COUNT = 2**31 - 1  # what a PositiveIntegerField holds on every database
UTC = timezone.utc


def apply_feedback(connection: Redis, *, using: str = 'default') -> int:
    """Copies the loop's run records into their rows with ``update()``; returns how many records were read.

    Records stay in Redis until their rows are written, so a database outage only delays feedback. A record that
    cannot be read or written (foreign data, a row gone) is logged and dropped: it never holds up the others.
    """
    records = connection.lrange(keys.RUNS_KEY, 0, FEEDBACK_BATCH - 1)
    if not records:
        return 0
    latest: dict[tuple[type[ScheduleBase], Any], dict[str, Any]] = {}
    for raw in records:
        parsed = _parse_record(raw)
        if parsed is not None:
            model, pk, fields = parsed
            latest[model, pk] = fields  # records are in order: the last one per row wins
    _write_feedback(latest, using=using)
    connection.eval(scripts.TRIM_IF_HEAD, 1, keys.RUNS_KEY, records[0], len(records))
    return len(records)


def _write_feedback(latest: dict[tuple[type[ScheduleBase], Any], dict[str, Any]], *, using: str) -> None:
    try:
        with transaction.atomic(using=using):
            for (model, pk), fields in latest.items():
                _record(model, pk, fields, using=using)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the records wait in Redis
    except DatabaseError:
        logger.warning('A batch of run feedback failed; writing it row by row')
        for (model, pk), fields in latest.items():
            try:
                with transaction.atomic(using=using):
                    _record(model, pk, fields, using=using)
            except (OperationalError, InterfaceError):
                raise
            except DatabaseError as exc:
                logger.error('Dropping the run feedback of %s %s: %s', model.__name__, pk, exc)


def _record(model: type[ScheduleBase], pk: Any, fields: dict[str, Any], *, using: str) -> None:
    # Never backwards: a reader that was paused with older records must not undo a newer reader's work.
    rows = model._base_manager.using(using).filter(pk=pk, run_count__lte=fields['run_count'])
    rows.record_feedback(**fields)


def _parse_record(raw: bytes | str) -> tuple[type[ScheduleBase], Any, dict[str, Any]] | None:
    """The row and the fields a run record sets, or None (logged) for a record no row can take."""
    try:
        record = json.loads(raw)
        label, pk = keys.parse_owner(record['owner'])
        model = {model._meta.label_lower: model for model in SCHEDULE_MODELS}[label]
        return model, model._meta.pk.to_python(pk), _feedback_fields(model, record)
    except Exception as exc:
        logger.warning('Dropping a malformed run record %r: %r', raw[:200], exc)
        return None


def _feedback_fields(model: type[ScheduleBase], record: dict[str, Any]) -> dict[str, Any]:
    runs = record['runs']
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= MAX_RUN_COUNT:
        raise ValueError(f'runs: {runs!r}')
    fields: dict[str, Any] = {'run_count': runs, 'next_run': _record_time(record.get('next'))}
    if record.get('job'):
        fields['last_run'] = _record_time(record['at'])
    if not model.is_periodic and record.get('job'):
        fields['has_run'] = True
    return fields


def _record_time(epoch: Any) -> datetime | None:
    if epoch is None:
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        raise ValueError(f'time: {epoch!r}')
    return datetime.fromtimestamp(epoch, tz=UTC)  # OverflowError, ValueError or OSError if out of range


class DatabaseSync:
    """The loop's tick hook: run feedback into rows, and reconciliation every ``reconcile_interval``.

    In the background (the default), both run in a thread of their own, started by a tick when the last one is
    done: the database may be slow or locked (SQLite under a writer, a paused process holding a lock), and the loop
    must keep renewing its lease and moving due jobs meanwhile. With ``background=False`` (burst runs, tests) they
    run in the tick itself.
    """

    def __init__(self, reconcile_interval: float, *, background: bool = True) -> None:
        self.reconcile_interval = reconcile_interval
        self.background = background
        self._next_reconcile = 0.0
        self._worker: threading.Thread | None = None
        self._failing = False

    def __call__(self, scheduler: Scheduler) -> None:
        if not self.background:
            self._sync(scheduler.connection, raise_errors=True)
            return
        if self._worker is not None and self._worker.is_alive():
            return  # the last round is still at work; this tick's feedback waits in Redis for the next one
        self._worker = threading.Thread(
            target=self._sync, args=(scheduler.connection,), name='drqs-database-sync', daemon=True
        )
        self._worker.start()

    def _sync(self, connection: Any, *, raise_errors: bool = False) -> None:
        from django.db import close_old_connections, connections

        try:
            close_old_connections()
            apply_feedback(connection)
            if time.monotonic() >= self._next_reconcile:
                self._next_reconcile = time.monotonic() + self.reconcile_interval
                reconcile(connection=connection)
        except Exception as exc:
            if raise_errors:
                raise
            self._log_failure(exc)
        else:
            if self._failing:
                logger.info('Run feedback and reconciliation work again')
            self._failing = False
        finally:
            if not raise_errors:
                connections.close_all()

    def _log_failure(self, exc: Exception) -> None:
        # Once per streak with its traceback (unless Redis or the database is simply away), then quietly.
        if self._failing:
            logger.debug('Run feedback or reconciliation still failing: %r', exc)
        elif isinstance(exc, (*REDIS_OUTAGE_ERRORS, OperationalError, InterfaceError)):
            logger.warning('Run feedback or reconciliation failed (%r); tried again at the next tick', exc)
        else:
            logger.exception('Run feedback or reconciliation failed; tried again at the next tick')
        self._failing = True

    def wait(self, timeout: float | None = None) -> None:
        """Waits for a running round of feedback and reconciliation (tests, shutdown)."""
        if self._worker is not None:
            self._worker.join(timeout)
