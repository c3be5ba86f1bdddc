"""Rows → Redis: idempotent sync of rows, and reconciliation of every row.

The Redis state of a row is computed from the row alone (plus the run count Redis already knows), so syncing
twice, or syncing a row that did not change, writes nothing new. Each Redis server is read once and written once
per batch of rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from django.core.exceptions import ValidationError
from django.db import models, transaction
from redis.exceptions import NoScriptError

from . import conf
from .bulk import BulkWriter
from .core import compact, keys, payloads, scripts
from .core.errors import REDIS_OUTAGE_ERRORS
from .core.queues import connection_identity
from .core.scheduler import Scheduler
from .core.scores import format_score, guard_score
from .models import SCHEDULE_MODELS, ScheduleBase
from .owners import owner_of
from .pending import take_validated
from .reconcile_state import ReconcileState, begin_epoch, save_state
from .servers import Servers, servers
from .shared_templates import sharing, template_fields, version_of
from .yielding import between_batches

logger = logging.getLogger(__name__)

BATCH = 500
SYNC_ATTEMPTS = 3
UTC = timezone.utc


@dataclass
class SyncReport:
    """What a sync or a reconciliation changed in Redis."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)
    """Rows that could not be synced (logged); the others were."""
    conflicts: list[str] = field(default_factory=list)
    """Templates that kept changing under the compare-and-set writes; the next sync reads them afresh."""

    def merge(self, other: SyncReport) -> None:
        self.written += other.written
        self.removed += other.removed
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.conflicts += other.conflicts


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        if start:
            between_batches()
        yield items[start : start + size]


# -- syncing ----------------------------------------------------------------------------------------------------


def sync_rows(
    model: type[ScheduleBase], pks: Iterable[Any], *, using: str = 'default', created: Iterable[Any] = ()
) -> SyncReport:
    """Brings Redis in line with these rows (by primary key); rows that no longer exist lose their template.

    ``created``: those of the rows inserted since Redis was last brought in line with them. Redis holds nothing of
    theirs, so their first write is sent without reading Redis first (one round trip): the write is a
    compare-and-set on "nothing there", so a template that is there after all (a reused primary key whose old
    template was not removed yet) makes it fail, and the row is read and decided again.
    Those whose definition was validated as
    they were inserted (``pending.note_validated``, by ``bulk_create()``) are not validated again.
    """
    report = SyncReport()
    known = servers()
    fresh = set(created)
    validated = take_validated(model) if fresh else frozenset()
    for chunk in _chunks(list(pks), BATCH):
        rows = list(model._base_manager.using(using).filter(pk__in=chunk))
        missing = set(chunk) - {row.pk for row in rows} - fresh  # made and deleted in one transaction: nothing to do
        report.merge(_sync_chunk(model, rows, missing, known, using=using, fresh=fresh, validated=validated))
    return report


def _sync_chunk(
    model: type[ScheduleBase],
    rows: list[ScheduleBase],
    missing: set[Any],
    servers: Servers,
    *,
    using: str,
    fresh: Container[Any] = (),
    validated: Container[str] = (),
) -> SyncReport:
    report = SyncReport()
    missing_ids = [keys.template_id(model._meta.model_name or '', pk) for pk in missing]
    changed: list[ScheduleBase] = []
    for identity, scheduler in servers.schedulers.items():
        # A row lives on its queue's server; any other server loses its template (e.g. after a queue change).
        here = [row for row in rows if servers.queue_home.get(row.queue) == identity]
        elsewhere = [
            row.template_id for row in rows if servers.queue_home.get(row.queue) != identity and row.pk not in fresh
        ]
        unread = {row.template_id for row in here if row.pk in fresh}
        with sharing():
            report.merge(_sync_server(scheduler, here, elsewhere + missing_ids, changed, unread, validated))
    unknown = [row.name for row in rows if row.queue not in servers.queue_home]
    if unknown:
        logger.warning('Not scheduled, their queue is not in RQ_QUEUES: %s', ', '.join(unknown))
    _store_next_runs(model, changed, using=using)
    return report


