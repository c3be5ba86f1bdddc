"""Runs into the database: what the loop decided (via ``feedback``) and what the workers reported (``core.capture``)
become ``Run`` rows and each schedule's summary; the run signals follow each commit.

Every write here is idempotent: a run is found by its RQ job id, its status only moves forward (queued, running,
then one final status), and a schedule's counters move only when one of its runs reaches its final status. Writers
are serialized by the database (rows locked on PostgreSQL; SQLite's single writer taken first), so two processes
reading the same records count them once.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import F
from django.utils import timezone as django_timezone
from rq.utils import utcparse

from . import alerts, attempts, metrics
from .bulk import BulkWriter
from .core import keys, scripts
from .models import ScheduleBase
from .records import Fact, column_text, outcome_fact
from .records import decision_fact as decision_fact  # where callers found it before records.py
from .runs import (
    CANCELED,
    FAILED,
    FINISHED,
    OPEN_STATUSES,
    QUEUED,
    SKIPPED,
    STARTED,
    STOPPED,
    SUMMARY_FIELDS,
    Run,
    headline,
)
from .signals import run_failed, run_finished, run_skipped

if TYPE_CHECKING:
    from django.dispatch import Signal
    from redis import Redis

logger = logging.getLogger(__name__)

OUTCOME_BATCH = 10_000
"""Workers' records read from Redis per pass: larger batches cost fewer statements per schedule (the summaries and
the rows read are per schedule and pass: 10,000 read 10 % faster than 5,000). An outcome record holds at most 8,000
characters of error, so a batch of failures with long tracebacks holds at most 80 MB; a pass holds SQLite's writer
lock about half a second on a 2-core machine."""
UTC = timezone.utc
GONE = 'gone from Redis before it ended (expired or deleted)'
RUN_FIELDS = (
    'status', 'reason', 'queue', 'fire_time', 'enqueued_at', 'started_at', 'ended_at', 'worker', 'error', 'delay',
)  # fmt: skip
FILLED_LATER = ('fire_time', 'enqueued_at', 'started_at', 'worker', 'queue', 'delay')
SUMMARY_ROW_FIELDS = ('name', 'queue', *sorted(SUMMARY_FIELDS))
"""What a batch reads of a schedule row when nobody else will see it."""
SIGNALS: dict[str, Signal] = {
    FINISHED: run_finished,
    FAILED: run_failed,
    STOPPED: run_failed,
    SKIPPED: run_skipped,
}


def ingest_outcomes(connection: Redis, *, using: str = 'default') -> int:
    """Reads a batch of the workers' outcome records into runs; returns how many records were read.

    Records stay in Redis until their runs are written, so a database outage only delays them.
    """
    records = outcome_batch(connection)
    if not records:
        return 0
    transitions = record_facts(outcome_facts(records), using=using)
    forget_outcomes(connection, records)
    send_signals(transitions)
    return len(records)


def outcome_batch(connection: Redis) -> list[bytes]:
    """The oldest outcome records (``forget_outcomes()`` takes them out once their runs are written)."""
    return cast('list[bytes]', connection.lrange(keys.OUTCOMES_KEY, 0, OUTCOME_BATCH - 1))


def outcome_facts(records: Iterable[bytes | str]) -> list[Fact]:
    return [fact for fact in map(outcome_fact, records) if fact is not None]


def forget_outcomes(connection: Redis, records: Sequence[bytes]) -> None:
    if records:  # unless another reader took them first: each record counts once anyway
        connection.eval(scripts.TRIM_IF_HEAD, 1, keys.OUTCOMES_KEY, records[0], len(records))


# -- writing runs ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunRow:
    """A run as this module reads and writes it: plain attributes, cheaper than a model instance by an order of
    magnitude; ``as_run()`` makes the ``Run`` that signal receivers get."""

    pk: int | None
    rq_job_id: str
    schedule_type_id: int
    schedule_id: Any
    schedule_name: str
    trigger: str
    status: str
    reason: str
    queue: str
    fire_time: datetime | None
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    worker: str
    error: str
    delay: float | None
    attempts: int | None

    @property
    def error_headline(self) -> str:
        return headline(self.error)

    def as_run(self) -> Run:
        return Run(id=self.pk, **{name: getattr(self, name) for name in STORED_FIELDS})


STORED_FIELDS = ('rq_job_id', 'schedule_type_id', 'schedule_id', 'schedule_name', 'trigger', *RUN_FIELDS, 'attempts')


@dataclass(slots=True)
class Transition:
    """A run that reached ``status`` (its first record, or a step forward)."""

    row: ScheduleBase
    run: RunRow
    status: str
    alert: alerts.StateChange | None = None


def record_facts(facts: Sequence[Fact], *, using: str = 'default') -> list[Transition]:
    """Writes what ``facts`` say into runs and summaries, in one transaction; returns the status changes made."""
    if not facts:
        return []
    with transaction.atomic(using=using):
        _take_the_writers_turn(using)
        runs = _read_runs({fact.job_id for fact in facts}, using)
        rows = _schedule_rows(facts, using)
        created: dict[str, RunRow] = {}
        changed: dict[str, tuple[RunRow, set[str]]] = {}
        kinds: dict[type[ScheduleBase], int] = {}
        transitions: list[Transition] = []
        for fact in facts:
            row = rows.get((fact.model, fact.pk))
            if row is None:
                continue  # the schedule is gone, and its runs with it
            run = runs.get(fact.job_id)
            if run is None:
                kind = kinds.get(fact.model) or kinds.setdefault(fact.model, _content_type_id(fact.model))
                run = runs[fact.job_id] = created[fact.job_id] = _new_run(fact, row, kind)
                transitions.append(Transition(row, run, run.status))
                continue
            dirty, moved = _merge(run, fact)
            if dirty and fact.job_id not in created:
                changed.setdefault(fact.job_id, (run, set()))[1].update(dirty)
            if moved:
                transitions.append(Transition(row, run, run.status))
        writer = BulkWriter(using)
        writer.insert_keyed(Run, list(created.values()), STORED_FIELDS, key='rq_job_id')
        for names, runs_changed in _by_changed_fields(changed.values()).items():
            writer.update(Run, runs_changed, names)
        alerts.mark_state_changes(transitions)
        _write_summaries(transitions, writer)
    return transitions


def _take_the_writers_turn(using: str) -> None:
    # SQLite lets two transactions read, then makes the second writer wait or fail: both would count the same
    # runs. Writing first takes its single writer's lock for the whole transaction (PostgreSQL locks rows instead).
    Run.objects.using(using).filter(pk=-1).update(status=F('status'))


def _read_runs(job_ids: set[str], using: str) -> dict[str, RunRow]:
    found = BulkWriter(using).read(
        Run, ('id', *STORED_FIELDS), where='rq_job_id', values=sorted(job_ids), for_update=True
    )
    return {run.rq_job_id: run for run in (RunRow(*values) for values in found)}


def _schedule_rows(facts: Iterable[Fact], using: str) -> dict[tuple[type[ScheduleBase], Any], ScheduleBase]:
    wanted: dict[type[ScheduleBase], set[Any]] = {}
    for fact in facts:
        wanted.setdefault(fact.model, set()).add(fact.pk)
    rows = {}
    for model, pks in wanted.items():
        found: Iterable[ScheduleBase]
        if any(signal.has_listeners(model) for signal in SIGNALS.values()) or alerts.wants_whole_rows(model):
            found = model._base_manager.using(using).select_for_update().filter(pk__in=pks)  # receivers get whole rows
        else:
            found = BulkWriter(using).read_rows(model, SUMMARY_ROW_FIELDS, sorted(pks), for_update=True)
        for row in found:
            rows[model, row.pk] = row
    return rows


def _content_type_id(model: type[ScheduleBase]) -> int:
    return cast(int, ContentType.objects.get_for_model(model).pk)  # cached by Django


def _new_run(fact: Fact, row: ScheduleBase, kind: int) -> RunRow:
    return RunRow(
        None, fact.job_id, kind, row.pk, row.name, fact.trigger, fact.status, fact.reason, fact.queue or row.queue,
        fact.fire_time, fact.enqueued_at, fact.started_at, fact.ended_at, fact.worker, fact.error, fact.delay,
        fact.attempts,
    )  # fmt: skip


RANKS = {QUEUED: 0, STARTED: 1}
RUN_VALUES, FILLED_LATER_VALUES = operator.attrgetter(*RUN_FIELDS), operator.attrgetter(*FILLED_LATER)


def _rank(status: str) -> int:
    return RANKS.get(status, 2)


def _merge(run: RunRow, fact: Fact) -> tuple[set[str], bool]:
    """Completes ``run`` with ``fact``; returns the fields it changed, and whether its status moved forward."""
    if fact.retrying:
        return attempts.merge_retry(run, fact), False
    if attempts.is_same_start(run, fact):
        return set(), False
    changed = attempts.merge_count(run, fact, RANKS)
    final = fact.status not in OPEN_STATUSES
    moved = _rank(fact.status) > _rank(run.status) or (final and fact.reported and run.reason == GONE)
    overwrite = moved or (final and fact.reported and fact.status == run.status)
    # The worker's own report wins over what the leader inferred of the same end; otherwise only gaps are filled.
    # A worker's report of the end says all there is of it: no reason nor error left from an attempt retried.
    cleared = ('reason', 'error') if overwrite and final and fact.reported else ()
    names, values = (RUN_FIELDS, RUN_VALUES) if overwrite else (FILLED_LATER, FILLED_LATER_VALUES)
    for name, value, current in zip(names, values(fact), values(run)):
        if (value is None or value == '') and name not in cleared:
            continue
        if value == current if overwrite else current is not None and current != '':
            continue
        setattr(run, name, value)
        changed.add(name)
    return changed, moved


def _by_changed_fields(changed: Iterable[tuple[RunRow, set[str]]]) -> dict[tuple[str, ...], list[RunRow]]:
    """The runs to write, grouped by the fields they changed: one statement per group writes only those."""
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    for run, names in changed:
        groups.setdefault(tuple(sorted(names)), []).append(run)
    return groups


# -- summaries and signals -------------------------------------------------------------------------------------


def _write_summaries(transitions: Sequence[Transition], writer: BulkWriter) -> None:
    touched: dict[int, ScheduleBase] = {}  # by id(): a batch holds one instance per row
    for transition in _summarized(transitions):
        transition.row.remember(transition.run, transition.status)
        touched[id(transition.row)] = transition.row
    by_model: dict[type[ScheduleBase], list[ScheduleBase]] = {}
    for row in touched.values():
        by_model.setdefault(type(row), []).append(row)
    for model, rows in by_model.items():
        writer.update(model, rows, SUMMARY_FIELDS)


def _summarized(transitions: Sequence[Transition]) -> list[Transition]:
    """The transitions a summary takes: an open step (queued, started) of a run that moved on within the batch is
    left out. It counts nothing, and the run's later step overwrites all it would write (the row's last status,
    the run's entry among the recent runs), so the summary comes out the same."""
    last = {id(transition.run): index for index, transition in enumerate(transitions)}
    return [
        transition
        for index, transition in enumerate(transitions)
        if transition.status not in OPEN_STATUSES or last[id(transition.run)] == index
    ]


