"""Rows → Redis: idempotent sync, reconciliation, run feedback back into rows, and run-now.

The Redis state of a row is computed from the row alone (plus the run count Redis already knows), so syncing
twice, or syncing a row that did not change, writes nothing new. Each Redis server is read once and written once
per batch of rows.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError, OperationalError, models, transaction
from django.utils import timezone as django_timezone
from redis.exceptions import NoScriptError

from . import conf, cron, keys, payloads, scripts
from .conf import LATEST_SCHEDULE_TIME
from .models import SCHEDULE_MODELS, CronJob, RepeatableJob, ScheduleBase, ScheduledJob
from .planner import format_score, guard_score
from .scheduler import REDIS_OUTAGE_ERRORS, Scheduler, connection_identity

logger = logging.getLogger(__name__)

BATCH = 500
FEEDBACK_BATCH = 1000
SYNC_ATTEMPTS = 3
MAX_RUN_COUNT = 2**31 - 1  # what a PositiveIntegerField holds on every database
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


@dataclass
class _Servers:
    """The distinct Redis servers of RQ_QUEUES, each with one scheduler, and which server each queue is on."""

    schedulers: dict[tuple[Any, ...], Scheduler]
    queue_home: dict[str, tuple[Any, ...]]


def _servers() -> _Servers:
    from django.conf import settings

    return _servers_for(repr(getattr(settings, 'RQ_QUEUES', {})))


@functools.lru_cache(maxsize=8)
def _servers_for(queues_fingerprint: str) -> _Servers:
    """Cached per RQ_QUEUES value: clients (and their connection pools) are reused across syncs."""
    from django.conf import settings

    schedulers: dict[tuple[Any, ...], Scheduler] = {}
    queue_home: dict[str, tuple[Any, ...]] = {}
    for queue_name in getattr(settings, 'RQ_QUEUES', {}):
        scheduler = Scheduler(queue_name=queue_name)
        identity = connection_identity(scheduler.connection)
        schedulers.setdefault(identity, scheduler)
        queue_home[queue_name] = identity
    return _Servers(schedulers, queue_home)


def _aware(value: datetime) -> datetime:
    return value if django_timezone.is_aware(value) else django_timezone.make_aware(value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- computing a row's template ---------------------------------------------------------------------------------


def first_due(row: ScheduleBase, now: datetime) -> datetime | None:
    """When the row's template is next due, or None when it has nothing left to run before the latest schedule
    time (conf.py)."""
    if isinstance(row, ScheduledJob):
        return _until_the_limit(_aware(row.scheduled_time))
    if isinstance(row, RepeatableJob):
        start = _aware(row.scheduled_time)
        if start >= now:
            return _until_the_limit(start)
        # Strictly after now: a slot at this very instant may just have run.
        step = row.interval_seconds
        slots = int((now - start).total_seconds() // step) + 1
        due = start.timestamp() + slots * step
        # Compared as a number: a datetime past the limit may be past year 9999 (OverflowError).
        return datetime.fromtimestamp(due, tz=UTC) if due <= LATEST_SCHEDULE_TIME.timestamp() else None
    if isinstance(row, CronJob):
        return _until_the_limit(cron.next_fire_time(row.cron_string, now, row.timezone))
    raise TypeError(f'not a schedule model: {type(row).__name__}')


def _until_the_limit(due: datetime | None) -> datetime | None:
    return due if due is not None and due <= LATEST_SCHEDULE_TIME else None


def _scheduling_meta(row: ScheduleBase, runs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """rq-scheduler's meta keys, and ours, for the template of ``row``."""
    ours = {
        'misfire_grace': row.misfire_grace,
        'overlap': row.overlap,
        'runs': runs,
        'record': True,
        'owner': row.owner,
        'version': row.version(),
    }
    meta: dict[str, Any] = {}
    if isinstance(row, RepeatableJob):
        meta['interval'] = row.interval_seconds
        ours.update(kind='interval', interval=float(row.interval_seconds))
    elif isinstance(row, CronJob):
        meta.update(cron_string=row.cron_string, use_local_timezone=False)
        ours.update(kind='cron', timezone=row.timezone)
    else:
        ours['kind'] = 'once'
    repeat = getattr(row, 'repeat', None)
    if repeat is not None:
        meta['repeat'] = repeat - runs
    return meta, ours