def _store_next_runs(model: type[ScheduleBase], rows: list[ScheduleBase], *, using: str) -> None:
    """One UPDATE per distinct next run (rows made together often share it), or for many one over the batch
    (``BulkWriter``), in one transaction (after commit each is a commit); plain: the models' own would sync again."""
    by_value: dict[datetime | None, list[Any]] = defaultdict(list)
    for row in rows:
        by_value[row.next_run].append(row.pk)
    with transaction.atomic(using=using) if len(by_value) > 1 else contextlib.nullcontext():
        if len(by_value) > 2:
            BulkWriter(using).update(model, rows, ['next_run'])
            return
        for next_run, pks in by_value.items():
            models.QuerySet(model, using=using).filter(pk__in=pks).update(next_run=next_run)


@dataclass
class _Stored:
    """What Redis holds for one template id, as read before deciding."""

    version: str | None
    score: float | None
    raw_meta: Any

    @property
    def done(self) -> tuple[str, int | None] | None:
        return keys.parse_done(self.version) if self.score is None else None


@dataclass
class _Decision:
    """The compare-and-set write a sync decided on for one template id, and the row's next run if it succeeds."""

    template_id: str
    stored: _Stored
    action: str  # 'W' write, 'R' remove, '' nothing to do
    next_run: datetime | None = None
    argv: list[Any] = field(default_factory=list)


def _sync_server(
    scheduler: Scheduler,
    rows: list[ScheduleBase],
    strangers: list[str],
    changed: list[ScheduleBase],
    unread: Container[str] = (),
    validated: Container[str] = (),
) -> SyncReport:
    """Syncs rows in compare-and-set writes; ids that changed under a write are read and decided again.

    ``unread``: template ids known to hold nothing in Redis, whose first attempt does not read it (rows just
    inserted). ``validated``: versions of definitions validated as these rows were inserted (``bulk_create()``):
    an inserted row whose version is among them is not validated again.
    """
    report = SyncReport()
    pending_rows, pending_strangers = rows, strangers
    inserted = unread
    for _ in range(SYNC_ATTEMPTS):
        if not pending_rows and not pending_strangers:
            return report
        pending_rows, pending_strangers = _sync_attempt(
            scheduler, pending_rows, pending_strangers, changed, report, unread, (inserted, validated)
        )
        unread = ()
    conflicted = [row.template_id for row in pending_rows] + pending_strangers
    if conflicted:
        # Each attempt lost to a move or another sync: the next sync or reconciliation reads them afresh.
        logger.info('%d templates kept changing while being synced: %s', len(conflicted), ', '.join(conflicted))
        report.conflicts += conflicted
    return report


def _sync_attempt(
    scheduler: Scheduler,
    rows: list[ScheduleBase],
    strangers: list[str],
    changed: list[ScheduleBase],
    report: SyncReport,
    unread: Container[str],
    validated: tuple[Container[str], Container[str]] = ((), ()),
) -> tuple[list[ScheduleBase], list[str]]:
    """One read, one decision per id, one pipelined write; returns the rows and ids whose write found a change."""
    stored = _stored_states(scheduler, [row.template_id for row in rows] + strangers, unread)
    now = datetime.now(tz=UTC)
    decisions: list[tuple[ScheduleBase | None, _Decision]] = []
    inserted, versions = validated
    for row, state in zip(rows, stored):
        try:
            checked = versions if row.template_id in inserted else ()
            decisions.append((row, _decide(scheduler, row, state, now, validated=checked)))
        except Exception:
            # One bad row (e.g. changed by raw SQL into something no rule expects) must not stop the others.
            logger.exception('Cannot sync %s (%s); its template is left as it is', row.name, row.template_id)
            report.failed.append(row.template_id)
    for template_id, state in zip(strangers, stored[len(rows) :]):
        if state.version is not None or state.score is not None:
            decisions.append((None, _Decision(template_id, state, 'R', argv=[''])))
    results = _apply_decisions(scheduler, [decision for _, decision in decisions])
    conflicted_rows: list[ScheduleBase] = []
    conflicted_strangers: list[str] = []
    for (decided, decision), result in zip(decisions, results):
        if result == 0:
            if decided is not None:
                conflicted_rows.append(decided)
            else:
                conflicted_strangers.append(decision.template_id)
        elif isinstance(result, REDIS_OUTAGE_ERRORS):
            raise result  # Redis is away or refuses writes: the whole sync is for reconciliation to redo
        elif isinstance(result, Exception):
            logger.error('Cannot sync %s: %s', decision.template_id, result)
            report.failed.append(decision.template_id)
        else:
            _report(decision, report)
            if decided is not None and decision.next_run != decided.next_run:
                decided.next_run = decision.next_run
                changed.append(decided)
    return conflicted_rows, conflicted_strangers


