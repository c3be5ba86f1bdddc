"""Reconciliation of the rows with Redis: the full pass, and the leader's periodic pass, whose cost follows what
changed rather than the size of the tables.

The full pass (``sync.reconcile()``) reads every row and the template of each. The periodic pass (``Reconciler``)
reads, on each server:

- the rows changed since the last pass: ``modified`` at or after the watermark less ``CHANGED_MARGIN``, on an
  index. Every write through the ORM sets it (save, ``update()``, the bulk paths), so a row whose after-commit sync
  failed (Redis away, out of memory) is synced at the next pass that Redis answers;
- the next ``SWEEP_ROWS`` rows by primary key, from a rolling cursor: a change by raw SQL that left ``modified``
  alone is repaired within one sweep of the tables;
- the next ``SWEEP_ROWS`` entries of the versions hash (HSCAN, a rolling cursor): the templates of rows deleted
  behind the ORM's back are removed within one sweep of the hash.

Its state (the epoch of the full pass it follows, the watermark, the cursors) is a hash on the server itself
(``keys.RECONCILE_KEY``). A server that lost its data (FLUSHALL, a restart without persistence, a new or empty
server) has none, and its next pass is a full one. A pass writes the state only if the epoch it read is still
there, so a flush during a pass is never covered by that pass's watermark.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast
from uuid import uuid4

from django.core.exceptions import ValidationError
from redis import Redis
from redis.exceptions import ResponseError

from .core import keys, scripts
from .core.queues import connection_identity
from .core.scheduler import Scheduler
from .models import SCHEDULE_MODELS, ScheduleBase
from .owners import owner_of
from .servers import Servers, servers
from .sync import BATCH, SyncReport, _chunks, _sync_chunk, _sync_server

logger = logging.getLogger(__name__)

SWEEP_ROWS = 1000
"""Rows, and entries of the versions hash, verified per periodic pass: a full sweep of N rows takes N / SWEEP_ROWS
passes (with RECONCILE_INTERVAL = 60 s: 10 minutes for 10,000 rows, 17 hours for 1,000,000)."""
CHANGED_MARGIN = 300.0
"""Seconds before the last pass's start from which changed rows are read again: ``modified`` is written by the
saving host's clock before its transaction commits, so clock skew and slow transactions fit in it."""
UTC = timezone.utc


# -- the full pass ----------------------------------------------------------------------------------------------


def reconcile(*, using: str = 'default', connection: Any = None) -> SyncReport:
    """Repairs drift between every row and Redis (flushed Redis, raw SQL, lost signals); see ``sync.reconcile``."""
    started = time.time()
    report = SyncReport()
    known = servers()
    if connection is not None:
        known = known.only(connection_identity(connection))
    epochs = {identity: _begin_epoch(scheduler.connection) for identity, scheduler in known.schedulers.items()}
    for model in SCHEDULE_MODELS:
        pks = list(model._base_manager.using(using).values_list('pk', flat=True))
        for chunk in _chunks(pks, BATCH):
            rows = _load_rows(model, chunk, using=using, report=report)
            report.merge(_sync_chunk(model, rows, set(), known, using=using))
    for identity, scheduler in known.schedulers.items():
        report.merge(_remove_orphans(scheduler, _owned_templates(scheduler), using=using))
        fresh = ReconcileState(epochs[identity], watermark=started, sweep_began=started, swept_at=started)
        _save_state(scheduler.connection, fresh)
    if report.written or report.removed or report.failed:
        logger.info(
            'Reconciled: %d written, %d removed, %d failed',
            len(report.written), len(report.removed), len(report.failed),
        )  # fmt: skip
    return report


def _begin_epoch(connection: Redis) -> str:
    """A new state holding only a new epoch: a periodic pass meanwhile sees no watermark and does a full pass."""
    epoch = uuid4().hex
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(keys.RECONCILE_KEY)  # ours; foreign data there (another type) would fail every pass
        pipe.hset(keys.RECONCILE_KEY, 'epoch', epoch)
        pipe.execute()
    return epoch


def _load_rows(model: type[ScheduleBase], pks: list[Any], *, using: str, report: SyncReport) -> list[ScheduleBase]:
    """The rows of these pks; if the batch cannot be loaded (a column no field can read), row by row."""
    manager = model._base_manager.using(using)
    try:
        return list(manager.filter(pk__in=pks))
    except Exception:
        logger.warning('Cannot load a batch of %s rows; loading them one by one', model.__name__)
    rows = []
    for pk in pks:
        try:
            rows.extend(manager.filter(pk=pk))
        except Exception as exc:
            logger.error('Cannot load %s %s (%r); it is not reconciled', model.__name__, pk, exc)
            report.failed.append(keys.template_id(model._meta.model_name or '', pk))
    return rows


def _remove_orphans(scheduler: Scheduler, owned: dict[type[ScheduleBase], list[Any]], *, using: str) -> SyncReport:
    """Removes the templates among ``owned`` whose rows no longer exist (compare-and-set, like every sync write)."""
    orphans: list[str] = []
    for model, pks in owned.items():
        for chunk in _chunks(pks, BATCH):
            existing = {
                str(pk) for pk in model._base_manager.using(using).filter(pk__in=chunk).values_list('pk', flat=True)
            }
            name = model._meta.model_name or ''
            orphans += [keys.template_id(name, pk) for pk in map(str, chunk) if pk not in existing]
    return _sync_server(scheduler, [], orphans, []) if orphans else SyncReport()


