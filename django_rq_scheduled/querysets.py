"""The schedules' QuerySet: ORM helpers for views, and bulk paths that validate and sync what they touch."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from . import validators
from .bulk_validation import validate_rows
from .pending import note_validated, schedule_sync
from .runs import SUMMARY_FIELDS

LOOP_FIELDS = frozenset({'next_run', 'last_run', 'run_count', 'has_run'}) | SUMMARY_FIELDS
"""Written by the loop and sync alone: user saves and updates never touch them."""
FEEDBACK_FIELDS = LOOP_FIELDS | {'modified'}
# Fields no rule can reject once their own type is right: updating only these skips the per-row full_clean().
SELF_VALIDATING_FIELDS = FEEDBACK_FIELDS | {'enabled', 'at_front'}


def _refuse_loop_fields(names: Iterable[str]) -> None:
    owned = sorted(set(names) & LOOP_FIELDS)
    if owned:
        raise ValueError(
            f'{", ".join(owned)}: written by the scheduler loop only (a run that happened cannot be undone by an '
            'update); use record_feedback() if you really mean to'
        )


class ScheduleQuerySet(models.QuerySet[Any]):
    def get_by_natural_key(self, name: str) -> Any:
        if isinstance(name, str) and validators.text_problem(name):
            # No row holds such a name, and the database would fail on the question (loaddata asks it first).
            raise self.model.DoesNotExist(f'no {self.model.__name__} can be named {name!r}')
        return self.get(name=name)

    def enabled(self) -> ScheduleQuerySet:
        return self.filter(enabled=True)

    def failing(self) -> ScheduleQuerySet:
        """Enabled rows whose last run failed (the health check's warning, the change lists' banner)."""
        return self.filter(enabled=True, consecutive_failures__gt=0)

    def due_before(self, moment: datetime) -> ScheduleQuerySet:
        """Enabled schedules whose next run is at or before ``moment``."""
        return self.enabled().filter(next_run__lte=moment)

    def enable(self) -> int:
        return self.update(enabled=True)

    def disable(self) -> int:
        return self.update(enabled=False)

    def update(self, **kwargs: Any) -> int:
        """Updates, validates every touched row (all or nothing), and syncs them to Redis after commit."""
        _refuse_loop_fields(kwargs)
        self._validate_values(kwargs)
        # As save() does (auto_now): the leader's reconciliation finds the rows whose sync failed by this field.
        kwargs.setdefault('modified', timezone.now())
        with transaction.atomic(using=self.db):
            pks = list(self.values_list('pk', flat=True))
            count = super().update(**kwargs)
            if set(kwargs) - SELF_VALIDATING_FIELDS:
                for row in self.model._base_manager.using(self.db).filter(pk__in=pks).iterator():
                    row.full_clean(validate_unique=False, validate_constraints=False)
            schedule_sync(self.model, pks, self.db)
        return count

    def _validate_values(self, values: dict[str, Any]) -> None:
        """Field-level checks of plain values before the database sees them (expressions are checked after)."""
        errors: dict[str, list[str]] = {}
        for name, value in values.items():
            if hasattr(value, 'resolve_expression'):
                continue
            field = self.model._meta.get_field(name)
            refusal = validators.refusal(field, value)
            if refusal:
                errors[name] = [refusal]
                continue
            try:
                field.run_validators(field.to_python(value))
            except ValidationError as exc:
                errors[name] = exc.messages
        if errors:
            raise ValidationError(errors)

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        objs = list(objs)
        # The sync after commit loads these rows again; what passed validation here needs no second validation.
        note_validated(self.model, validate_rows(objs))
        with transaction.atomic(using=self.db):
            created = super().bulk_create(objs, *args, **kwargs)
            pks = [obj.pk for obj in created if obj.pk is not None]
            if len(pks) < len(created):
                names = [obj.name for obj in created]
                pks = list(self.model._base_manager.using(self.db).filter(name__in=names).values_list('pk', flat=True))
            # Conflicts may have updated existing rows instead: only plain inserts are surely new.
            plain = not kwargs.get('update_conflicts') and not kwargs.get('ignore_conflicts')
            schedule_sync(self.model, pks, self.db, created=plain)
        return created

    def bulk_update(self, objs: Iterable[Any], fields: Iterable[str], *args: Any, **kwargs: Any) -> int:
        fields = list(fields)
        _refuse_loop_fields(fields)
        objs = list(objs)
        for obj in objs:
            obj.full_clean(validate_unique=False, validate_constraints=False)
        if 'modified' not in fields:  # as in update()
            now = timezone.now()
            for obj in objs:
                obj.modified = now
            fields.append('modified')
        with transaction.atomic(using=self.db):
            count = super().bulk_update(objs, fields, *args, **kwargs)
            schedule_sync(self.model, [obj.pk for obj in objs], self.db)
        return count

    def record_feedback(self, **fields: Any) -> int:
        """Writes run feedback without validation, signals or sync: only the loop's own fields change."""
        if set(fields) - FEEDBACK_FIELDS:
            raise ValueError(f'record_feedback: only {sorted(FEEDBACK_FIELDS)} may be written')
        return models.QuerySet.update(self, **fields)