def _report(decision: _Decision, report: SyncReport) -> None:
    if decision.action == 'W':
        report.written.append(decision.template_id)
    elif decision.action == 'R':
        report.removed.append(decision.template_id)
    else:
        report.unchanged += 1


def _stored_states(scheduler: Scheduler, ids: list[str], unread: Container[str]) -> list[_Stored]:
    """What Redis holds for these ids: read, but for ``unread`` ids, known to hold nothing."""
    wanted = [template_id for template_id in ids if template_id not in unread]
    found = dict(zip(wanted, _read_templates(scheduler, wanted)))
    return [found.get(template_id, _Stored(None, None, None)) for template_id in ids]


def _read_templates(scheduler: Scheduler, ids: list[str]) -> list[_Stored]:
    """Stored versions, scores and run counts of these ids, in one round trip."""
    if not ids:
        return []
    with scheduler.connection.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.VERSIONS_KEY, ids)
        for template_id in ids:
            pipe.zscore(keys.SCHEDULED_JOBS_KEY, template_id)
            pipe.hmget(keys.job_key(template_id), 'meta', *compact.SYNC_FIELDS)
        replies = pipe.execute(raise_on_error=False)
    versions = replies[0] if isinstance(replies[0], list) else [None] * len(ids)
    return [
        _Stored(_text(version), score if isinstance(score, float) else None, meta)
        for version, score, meta in zip(versions, replies[1::2], replies[2::2])
    ]


def _text(value: Any) -> str | None:
    if not isinstance(value, bytes):
        return None
    return value.decode(errors='replace')


def _decide(
    scheduler: Scheduler, row: ScheduleBase, stored: _Stored, now: datetime, *, validated: Container[str] = ()
) -> _Decision:
    """What makes Redis match ``row``: nothing, a fresh template, or no template (keeping a done marker).

    ``validated``: versions of definitions that passed validation just now; a row holding one of them is not
    validated again (the version is a digest of everything the template is made of).
    """
    template_id = row.template_id
    remove = _Decision(template_id, stored, 'R', argv=['keep'])
    if stored.score is None and (not stored.version or stored.done):
        remove.action = ''  # nothing in Redis to remove (a done marker stays)
    if not row.enabled or row.is_finished:
        return remove
    if not conf.callable_allowed(row.callable):  # cheap (cached), so checked for every row: the setting may change
        logger.error('Not scheduling %s: %s is not allowed by ALLOWED_CALLABLES', row.name, row.callable)
        return remove
    if stored.done and _ran_its_last_run(row, stored):
        return _Decision(template_id, stored, '')
    version = version_of(row)  # a digest of every field of the definition: worth computing once
    if stored.version == version and stored.score is not None:
        return _Decision(template_id, stored, '', next_run=datetime.fromtimestamp(stored.score, tz=UTC))
    # Only rows about to be written: a written row was valid when it was written.
    problem = None if version in validated else _row_problem(row)
    if problem:
        logger.error('Not scheduling %s: %s', row.name, problem)
        return remove
    ours = _ours(scheduler, stored.raw_meta)
    runs = max(row.run_count, _runs_in(ours), (stored.done or ('', 0))[1] or 0)
    begun = runs > 0 or ours.get('last_fire_time') is not None
    due = row.first_due(now, begun=begun)
    waiting = _waiting_slot(ours, stored.score)
    if waiting is not None and waiting <= now.timestamp() and row.is_periodic:
        # The template is due (or its slot is, and it waits for its jitter delay) and not moved yet (the loop is a
        # few ms behind, or down): editing the row must not skip that run. It runs with the new definition; the
        # slots after it follow the new one.
        due = datetime.fromtimestamp(waiting, tz=UTC)
    if due is None or _is_exhausted(row, runs):
        return remove
    # A first run already due when written missed nothing before: its misfire grace counts from now.
    late_from = now.timestamp() if row.is_periodic and not begun and due <= now else None
    argv = [version, format_score(due.timestamp()), *template_fields(scheduler, row, runs, version, late_from)]
    return _Decision(template_id, stored, 'W', next_run=due, argv=argv)


