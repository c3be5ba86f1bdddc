"""Reconciliation of the rows with Redis: the full pass, and the leader's periodic pass, whose cost follows what
changed rather than the size of the tables.

The full pass (``sync.reconcile()``) reads every row and the template of each. The periodic pass (``Reconciler``)
reads, on each server:

- the rows whose after-commit sync failed, noted in the database by the process that wrote them (``unsynced``):
  saved or deleted while Redis did not answer it, they are brought in line at the first pass Redis answers;
- the rows changed since the last pass: ``modified`` at or after the watermark less ``CHANGED_MARGIN``, on an
  index. Every write through the ORM sets it (save, ``update()``, the bulk paths), so a row whose after-commit sync
  failed is synced at the next pass that Redis answers even if noting it failed too (the process died after its
  commit, the database refused the note);
- the next ``RECONCILE_SWEEP_ROWS`` rows by primary key, from a rolling cursor: a change by raw SQL that left
  ``modified`` alone is repaired within one sweep of the tables;
- the next ``RECONCILE_SWEEP_ROWS`` entries of the versions hash (HSCAN, a rolling cursor): the templates of rows
  deleted behind the ORM's back are removed within one sweep of the hash.

Its state (the epoch of the full pass it follows, the watermark, the cursors) is a hash on the server itself
(``keys.RECONCILE_KEY``). A server that lost its data (FLUSHALL, a restart without persistence, a new or empty
server) has none, and its next pass is a full one. A pass writes the state only if the epoch it read is still
there, so a flush during a pass is never covered by that pass's watermark.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ValidationError
from redis import Redis

from . import sync
from .conf import reconcile_sweep_rows
from .core import keys
from .core.queues import connection_identity
from .core.scheduler import Scheduler
from .models import SCHEDULE_MODELS, ScheduleBase
from .reconcile_state import ReconcileState, read_state, save_state
from .servers import Servers, servers
from .sync import BATCH, SyncReport, _chunks, _sync_chunk
from .unsynced import UnsyncedRow

logger = logging.getLogger(__name__)

NOTED_BATCH = 5000
"""Rows whose sync failed (``unsynced``) synced per pass: after a long outage with many writes, the next passes
take the rest."""
CHANGED_MARGIN = 300.0
"""Seconds before the last pass's start from which changed rows are read again: ``modified`` is written by the
saving host's clock before its transaction commits, so clock skew and slow transactions fit in it."""
UTC = timezone.utc


# -- the periodic pass ---------------------------------------------------------------------------------------------


def _pk_or_none(model: type[ScheduleBase], text: str) -> Any:
    """A primary key of ``model`` from its text, or None (none, or unreadable: the sweep starts the table again)."""
    field = model._meta.pk
    if not text or field is None:
        return None
    try:
        return field.to_python(text)
    except ValidationError:
        return None


def _rows_by_model(noted: list[tuple[int, str, str]]) -> dict[type[ScheduleBase], list[Any]]:
    """The primary keys of the noted rows, per model; entries no schedule row can have are dropped."""
    models = {model._meta.label_lower: model for model in SCHEDULE_MODELS}
    rows: dict[type[ScheduleBase], list[Any]] = {}
    for _, label, text in noted:
        model = models.get(label)
        pk = _pk_or_none(model, text) if model is not None else None
        if model is not None and pk is not None:
            rows.setdefault(model, []).append(pk)
    return rows


class Reconciler:
    """The leader's periodic reconciliation of one Redis server: incremental, or full when Redis has no state."""

    def __init__(self, connection: Redis, *, using: str = 'default') -> None:
        self.identity = connection_identity(connection)
        self.using = using

    def run(self, *, full: bool = False) -> SyncReport:
        known = servers().only(self.identity)
        scheduler = known.schedulers.get(self.identity)
        if scheduler is None:
            return SyncReport()  # a server no queue of RQ_QUEUES is on: no row lives there
        state = None if full else read_state(scheduler.connection)
        if state is None:
            logger.info('Reconciling every row with Redis (%s)', known.name_of(self.identity))
            return sync.reconcile(using=self.using, connection=scheduler.connection)
        return self._incremental(known, scheduler, state)

    def _incremental(self, known: Servers, scheduler: Scheduler, state: ReconcileState) -> SyncReport:
        started = time.time()
        report = self._noted_rows()
        # A watermark ahead of this host's clock (another leader's clock was) must not hide the rows changed since.
        report.merge(self._changed_rows(known, since=min(state.watermark, started) - CHANGED_MARGIN))
        self._sweep_rows(known, state, report, started)
        self._sweep_orphans(scheduler, state, report)
        if not report.conflicts:  # else the rows that kept changing are read again by the next pass
            state.watermark = started
        save_state(scheduler.connection, state)
        sync.log_repairs(report, 'Reconciled the changes')
        return report

    def _noted_rows(self) -> SyncReport:
        """The rows whose after-commit sync failed (``unsynced``), synced on every server, then forgotten; if Redis
        does not answer, they wait for the next pass."""
        entries = UnsyncedRow.objects.using(self.using).order_by('pk').values_list('pk', 'model', 'object_pk')
        noted = list(entries[:NOTED_BATCH])
        report = SyncReport()
        for model, pks in _rows_by_model(noted).items():
            report.merge(sync.sync_rows(model, pks, using=self.using))
        if noted:
            UnsyncedRow.objects.using(self.using).filter(pk__in=[entry[0] for entry in noted]).delete()
        return report

    def _changed_rows(self, known: Servers, *, since: float) -> SyncReport:
        report = SyncReport()
        moment = datetime.fromtimestamp(since, tz=UTC)
        for model in SCHEDULE_MODELS:
            manager = model._base_manager.using(self.using)
            pks = list(manager.filter(modified__gte=moment).order_by().values_list('pk', flat=True))  # on its index
            for chunk in _chunks(pks, BATCH):
                rows = sync.load_rows(model, chunk, using=self.using, report=report)
                report.merge(_sync_chunk(model, rows, set(), known, using=self.using))
        return report

    def _sweep_rows(self, known: Servers, state: ReconcileState, report: SyncReport, now: float) -> None:
        """Verifies the next slice of rows by primary key; moves the cursor on (to the next model at a table's end)."""
        model = SCHEDULE_MODELS[state.model]
        if state.model == 0 and not state.after:
            state.sweep_began = now
        rows = model._base_manager.using(self.using).order_by('pk')
        after = _pk_or_none(model, state.after)
        if after is not None:
            rows = rows.filter(pk__gt=after)
        sweep_rows = reconcile_sweep_rows()
        pks = list(rows.values_list('pk', flat=True)[:sweep_rows])
        for chunk in _chunks(pks, BATCH):
            loaded = sync.load_rows(model, chunk, using=self.using, report=report)
            report.merge(_sync_chunk(model, loaded, set(), known, using=self.using))
        if len(pks) == sweep_rows:
            state.after = str(pks[-1])
            return
        state.model, state.after = (state.model + 1) % len(SCHEDULE_MODELS), ''
        if state.model == 0:
            state.swept_at = state.sweep_began

    def _sweep_orphans(self, scheduler: Scheduler, state: ReconcileState, report: SyncReport) -> None:
        """Removes the orphans among the next slice of the versions hash."""
        cursor, entries = scheduler.connection.hscan(
            keys.VERSIONS_KEY, cursor=state.orphans, count=reconcile_sweep_rows()
        )
        report.merge(sync.remove_orphans(scheduler, sync.template_owners(entries), using=self.using))
        state.orphans = int(cursor)