def _template_job(scheduler: Scheduler, row: ScheduleBase, runs: int) -> Any:
    job = scheduler._create_job(
        row.callable,
        args=row.args,
        kwargs=row.kwargs,
        commit=False,
        result_ttl=row.result_ttl,
        ttl=row.ttl,
        id=row.template_id,
        description=row.description or None,
        queue_name=row.queue,
        timeout=row.timeout,
        at_front=row.at_front,
    )
    meta, ours = _scheduling_meta(row, runs)
    job.meta.update(meta)
    job.meta[keys.META_KEY] = ours
    return job


# -- syncing ----------------------------------------------------------------------------------------------------


def sync_rows(model: type[ScheduleBase], pks: Iterable[Any], *, using: str = 'default') -> SyncReport:
    """Brings Redis in line with these rows (by primary key); rows that no longer exist lose their template."""
    report = SyncReport()
    servers = _servers()
    for chunk in _chunks(list(pks), BATCH):
        rows = list(model._base_manager.using(using).filter(pk__in=chunk))
        missing = set(chunk) - {row.pk for row in rows}
        report.merge(_sync_chunk(model, rows, missing, servers, using=using))
    return report


def _sync_chunk(
    model: type[ScheduleBase], rows: list[ScheduleBase], missing: set[Any], servers: _Servers, *, using: str
) -> SyncReport:
    report = SyncReport()
    missing_ids = [keys.template_id(model._meta.model_name, pk) for pk in missing]
    changed: list[ScheduleBase] = []
    for identity, scheduler in servers.schedulers.items():
        # A row lives on its queue's server; any other server loses its template (e.g. after a queue change).
        here = [row for row in rows if servers.queue_home.get(row.queue) == identity]
        elsewhere = [row.template_id for row in rows if servers.queue_home.get(row.queue) != identity]
        report.merge(_sync_server(scheduler, here, elsewhere + missing_ids, changed))
    unknown = [row.name for row in rows if row.queue not in servers.queue_home]
    if unknown:
        logger.warning('Not scheduled, their queue is not in RQ_QUEUES: %s', ', '.join(unknown))
    _store_next_runs(model, changed, using=using)
    return report


def _store_next_runs(model: type[ScheduleBase], rows: list[ScheduleBase], *, using: str) -> None:
    """One UPDATE per distinct next run (rows created together often share it), not a CASE per row."""
    by_value: dict[datetime | None, list[Any]] = defaultdict(list)
    for row in rows:
        by_value[row.next_run].append(row.pk)
    for next_run, pks in by_value.items():
        # A plain QuerySet: the models' own update() would sync these rows once more.
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
    scheduler: Scheduler, rows: list[ScheduleBase], strangers: list[str], changed: list[ScheduleBase]
) -> SyncReport:
    """Syncs rows in compare-and-set writes; ids that changed under a write are read and decided again."""
    report = SyncReport()
    pending_rows, pending_strangers = rows, strangers
    for _ in range(SYNC_ATTEMPTS):
        if not pending_rows and not pending_strangers:
            return report
        pending_rows, pending_strangers = _sync_attempt(scheduler, pending_rows, pending_strangers, changed, report)
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
) -> tuple[list[ScheduleBase], list[str]]:
    """One read, one decision per id, one pipelined write; returns the rows and ids whose write found a change."""
    stored = _read_templates(scheduler, [row.template_id for row in rows] + strangers)
    now = datetime.now(tz=UTC)
    decisions: list[tuple[ScheduleBase | None, _Decision]] = []
    for row, state in zip(rows, stored):
        try:
            decisions.append((row, _decide(scheduler, row, state, now)))
        except Exception:
            # One bad row (e.g. changed by raw SQL into something no rule expects) must not stop the others.
            logger.exception('Cannot sync %s (%s); its template is left as it is', row.name, row.template_id)
            report.failed.append(row.template_id)
    for template_id, state in zip(strangers, stored[len(rows) :]):
        if state.version is not None or state.score is not None:
            decisions.append((None, _Decision(template_id, state, 'R', argv=[''])))
    results = _apply_decisions(scheduler, [decision for _, decision in decisions])
    conflicted_rows, conflicted_strangers = [], []
    for (row, decision), result in zip(decisions, results):
        if result == 0:
            (conflicted_rows.append(row) if row is not None else conflicted_strangers.append(decision.template_id))
        elif isinstance(result, REDIS_OUTAGE_ERRORS):
            raise result  # Redis is away or refuses writes: the whole sync is for reconciliation to redo
        elif isinstance(result, Exception):
            logger.error('Cannot sync %s: %s', decision.template_id, result)
            report.failed.append(decision.template_id)
        else:
            _report(decision, report)
            if row is not None and decision.next_run != row.next_run:
                row.next_run = decision.next_run
                changed.append(row)
    return conflicted_rows, conflicted_strangers


