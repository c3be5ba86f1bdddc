"""Backfill: each slot of a past range of a periodic schedule run once, as the loop would have run it.

A slot's run has the occurrence id of its slot, so a slot that already ran (its ``Run`` row, or its job hash in
Redis) is never run again: the existence check and the enqueue are one Lua call (``scripts.ENQUEUE_ONCE``), so two
backfills at once still run each slot once. A slot recorded as skipped (downtime, catch-up, misfire grace) did not
run: backfilling it runs it, and its ``Run`` row is reopened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from django.utils import timezone as django_timezone
from rq.utils import utcformat

from . import history
from .core import capture, cron, keys, limits
from .core.catchup import HALF_MS, IntervalSlots
from .core.scores import utc_datetime
from .models import CronJob, PeriodicSchedule, RepeatableJob, ScheduleBase
from .runs import QUEUED, SKIPPED, Run
from .servers import servers, template_job

if TYPE_CHECKING:
    from redis import Redis

REOPENED = 'backfilled'
ENQUEUED, WOULD_ENQUEUE, RAN = 'enqueued', 'would enqueue', 'already ran'


class BackfillError(ValueError):
    """A backfill that must not run as asked; the message says why."""


@dataclass(frozen=True)
class SlotResult:
    fire_time: float
    job_id: str
    done: str
    """ENQUEUED, WOULD_ENQUEUE (a dry run) or RAN."""


def slots_between(
    row: ScheduleBase, start: datetime, end: datetime, *, at_most: int = limits.MAX_BACKFILL_SLOTS
) -> list[float]:
    """The slots of ``row`` from ``start`` to ``end`` (both included, within its window of validity), oldest first."""
    if not isinstance(row, PeriodicSchedule):
        raise BackfillError(f'{row.name!r} is a one-off schedule: it has no slots to backfill.')
    if end > django_timezone.now():
        raise BackfillError('--to is in the future: a backfill runs past slots only (the loop runs the others).')
    if start >= end:
        raise BackfillError('--from must be before --to.')
    start, end = max(start, row.valid_from or start), min(end, row.valid_until or end)
    following = _following(row)
    slots: list[float] = []
    moment = start.timestamp() - HALF_MS
    while (upcoming := following(moment)) is not None and upcoming <= end.timestamp():
        slots.append(upcoming)
        if len(slots) > at_most:
            raise BackfillError(f'More than {at_most:,} slots in the range: narrow it, or allow more with --max.')
        moment = upcoming
    return slots


def _following(row: PeriodicSchedule) -> Callable[[float], float | None]:
    """The first slot of ``row`` strictly after a moment."""
    if isinstance(row, RepeatableJob):
        return IntervalSlots(row.scheduled_time.timestamp(), row.interval_seconds).after
    assert isinstance(row, CronJob)

    def after(moment: float) -> float | None:
        upcoming = cron.next_fire_time(row.cron_string, utc_datetime(moment), row.timezone)
        return upcoming.timestamp() if upcoming else None

    return after


def backfill(row: ScheduleBase, slots: list[float], *, dry_run: bool = False) -> list[SlotResult]:
    """Runs each slot once (see the module); a dry run writes nothing. ValidationError if the row may not run."""
    row.full_clean(validate_unique=False, validate_constraints=False)  # e.g. a callable no longer allowed
    scheduler = servers().scheduler_for(row.queue)
    job_ids = [keys.occurrence_id(row.template_id, round(slot * 1000)) for slot in slots]
    recorded = _recorded_statuses(job_ids)
    if dry_run:
        ran = _existing(scheduler.connection, job_ids) | {i for i, status in recorded.items() if status != SKIPPED}
        return [SlotResult(slot, i, RAN if i in ran else WOULD_ENQUEUE) for slot, i in zip(slots, job_ids)]
    template = template_job(scheduler, row, row.run_count)
    queue_key = scheduler.get_queue_for_job(template).key
    now = datetime.now(tz=timezone.utc)
    results: list[SlotResult] = []
    facts: list[history.Fact] = []
    for slot, job_id in zip(slots, job_ids):
        if recorded.get(job_id, SKIPPED) != SKIPPED:
            results.append(SlotResult(slot, job_id, RAN))
            continue
        run = scheduler.jobs.slot_run(template, slot, **capture.callbacks())
        if not scheduler.jobs.enqueue_once(run, queue_key, utcformat(now)):
            results.append(SlotResult(slot, job_id, RAN))
            continue
        results.append(SlotResult(slot, job_id, ENQUEUED))
        fire_time = utc_datetime(slot)
        facts.append(
            history.Fact(job_id, type(row), row.pk, QUEUED, queue=row.queue, fire_time=fire_time, enqueued_at=now)
        )
    _record(facts)
    return results


def _recorded_statuses(job_ids: list[str]) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        statuses.update(Run.objects.filter(rq_job_id__in=chunk).values_list('rq_job_id', 'status'))
    return statuses


def _existing(connection: Redis, job_ids: list[str]) -> set[str]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(keys.job_key(job_id))
        return {job_id for job_id, found in zip(job_ids, pipe.execute()) if found}


def _record(facts: list[history.Fact]) -> None:
    """The runs of the enqueued slots; a slot recorded as skipped is reopened first (a run's status only moves
    forward, so the skipped row would otherwise stay skipped)."""
    if not facts:
        return
    job_ids = [fact.job_id for fact in facts]
    for start in range(0, len(job_ids), 500):
        Run.objects.filter(rq_job_id__in=job_ids[start : start + 500], status=SKIPPED).update(
            status=QUEUED, reason=REOPENED, ended_at=None
        )
    history.send_signals(history.record_facts(facts))
