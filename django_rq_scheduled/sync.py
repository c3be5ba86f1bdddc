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
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.db import models, transaction
from django.utils import timezone as django_timezone

from . import cron, keys, scripts
from .conf import LATEST_SCHEDULE_TIME, callable_allowed
from .models import SCHEDULE_MODELS, CronJob, RepeatableJob, ScheduleBase, ScheduledJob
from .planner import format_score
from .scheduler import Scheduler, connection_identity

logger = logging.getLogger(__name__)

BATCH = 500
FEEDBACK_BATCH = 1000
UTC = timezone.utc
TEMPLATE_PREFIX = 'drqs-'


@dataclass
class SyncReport:
    """What a sync or a reconciliation changed in Redis."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def merge(self, other: SyncReport) -> None:
        self.written += other.written
        self.removed += other.removed
        self.unchanged += other.unchanged


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
    missing_ids = [f'{TEMPLATE_PREFIX}{model._meta.model_name}-{pk}' for pk in missing]
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


def _sync_server(
    scheduler: Scheduler, rows: list[ScheduleBase], strangers: list[str], changed: list[ScheduleBase]
) -> SyncReport:
    report = SyncReport()
    ids = [row.template_id for row in rows] + strangers
    if not ids:
        return report
    versions, scores, metas = _read_templates(scheduler, ids)
    now = datetime.now(tz=UTC)
    with scheduler.connection.pipeline() as pipe:
        for row, version, score, raw_meta in zip(rows, versions, scores, metas):
            next_run = _sync_row(pipe, scheduler, row, version, score, raw_meta, now, report)
            if next_run != row.next_run:
                row.next_run = next_run
                changed.append(row)
        for template_id, version, score in zip(strangers, versions[len(rows) :], scores[len(rows) :]):
            if version is not None or score is not None:
                _remove(pipe, template_id, keep_done=False)
                report.removed.append(template_id)
        pipe.execute()
    return report


def _read_templates(scheduler: Scheduler, ids: list[str]) -> tuple[list[Any], list[Any], list[Any]]:
    """Stored versions, scores and template metas of these ids, in one round trip."""
    with scheduler.connection.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.VERSIONS_KEY, ids)
        for template_id in ids:
            pipe.zscore(keys.SCHEDULED_JOBS_KEY, template_id)
            pipe.hget(keys.job_key(template_id), 'meta')
        replies = pipe.execute()
    return replies[0], replies[1::2], replies[2::2]


def _sync_row(
    pipe: Any,
    scheduler: Scheduler,
    row: ScheduleBase,
    version: bytes | None,
    score: float | None,
    raw_meta: bytes | None,
    now: datetime,
    report: SyncReport,
) -> datetime | None:
    """Queues the writes that make Redis match ``row``; returns the row's next run."""
    stored = version.decode() if version else None
    finished_in_redis = score is None and (stored or '').startswith('done:')
    if finished_in_redis and (row.is_finished or stored == f'done:{row.version()}'):
        report.unchanged += 1  # ran its last run; nothing left in Redis to remove
        return None
    if not row.enabled or row.is_finished or not callable_allowed(row.callable):
        if row.enabled and not row.is_finished:
            # Written behind the models' back (raw SQL, or a row older than the setting): never scheduled.
            logger.error('Not scheduling %s: %s is not in ALLOWED_CALLABLES', row.name, row.callable)
        if stored or score is not None:
            _remove(pipe, row.template_id, keep_done=True)
            report.removed.append(row.template_id)
        return None
    if stored == row.version() and score is not None:
        report.unchanged += 1
        return datetime.fromtimestamp(score, tz=UTC)
    runs = max(row.run_count, _runs_in(scheduler, raw_meta))
    due = first_due(row, now)
    if score is not None and score <= now.timestamp() and not isinstance(row, ScheduledJob):
        # The template is due and not moved yet (the loop is a few ms behind, or down): editing the row must not
        # skip that run. It runs with the new definition; the slots after it follow the new one.
        due = datetime.fromtimestamp(score, tz=UTC)
    if due is None or _is_exhausted(row, runs):
        _remove(pipe, row.template_id, keep_done=True)
        report.removed.append(row.template_id)
        return None
    _write(pipe, scheduler, row, runs, due)
    report.written.append(row.template_id)
    return due