def send_signals(transitions: Iterable[Transition]) -> None:
    """``run_finished``, ``run_failed`` and ``run_skipped`` for the runs that reached them; a receiver that raises
    is logged and stops nothing."""
    for transition in transitions:
        metrics.run_reached(transition.status)
        signal = SIGNALS.get(transition.status)
        if signal is None or not signal.receivers or not signal.has_listeners(type(transition.row)):
            continue
        run = transition.run.as_run()
        for receiver, result in signal.send_robust(sender=type(transition.row), schedule=transition.row, run=run):
            if isinstance(result, Exception):
                logger.error('A receiver of a run signal (%r) raised for %s', receiver, run, exc_info=result)
    alerts.announce(transitions)


# -- runs nobody reported on -----------------------------------------------------------------------------------

SWEEP_BATCH = 500
RQ_FINAL_STATUSES = {
    b'finished': FINISHED,
    b'failed': FAILED,
    b'stopped': STOPPED,
    b'canceled': CANCELED,
}


def sweep_open_runs(connection: Redis, queues: Collection[str], *, using: str = 'default') -> set[str]:
    """Looks up, in one round trip, the oldest runs on ``queues`` still queued or running: marks those a worker
    started, and those that ended without a report (a job deleted or expired, a worker that could not import this
    package). Returns the queues with runs still running."""
    runs = list(
        Run.objects.using(using).filter(status__in=OPEN_STATUSES, queue__in=list(queues)).order_by('id')[:SWEEP_BATCH]
    )
    if not runs:
        return set()
    with connection.pipeline(transaction=False) as pipe:
        for run in runs:
            pipe.hmget(keys.job_key(run.rq_job_id), 'status', 'started_at', 'worker_name')
        states = pipe.execute(raise_on_error=False)
    facts = [fact for fact in (_observed(run, state) for run, state in zip(runs, states)) if fact is not None]
    send_signals(record_facts(facts, using=using))
    return {fact.queue for fact in facts if fact.status == STARTED}


