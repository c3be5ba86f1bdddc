"""How long the run history lasts: ``RUN_HISTORY_DAYS`` and ``RUN_HISTORY_PER_SCHEDULE``, pruned by the leader in
bounded batches (a schedule's summary fields are kept whatever is pruned)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from .runs import OPEN_STATUSES, Run

PRUNE_BATCH = 1000
"""Runs deleted per rule and pass: a pass stays short however much history has built up."""


class Pruner:
    """Deletes, each pass, up to PRUNE_BATCH runs older than ``days`` and up to PRUNE_BATCH runs of each schedule
    beyond its newest ``per_schedule``; 0 for either keeps no history. Only schedules with runs added since the
    last pass are counted (all of them at the first pass)."""

    def __init__(self, *, using: str = 'default') -> None:
        self.using = using
        self._seen_up_to = 0
        self._over_limit: set[tuple[int, int]] = set()

    def prune(self, *, days: int, per_schedule: int) -> int:
        runs = Run.objects.using(self.using)
        if days == 0 or per_schedule == 0:
            return _delete_oldest(runs.exclude(status__in=OPEN_STATUSES))
        deleted = _delete_oldest(runs.filter(ended_at__lt=timezone.now() - timedelta(days=days)))
        schedules, self._over_limit = self._over_limit | self._schedules_with_new_runs(), set()
        for type_id, schedule_id in schedules:
            of_schedule = runs.filter(schedule_type_id=type_id, schedule_id=schedule_id)
            boundary = of_schedule.order_by('-id').values_list('id', flat=True)[per_schedule : per_schedule + 1]
            if boundary:
                removed = _delete_oldest(of_schedule.filter(id__lte=boundary[0]))
                deleted += removed
                if removed == PRUNE_BATCH:
                    self._over_limit.add((type_id, schedule_id))  # more next pass
        return deleted

    def _schedules_with_new_runs(self) -> set[tuple[int, int]]:
        new = Run.objects.using(self.using).filter(id__gt=self._seen_up_to)
        latest = new.order_by('-id').values_list('id', flat=True).first()
        if latest is None:
            return set()
        schedules = set(new.filter(id__lte=latest).values_list('schedule_type_id', 'schedule_id').distinct())
        self._seen_up_to = latest
        return schedules


def _delete_oldest(runs: QuerySet[Run]) -> int:
    ids = list(runs.order_by('id').values_list('id', flat=True)[:PRUNE_BATCH])
    if not ids:
        return 0
    return Run.objects.using(runs.db).filter(id__in=ids).delete()[0]