def _ran_its_last_run(row: ScheduleBase, stored: _Stored) -> bool:
    """Whether the done marker in Redis ends this row: no edit may run again what has already run.

    A one-off never runs twice, whatever was edited. A periodic schedule that finished starts again only when its
    definition changed and leaves it runs to make (e.g. a larger ``repeat``), from its next slot on.
    """
    digest, runs = stored.done or ('', None)
    if not row.is_periodic or digest == row.version():
        return True
    if runs is None:  # a marker of an older version: the row's own count is all we know
        return row.is_finished
    return _is_exhausted(row, max(runs, row.run_count))


def _row_problem(row: ScheduleBase) -> str | None:
    """Why a row must not be scheduled as it stands (it was written past validation: raw SQL, an old release)."""
    try:
        row.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        return '; '.join(f'{name}: {" ".join(messages)}' for name, messages in exc.message_dict.items())
    return None


def _ours(scheduler: Scheduler, stored: Any) -> dict[str, Any]:
    """Our part of a stored template's meta (its pickled meta, or the fields of a compact template); empty when
    there is none or it cannot be read."""
    if not isinstance(stored, list) or not stored:
        return {}
    raw_meta, names = stored[0], (name.encode() for name in compact.SYNC_FIELDS)
    fields = {name: value for name, value in zip(names, stored[1:]) if value is not None}
    if compact.is_compact(fields):
        return compact.read_ours(fields)
    if not isinstance(raw_meta, bytes):
        return {}
    try:
        ours = payloads.read_meta(raw_meta, scheduler.serializer).get(keys.META_KEY, {})
    except Exception:
        return {}
    return ours if isinstance(ours, dict) else {}


def _waiting_slot(ours: dict[str, Any], score: float | None) -> float | None:
    """The slot a stored template is due for: its score, or the slot it keeps while it waits for a jitter delay."""
    if score is None:
        return None
    slot, due = ours.get('slot'), ours.get('slot_due')
    if isinstance(slot, float) and isinstance(due, float) and abs(due - score) < 0.001 and slot <= score:
        return slot
    return score


def _runs_in(ours: dict[str, Any]) -> int:
    runs = ours.get('runs', 0)
    return runs if isinstance(runs, int) and not isinstance(runs, bool) and runs >= 0 else 0


def _is_exhausted(row: ScheduleBase, runs: int) -> bool:
    repeat = getattr(row, 'repeat', None)
    return repeat is not None and runs >= repeat


def _apply_decisions(scheduler: Scheduler, decisions: list[_Decision]) -> list[Any]:
    """Sends every write in one round trip; per decision 1 (applied), 0 (Redis changed since the read) or an error."""
    writes = [decision for decision in decisions if decision.action]
    replies = _send_writes(scheduler, writes) if writes else []
    if any(isinstance(reply, NoScriptError) for reply in replies):
        _SCRIPT_SHAS.pop(scheduler.connection.connection_pool, None)  # Redis restarted and forgot it: load it again
        replies = _send_writes(scheduler, writes)
    results = {id(decision): reply for decision, reply in zip(writes, replies)}
    return [results.get(id(decision), 1) for decision in decisions]