def _observed(run: Run, state: list[bytes | None] | Exception) -> Fact | None:
    model = ContentType.objects.get_for_id(run.schedule_type_id).model_class()  # cached by Django
    fact = Fact(run.rq_job_id, cast('type[ScheduleBase]', model), run.schedule_id, '', queue=run.queue)
    if isinstance(state, Exception):  # something else was written at the job's key: no worker can run it
        fact.status, fact.reason, fact.ended_at = CANCELED, f'job key unreadable: {state}'[:255], django_timezone.now()
        return fact
    status, started_at, worker = state
    if status is None:
        fact.status, fact.reason, fact.ended_at = CANCELED, GONE, django_timezone.now()
    elif status == b'started':
        fact.status, fact.started_at, fact.worker = STARTED, _rq_time(started_at), _decoded(worker)
    elif status in RQ_FINAL_STATUSES:
        fact.status, fact.ended_at = RQ_FINAL_STATUSES[status], django_timezone.now()
    else:
        return None
    return fact


def _rq_time(value: bytes | None) -> datetime | None:
    try:
        return utcparse(value.decode()).replace(tzinfo=UTC) if value else None
    except (ValueError, UnicodeDecodeError):
        return None


def _decoded(value: bytes | None) -> str:
    return column_text(value.decode(errors='replace')) if value else ''