def _report(decision: _Decision, report: SyncReport) -> None:
    if decision.action == 'W':
        report.written.append(decision.template_id)
    elif decision.action == 'R':
        report.removed.append(decision.template_id)
    else:
        report.unchanged += 1


def _read_templates(scheduler: Scheduler, ids: list[str]) -> list[_Stored]:
    """Stored versions, scores and run counts of these ids, in one round trip."""
    if not ids:
        return []
    with scheduler.connection.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.VERSIONS_KEY, ids)
        for template_id in ids:
            pipe.zscore(keys.SCHEDULED_JOBS_KEY, template_id)
            pipe.hget(keys.job_key(template_id), 'meta')
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


def _decide(scheduler: Scheduler, row: ScheduleBase, stored: _Stored, now: datetime) -> _Decision:
    """What makes Redis match ``row``: nothing, a fresh template, or no template (keeping a done marker)."""
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
    if stored.version == row.version() and stored.score is not None:
        return _Decision(template_id, stored, '', next_run=datetime.fromtimestamp(stored.score, tz=UTC))
    problem = _row_problem(row)  # only rows about to be written: a written row was valid when it was written
    if problem:
        logger.error('Not scheduling %s: %s', row.name, problem)
        return remove
    runs = max(row.run_count, _runs_in(scheduler, stored.raw_meta), (stored.done or ('', 0))[1] or 0)
    due = first_due(row, now)
    if stored.score is not None and stored.score <= now.timestamp() and not isinstance(row, ScheduledJob):
        # The template is due and not moved yet (the loop is a few ms behind, or down): editing the row must not
        # skip that run. It runs with the new definition; the slots after it follow the new one.
        due = datetime.fromtimestamp(stored.score, tz=UTC)
    if due is None or _is_exhausted(row, runs):
        return remove
    argv = [row.version(), format_score(due.timestamp()), *_template_fields(scheduler, row, runs)]
    return _Decision(template_id, stored, 'W', next_run=due, argv=argv)


def _ran_its_last_run(row: ScheduleBase, stored: _Stored) -> bool:
    """Whether the done marker in Redis ends this row: no edit may run again what has already run.

    A one-off never runs twice, whatever was edited. A periodic schedule that finished starts again only when its
    definition changed and leaves it runs to make (e.g. a larger ``repeat``), from its next slot on.
    """
    digest, runs = stored.done or ('', None)
    if isinstance(row, ScheduledJob) or digest == row.version():
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


def _runs_in(scheduler: Scheduler, raw_meta: Any) -> int:
    if not isinstance(raw_meta, bytes):
        return 0
    try:
        runs = payloads.read_meta(raw_meta, scheduler.serializer).get(keys.META_KEY, {}).get('runs', 0)
    except Exception:
        return 0
    return runs if isinstance(runs, int) and not isinstance(runs, bool) and runs >= 0 else 0


def _is_exhausted(row: ScheduleBase, runs: int) -> bool:
    repeat = getattr(row, 'repeat', None)
    return repeat is not None and runs >= repeat


def _template_fields(scheduler: Scheduler, row: ScheduleBase, runs: int) -> list[Any]:
    """The template's job hash as a flat field, value list."""
    mapping = _template_job(scheduler, row, runs).to_dict()
    return [item for pair in mapping.items() for item in pair]


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


# -- reconciliation ---------------------------------------------------------------------------------------------


def reconcile(*, using: str = 'default', connection: Any = None) -> SyncReport:
    """Repairs drift between every row and Redis (flushed Redis, raw SQL, lost signals), cheaply.

    Rows whose stored version matches and whose template is scheduled cost one pipelined read per batch.
    Templates of rows that no longer exist are removed; schedule entries no row owns are never touched. A row that
    cannot be loaded or synced is logged and skipped: it never keeps the others from being reconciled.
    """
    report = SyncReport()
    servers = _servers()
    if connection is not None:
        servers = _only(servers, connection_identity(connection))
    for model in SCHEDULE_MODELS:
        pks = list(model._base_manager.using(using).values_list('pk', flat=True))
        for chunk in _chunks(pks, BATCH):
            rows = _load_rows(model, chunk, using=using, report=report)
            report.merge(_sync_chunk(model, rows, set(), servers, using=using))
    report.merge(_remove_orphans(servers, using=using))
    if report.written or report.removed or report.failed:
        logger.info(
            'Reconciled: %d written, %d removed, %d failed',
            len(report.written), len(report.removed), len(report.failed),
        )  # fmt: skip
    return report


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
            report.failed.append(keys.template_id(model._meta.model_name, pk))
    return rows