_SCRIPT_SHAS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _send_writes(scheduler: Scheduler, writes: list[_Decision]) -> list[Any]:
    # EVALSHA by hand: a pipeline of registered scripts would first ask Redis whether it knows them, a round trip.
    pool = scheduler.connection.connection_pool
    if pool not in _SCRIPT_SHAS:
        _SCRIPT_SHAS[pool] = scheduler.connection.script_load(scripts.SYNC_TEMPLATE)
    with scheduler.connection.pipeline(transaction=False) as pipe:
        for decision in writes:
            stored = decision.stored
            pipe.evalsha(
                _SCRIPT_SHAS[pool], 5, keys.SCHEDULED_JOBS_KEY, keys.job_key(decision.template_id),
                keys.VERSIONS_KEY, keys.NEXT_WAKEUP_KEY, keys.WAKEUP_KEY,
                decision.template_id, stored.version or '',
                '' if stored.score is None else guard_score(stored.score), decision.action, *decision.argv,
            )  # fmt: skip
        return pipe.execute(raise_on_error=False)


# -- reconciliation ----------------------------------------------------------------------------------------------


def reconcile(*, using: str = 'default', connection: Any = None) -> SyncReport:
    """Repairs drift between every row and Redis (flushed Redis, raw SQL, lost signals), cheaply: a full pass.

    Rows whose stored version matches and whose template is scheduled cost one pipelined read per batch.
    Templates of rows that no longer exist are removed; schedule entries no row owns are never touched. A row that
    cannot be loaded or synced is logged and skipped: it never keeps the others from being reconciled. It ends with
    a fresh reconciliation state on each server; the leader's periodic pass (``reconciliation``) goes on from it.
    """
    started = time.time()
    report = SyncReport()
    known = servers()
    if connection is not None:
        known = known.only(connection_identity(connection))
    epochs = {identity: begin_epoch(scheduler.connection) for identity, scheduler in known.schedulers.items()}
    for model in SCHEDULE_MODELS:
        pks = list(model._base_manager.using(using).order_by('pk').values_list('pk', flat=True))
        for chunk in _chunks(pks, BATCH):
            rows = load_rows(model, chunk, using=using, report=report)
            report.merge(_sync_chunk(model, rows, set(), known, using=using))
    for identity, scheduler in known.schedulers.items():
        report.merge(remove_orphans(scheduler, _owned_templates(scheduler), using=using))
        fresh = ReconcileState(epochs[identity], watermark=started, sweep_began=started, swept_at=started)
        save_state(scheduler.connection, fresh)
    log_repairs(report, 'Reconciled')
    return report


def log_repairs(report: SyncReport, what: str) -> None:
    if report.written or report.removed or report.failed:
        logger.info(
            '%s: %d written, %d removed, %d failed', what, len(report.written), len(report.removed), len(report.failed)
        )


def load_rows(model: type[ScheduleBase], pks: list[Any], *, using: str, report: SyncReport) -> list[ScheduleBase]:
    """The rows of these pks; if the batch cannot be loaded (a column no field can read), row by row."""
    manager = model._base_manager.using(using)
    try:
        return list(manager.filter(pk__in=pks).order_by())  # no sort by name: any order will do
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


def remove_orphans(scheduler: Scheduler, owned: dict[type[ScheduleBase], list[Any]], *, using: str) -> SyncReport:
    """Removes the templates among ``owned`` whose rows no longer exist (compare-and-set, like every sync write)."""
    orphans: list[str] = []
    for model, pks in owned.items():
        for chunk in _chunks(pks, BATCH):
            existing = {
                str(pk)
                for pk in model._base_manager.using(using).filter(pk__in=chunk).order_by().values_list('pk', flat=True)
            }
            name = model._meta.model_name or ''
            orphans += [keys.template_id(name, pk) for pk in map(str, chunk) if pk not in existing]
    return _sync_server(scheduler, [], orphans, []) if orphans else SyncReport()


def _owned_templates(scheduler: Scheduler) -> dict[type[ScheduleBase], list[Any]]:
    """The primary keys, per model, of the rows that the versions hash names; other keys are left alone."""
    return template_owners(scheduler.connection.hkeys(keys.VERSIONS_KEY))


def template_owners(template_ids: Any) -> dict[type[ScheduleBase], list[Any]]:
    owned: dict[type[ScheduleBase], list[Any]] = defaultdict(list)
    for raw in template_ids:
        owner = owner_of(cast(bytes, raw).decode(errors='replace'))
        if owner is not None:
            owned[owner[0]].append(owner[1])
    return owned