def _owned_templates(scheduler: Scheduler) -> dict[type[ScheduleBase], list[Any]]:
    """The primary keys, per model, of the rows that the versions hash names; other keys are left alone."""
    return _owners(scheduler.connection.hkeys(keys.VERSIONS_KEY))


def _owners(template_ids: Any) -> dict[type[ScheduleBase], list[Any]]:
    owned: dict[type[ScheduleBase], list[Any]] = defaultdict(list)
    for raw in template_ids:
        owner = owner_of(cast(bytes, raw).decode(errors='replace'))
        if owner is not None:
            owned[owner[0]].append(owner[1])
    return owned


def _pk_or_none(model: type[ScheduleBase], text: str) -> Any:
    """A primary key of ``model`` from its text, or None (none, or unreadable: the sweep starts the table again)."""
    field = model._meta.pk
    if not text or field is None:
        return None
    try:
        return field.to_python(text)
    except ValidationError:
        return None


# -- the periodic pass ------------------------------------------------------------------------------------------


@dataclass
class ReconcileState:
    """What the periodic pass of one server goes on from (``keys.RECONCILE_KEY``)."""

    epoch: str
    watermark: float
    """Epoch seconds: when the last pass that completed began."""
    model: int = 0
    """The rolling sweep's model (an index of SCHEDULE_MODELS) ..."""
    after: str = ''
    """... and the primary key it verified last ('' = from the start)."""
    orphans: int = 0
    """The HSCAN cursor of the versions hash."""
    sweep_began: float = 0.0
    swept_at: float = 0.0
    """When the last complete verification of every row (a full pass or a rolling sweep) began."""

    @classmethod
    def parse(cls, raw: dict[bytes, bytes]) -> ReconcileState | None:
        """The state, or None if there is none or it cannot be read (someone else's data: a full pass rewrites it)."""
        try:
            return cls(
                epoch=raw[b'epoch'].decode(),
                watermark=float(raw[b'watermark']),
                model=int(raw.get(b'model', 0)) % len(SCHEDULE_MODELS),
                after=raw.get(b'after', b'').decode(),
                orphans=max(0, int(raw.get(b'orphans', 0))),
                sweep_began=float(raw.get(b'sweep_began', 0)),
                swept_at=float(raw.get(b'swept_at', 0)),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def fields(self) -> list[Any]:
        values = {
            'watermark': repr(self.watermark), 'model': self.model, 'after': self.after, 'orphans': self.orphans,
            'sweep_began': repr(self.sweep_began), 'swept_at': repr(self.swept_at),
        }  # fmt: skip
        return [item for pair in values.items() for item in pair]


def read_state(connection: Redis) -> ReconcileState | None:
    try:
        raw = connection.hgetall(keys.RECONCILE_KEY)
    except ResponseError:
        return None  # not a hash: the full pass replaces it
    return ReconcileState.parse(cast(dict[bytes, bytes], raw))


def _save_state(connection: Redis, state: ReconcileState) -> bool:
    """Writes the state if its epoch is still the one in Redis; False if a flush or a full pass came between."""
    saved = connection.eval(scripts.SAVE_RECONCILE_STATE, 1, keys.RECONCILE_KEY, state.epoch, *state.fields())
    return bool(saved)


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
            return reconcile(using=self.using, connection=scheduler.connection)
        return self._incremental(known, scheduler, state)

    def _incremental(self, known: Servers, scheduler: Scheduler, state: ReconcileState) -> SyncReport:
        started = time.time()
        report = SyncReport()
        report.merge(self._changed_rows(known, since=state.watermark - CHANGED_MARGIN))
        self._sweep_rows(known, state, report, started)
        self._sweep_orphans(scheduler, state, report)
        if not report.conflicts:  # else the rows that kept changing are read again by the next pass
            state.watermark = started
        _save_state(scheduler.connection, state)
        if report.written or report.removed or report.failed:
            logger.info(
                'Reconciled the changes: %d written, %d removed, %d failed',
                len(report.written), len(report.removed), len(report.failed),
            )  # fmt: skip
        return report

    def _changed_rows(self, known: Servers, *, since: float) -> SyncReport:
        report = SyncReport()
        moment = datetime.fromtimestamp(since, tz=UTC)
        for model in SCHEDULE_MODELS:
            manager = model._base_manager.using(self.using)
            pks = list(manager.filter(modified__gte=moment).values_list('pk', flat=True))
            for chunk in _chunks(pks, BATCH):
                rows = _load_rows(model, chunk, using=self.using, report=report)
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
        pks = list(rows.values_list('pk', flat=True)[:SWEEP_ROWS])
        for chunk in _chunks(pks, BATCH):
            loaded = _load_rows(model, chunk, using=self.using, report=report)
            report.merge(_sync_chunk(model, loaded, set(), known, using=self.using))
        if len(pks) == SWEEP_ROWS:
            state.after = str(pks[-1])
            return
        state.model, state.after = (state.model + 1) % len(SCHEDULE_MODELS), ''
        if state.model == 0:
            state.swept_at = state.sweep_began

    def _sweep_orphans(self, scheduler: Scheduler, state: ReconcileState, report: SyncReport) -> None:
        """Removes the orphans among the next slice of the versions hash."""
        cursor, entries = scheduler.connection.hscan(keys.VERSIONS_KEY, cursor=state.orphans, count=SWEEP_ROWS)
        report.merge(_remove_orphans(scheduler, _owners(entries), using=self.using))
        state.orphans = int(cursor)