def _only(servers: _Servers, identity: tuple[Any, ...]) -> _Servers:
    """The same servers, reduced to one: rows of other servers are left to those servers' loops."""
    return _Servers({key: value for key, value in servers.schedulers.items() if key == identity}, servers.queue_home)


def _remove_orphans(servers: _Servers, *, using: str) -> SyncReport:
    """Removes the templates of rows that no longer exist (compare-and-set, like every sync write)."""
    report = SyncReport()
    for scheduler in servers.schedulers.values():
        orphans: list[str] = []
        for model, pks in _owned_templates(scheduler).items():
            existing = {
                str(pk) for pk in model._base_manager.using(using).filter(pk__in=pks).values_list('pk', flat=True)
            }
            orphans += [keys.template_id(model._meta.model_name, pk) for pk in map(str, pks) if pk not in existing]
        if orphans:
            report.merge(_sync_server(scheduler, [], orphans, []))
    return report


def _owned_templates(scheduler: Scheduler) -> dict[type[ScheduleBase], list[Any]]:
    """The primary keys, per model, of the rows that the versions hash names."""
    models_by_name = {model._meta.model_name: model for model in SCHEDULE_MODELS}
    owned: dict[type[ScheduleBase], list[Any]] = defaultdict(list)
    for raw in scheduler.connection.hkeys(keys.VERSIONS_KEY):
        owner = keys.template_owner(raw.decode(errors='replace'))
        model = models_by_name.get(owner[0]) if owner else None
        if owner and model is not None:
            try:
                owned[model].append(model._meta.pk.to_python(owner[1]))
            except ValidationError:
                continue  # not a key of ours: leave it alone
    return owned


# -- run feedback -----------------------------------------------------------------------------------------------


def apply_feedback(connection: Any, *, using: str = 'default') -> int:
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


def _parse_record(raw: bytes) -> tuple[type[ScheduleBase], Any, dict[str, Any]] | None:
    """The row and the fields a run record sets, or None (logged) for a record no row can take."""
    try:
        record = json.loads(raw)
        label, _, pk = record['owner'].rpartition(':')
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
    if model is ScheduledJob and record.get('job'):
        fields['has_run'] = True
    return fields


def _record_time(epoch: Any) -> datetime | None:
    if epoch is None:
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        raise ValueError(f'time: {epoch!r}')
    return datetime.fromtimestamp(epoch, tz=UTC)  # OverflowError, ValueError or OSError if out of range


# -- run now ----------------------------------------------------------------------------------------------------


def _scheduler_for(queue_name: str) -> Scheduler:
    """The cached scheduler of the queue's Redis server: its client and connection pool are reused."""
    servers = _servers()
    identity = servers.queue_home.get(queue_name)
    if identity is None:
        raise ValueError(f'queue: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(servers.queue_home)}')
    return servers.schedulers[identity]


def run_now(row: ScheduleBase) -> Any:
    """Enqueues one extra run of ``row`` at once; the next scheduled run does not move.

    The row must be saved and valid as it is in the database now (its callable allowed): ValidationError otherwise.
    """
    if row.pk is None:
        raise ValidationError('Save this schedule before running it.', code='unsaved')
    row = type(row)._base_manager.get(pk=row.pk)  # what the database holds, not what this instance was told
    row.full_clean(validate_unique=False, validate_constraints=False)
    scheduler = _scheduler_for(row.queue)
    job = _template_job(scheduler, row, row.run_count)
    job.id = keys.manual_run_id(row.template_id, round(time.time() * 1000))
    job.meta = {
        k: v for k, v in job.meta.items() if k not in ('interval', 'cron_string', 'repeat', 'use_local_timezone')
    }
    job.meta[keys.META_KEY] = {'template': row.template_id, 'run_now': True}
    queue = scheduler.get_queue_for_job(job)
    enqueued = queue.enqueue_job(job, at_front=row.at_front)
    type(row)._base_manager.filter(pk=row.pk).record_feedback(last_run=datetime.now(tz=UTC))
    return enqueued


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