def _runs_in(scheduler: Scheduler, raw_meta: bytes | None) -> int:
    if not raw_meta:
        return 0
    try:
        return int(scheduler.serializer.loads(raw_meta).get(keys.META_KEY, {}).get('runs', 0))
    except Exception:
        return 0


def _is_exhausted(row: ScheduleBase, runs: int) -> bool:
    repeat = getattr(row, 'repeat', None)
    return repeat is not None and runs >= repeat


def _write(pipe: Any, scheduler: Scheduler, row: ScheduleBase, runs: int, due: datetime) -> None:
    job = _template_job(scheduler, row, runs)
    pipe.delete(keys.job_key(row.template_id))  # a fresh hash: no stale fields of an older definition
    job.save(pipeline=pipe)
    pipe.eval(scripts.SCHEDULE, 3, *scheduler._wakeup_keys(), row.template_id, format_score(due.timestamp()), '')
    pipe.hset(keys.VERSIONS_KEY, row.template_id, row.version())


def _remove(pipe: Any, template_id: str, *, keep_done: bool) -> None:
    pipe.zrem(keys.SCHEDULED_JOBS_KEY, template_id)
    pipe.eval(scripts.DELETE_IF_SCHEDULED, 1, keys.job_key(template_id))
    if not keep_done:
        pipe.hdel(keys.VERSIONS_KEY, template_id)
    else:
        pipe.eval(scripts.HDEL_UNLESS_DONE, 1, keys.VERSIONS_KEY, template_id)


# -- reconciliation ---------------------------------------------------------------------------------------------


def reconcile(*, using: str = 'default', connection: Any = None) -> SyncReport:
    """Repairs drift between every row and Redis (flushed Redis, raw SQL, lost signals), cheaply.

    Rows whose stored version matches and whose template is scheduled cost one pipelined read per batch.
    Templates of rows that no longer exist are removed; schedule entries no row owns are never touched.
    """
    report = SyncReport()
    servers = _servers()
    if connection is not None:
        servers = _only(servers, connection_identity(connection))
    for model in SCHEDULE_MODELS:
        pks = list(model._base_manager.using(using).values_list('pk', flat=True))
        for chunk in _chunks(pks, BATCH):
            rows = list(model._base_manager.using(using).filter(pk__in=chunk))
            report.merge(_sync_chunk(model, rows, set(), servers, using=using))
    report.merge(_remove_orphans(servers, using=using))
    if report.written or report.removed:
        logger.info('Reconciled: %d written, %d removed', len(report.written), len(report.removed))
    return report


def _only(servers: _Servers, identity: tuple[Any, ...]) -> _Servers:
    """The same servers, reduced to one: rows of other servers are left to those servers' loops."""
    return _Servers({key: value for key, value in servers.schedulers.items() if key == identity}, servers.queue_home)


def _remove_orphans(servers: _Servers, *, using: str) -> SyncReport:
    models_by_name = {model._meta.model_name: model for model in SCHEDULE_MODELS}
    report = SyncReport()
    for scheduler in servers.schedulers.values():
        owned: dict[str, list[str]] = defaultdict(list)
        for raw in scheduler.connection.hkeys(keys.VERSIONS_KEY):
            template_id = raw.decode()
            model_name, _, pk = template_id.removeprefix(TEMPLATE_PREFIX).rpartition('-')
            if template_id.startswith(TEMPLATE_PREFIX) and model_name in models_by_name:
                owned[model_name].append(pk)
        for model_name, pks in owned.items():
            model = models_by_name[model_name]
            existing = {
                str(pk) for pk in model._base_manager.using(using).filter(pk__in=pks).values_list('pk', flat=True)
            }
            orphans = [f'{TEMPLATE_PREFIX}{model_name}-{pk}' for pk in pks if pk not in existing]
            if orphans:
                with scheduler.connection.pipeline() as pipe:
                    for template_id in orphans:
                        _remove(pipe, template_id, keep_done=False)
                    pipe.execute()
                report.removed += orphans
    return report


