"""Schedules declared in code → rows: the diff (added, changed, removed, unchanged) and its application in one
transaction. ``manage.py schedules sync`` and the leader (when it starts leading) run it.

A row stays as the code last declared it until the code changes that schedule: its ``code_version`` holds the
declaration's digest, so a pause made in the admin (``enabled``) survives syncs of unchanged code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import transaction
from django.utils import timezone as django_timezone

from .choices import FROM_CODE
from .conf import get_setting
from .declared import OPTIONS, PERIODIC_OPTIONS, Declaration, DeclarationError, declarations, model_kind
from .models import SCHEDULE_MODELS, RepeatableJob, ScheduleBase

logger = logging.getLogger(__name__)

DECLARABLE = (
    OPTIONS
    | PERIODIC_OPTIONS
    | {'callable', 'cron_string', 'timezone', 'repeat', 'interval', 'interval_unit', 'scheduled_time'}
) - {'unit', 'start'}
"""Every row field a declaration may set; a field it leaves out goes back to the field's default."""


@dataclass
class Plan:
    """What a sync does: rows to add, to change, to take out (disable, or delete when pruning), and how many are
    as the code declares them already."""

    added: list[Declaration] = field(default_factory=list)
    changed: list[tuple[ScheduleBase, Declaration]] = field(default_factory=list)
    removed: list[ScheduleBase] = field(default_factory=list)
    unchanged: int = 0
    prune: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def lines(self) -> list[str]:
        """The diff in words, one line per row touched, then the count of rows left as they are."""
        removal = 'deleted' if self.prune else 'disabled'
        return [
            *(f'+ {item.name} ({model_kind(item.model)}, added)' for item in self.added),
            *(f'~ {item.name} ({model_kind(item.model)}, changed)' for _row, item in self.changed),
            *(f'- {row.name} ({model_kind(type(row))}, removed from code: {removal})' for row in self.removed),
            f'{self.unchanged} unchanged',
        ]


def sync_code_schedules(*, prune: bool | None = None, dry_run: bool = False, using: str = 'default') -> Plan:
    """Brings the rows in line with the schedules declared in code; returns what it did (or, with ``dry_run``,
    would do). DeclarationError, and nothing written, when a declaration is bad or takes a name in use."""
    prune = get_setting('PRUNE_CODE_SCHEDULES') if prune is None else prune
    with transaction.atomic(using=using):
        plan = _plan(declarations(), prune=bool(prune), using=using)
        if not dry_run:
            _apply(plan, using)
    return plan


def _plan(declared: dict[str, Declaration], *, prune: bool, using: str) -> Plan:
    plan = Plan(prune=prune)
    code_rows = {
        (model, row.name): row
        for model in SCHEDULE_MODELS
        for row in model.objects.using(using).select_for_update().filter(source=FROM_CODE)
    }
    for item in declared.values():
        row = code_rows.pop((item.model, item.name), None)
        if row is None:
            _refuse_a_name_in_use(item, using)
            plan.added.append(item)
        elif row.code_version != item.version:
            plan.changed.append((row, item))
        else:
            plan.unchanged += 1
    for row in code_rows.values():
        if prune or row.code_version:  # not yet taken out; a disabled row removed from code stays as it is
            plan.removed.append(row)
        else:
            plan.unchanged += 1
    return plan


def _refuse_a_name_in_use(item: Declaration, using: str) -> None:
    taken = item.model.objects.using(using).filter(name=item.name).first()
    if taken is not None:
        raise DeclarationError(
            item.name,
            f'the name is taken by a {model_kind(item.model)} made in the admin or the ORM (id {taken.pk}); rename one',
        )


def _apply(plan: Plan, using: str) -> None:
    for item in plan.added:
        row = item.model(name=item.name, source=FROM_CODE)
        _declare(row, item)
        row.save(using=using)
    for row, item in plan.changed:
        _declare(row, item)
        row.save(using=using)
    for row in plan.removed:
        if plan.prune:
            row.delete(using=using)
        else:
            row.enabled, row.code_version = False, ''
            row.save(using=using)


def _declare(row: ScheduleBase, item: Declaration) -> None:
    """Sets every declarable field of ``row`` as ``item`` says, the others to their defaults."""
    for name in DECLARABLE:
        try:
            model_field: Any = row._meta.get_field(name)
        except FieldDoesNotExist:
            continue  # a field of another kind
        if name in item.fields:
            setattr(row, name, item.fields[name])
        elif not (name == 'scheduled_time' and row.pk is not None):
            setattr(row, name, model_field.get_default())
    if isinstance(row, RepeatableJob) and row.scheduled_time is None:
        row.scheduled_time = django_timezone.now()  # no start given: the first run is due at once
    row.code_version = item.version