# -- run feedback -----------------------------------------------------------------------------------------------


def apply_feedback(connection: Any, *, using: str = 'default') -> int:
    """Copies the loop's run records into their rows with ``update()``; returns how many records were read.

    Records stay in Redis until their rows are written, so a database outage only delays feedback.
    """
    records = connection.lrange(keys.RUNS_KEY, 0, FEEDBACK_BATCH - 1)
    if not records:
        return 0
    latest: dict[str, dict[str, Any]] = {}
    for raw in records:
        record = json.loads(raw)
        latest[record['owner']] = record  # records are in order: the last one per row wins
    models_by_label = {model._meta.label_lower: model for model in SCHEDULE_MODELS}
    with transaction.atomic(using=using):
        for owner, record in latest.items():
            label, _, pk = owner.rpartition(':')
            model = models_by_label.get(label)
            if model is not None:
                model._base_manager.using(using).filter(pk=pk).record_feedback(**_feedback_fields(model, record))
    connection.ltrim(keys.RUNS_KEY, len(records), -1)
    return len(records)


def _feedback_fields(model: type[ScheduleBase], record: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        'run_count': record['runs'],
        'next_run': datetime.fromtimestamp(record['next'], tz=UTC) if record.get('next') else None,
    }
    if record.get('job'):
        fields['last_run'] = datetime.fromtimestamp(record['at'], tz=UTC)
    if model is ScheduledJob and record.get('job'):
        fields['has_run'] = True
    return fields


# -- run now ----------------------------------------------------------------------------------------------------


def run_now(row: ScheduleBase) -> Any:
    """Enqueues one extra run of ``row`` at once; the next scheduled run does not move."""
    scheduler = Scheduler(queue_name=row.queue)
    job = _template_job(scheduler, row, row.run_count)
    job.id = f'{row.template_id}_now_{round(time.time() * 1000)}'
    job.meta = {
        k: v for k, v in job.meta.items() if k not in ('interval', 'cron_string', 'repeat', 'use_local_timezone')
    }
    job.meta[keys.META_KEY] = {'template': row.template_id, 'run_now': True}
    queue = scheduler.get_queue_for_job(job)
    enqueued = queue.enqueue_job(job, at_front=row.at_front)
    type(row)._base_manager.filter(pk=row.pk).record_feedback(last_run=datetime.now(tz=UTC))
    return enqueued


class DatabaseSync:
    """The loop's tick hook: run feedback into rows every tick, reconciliation every ``reconcile_interval``."""

    def __init__(self, reconcile_interval: float, *, background: bool = True) -> None:
        self.reconcile_interval = reconcile_interval
        self.background = background
        self._next_reconcile = 0.0
        self._reconciling: threading.Thread | None = None

    def __call__(self, scheduler: Scheduler) -> None:
        from django.db import close_old_connections

        close_old_connections()
        apply_feedback(scheduler.connection)
        busy = self._reconciling is not None and self._reconciling.is_alive()
        if time.monotonic() >= self._next_reconcile and not busy:
            self._next_reconcile = time.monotonic() + self.reconcile_interval
            if not self.background:
                reconcile(connection=scheduler.connection)
                return
            # In a thread of its own: with many rows it takes seconds, and the loop must keep moving due jobs.
            self._reconciling = threading.Thread(
                target=self._reconcile, args=(scheduler.connection,), name='drqs-reconcile', daemon=True
            )
            self._reconciling.start()

    @staticmethod
    def _reconcile(connection: Any) -> None:
        from django.db import connections

        try:
            reconcile(connection=connection)
        except Exception:
            logger.exception('Reconciliation failed; it is tried again at the next interval')
        finally:
            connections.close_all()

    def wait(self, timeout: float | None = None) -> None:
        """Waits for a running reconciliation (tests, shutdown)."""
        if self._reconciling is not None:
            self._reconciling.join(timeout)
