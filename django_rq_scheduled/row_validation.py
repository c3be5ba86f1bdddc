"""What every schedule row checks before it is written, beyond its fields' own validators: the rules shared by
the three kinds (``ScheduleBase`` mixes this in; each kind adds its own in ``clean()``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EMPTY_VALUES
from django.utils import timezone as django_timezone
from django.utils.translation import gettext_lazy as _

from . import task_calls, validators


def whole(value: Any) -> TypeGuard[int]:
    """Whether a field holds an int: after a failed clean_fields() it may still hold what the caller gave."""
    return isinstance(value, int) and not isinstance(value, bool)


if TYPE_CHECKING:
    from django.db.models import Model as _Row
else:
    _Row = object


class RowValidation(_Row):
    """``clean_fields()`` and ``clean()`` of a schedule row (a model mixin: ``self`` is the row)."""

    name: str
    callable: Any
    args: Any
    kwargs: Any
    result_ttl: Any
    timeout: Any
    ttl: Any

    ROW_FIELDS: tuple[str, ...] = ('name',)
    """Fields that no rule of another field reads (``row_field_errors`` holds the model's rules of theirs): a
    ``bulk_create()`` validates them row by row, and the other fields once per distinct value (``bulk_validation``)."""

    def policy_errors(self) -> dict[str, Any]:
        """The errors of the row's policies (``policies``), beyond their fields' own validators."""
        return {}

    def clean_fields(self, exclude: Any = None) -> None:
        # A function object is accepted for `callable` and stored as its dotted path.
        self.callable = validators.callable_path(self.callable)
        errors: dict[str, list[str]] = {}
        for field in self._meta.concrete_fields:
            skipped = field.name in (exclude or ())
            message = None if skipped else validators.refusal(field, field.value_from_object(self))
            if message:
                errors[field.name] = [message]
        try:
            super().clean_fields(exclude={*(exclude or ()), *errors})
        except ValidationError as exc:
            errors.update(exc.message_dict)
        if errors:
            raise ValidationError(errors)

    def clean(self) -> None:
        # Runs even when clean_fields() failed: a field that failed there still holds its raw value, hence the
        # type tests. Empty arguments are checked here because Django skips the validators of an empty value,
        # and {} or '' is not an empty list of arguments; the others were checked once, by clean_fields().
        super().clean()
        errors: dict[str, Any] = {}
        for name, validate in (('args', validators.validate_args), ('kwargs', validators.validate_kwargs)):
            try:
                if getattr(self, name) in EMPTY_VALUES:
                    validate(getattr(self, name))
            except ValidationError as exc:
                errors[name] = exc.messages
        if whole(self.result_ttl) and self.result_ttl < -1:
            errors['result_ttl'] = _('Enter -1 (keep for ever), 0 or a positive number of seconds.')
        if whole(self.timeout) and self.timeout == 0:
            errors['timeout'] = _('Enter a positive number of seconds, or leave it empty.')
        if whole(self.ttl) and self.ttl == 0:
            errors['ttl'] = _('Enter a positive number of seconds, or leave it empty.')
        errors.update(self.row_field_errors())
        for name, messages in self.policy_errors().items():
            errors.setdefault(name, messages)
        for name, messages in task_calls.row_errors(self).items():
            errors.setdefault(name, messages)
        if errors:
            raise ValidationError(errors)

    def row_field_errors(self) -> dict[str, Any]:
        """The errors of the model's rules (beyond each field's own checks) on its ``ROW_FIELDS``."""
        if not self._usable('name'):
            return {}
        try:
            validators.validate_printable(self.name)
        except ValidationError as exc:
            return {'name': exc.messages}
        return {}

    def _usable(self, name: str) -> bool:
        """Whether the field passed the checks of clean_fields() that run before Django's (clean() runs anyway)."""
        return validators.refusal(self._meta.get_field(name), getattr(self, name)) is None

    def _naive_time_error(self, name: str) -> dict[str, Any]:
        return naive_time_errors(self, name)


def naive_time_errors(row: Any, *names: str) -> dict[str, Any]:
    """The fields of ``names`` that hold a time without a time zone while USE_TZ is on (Django would only warn)."""
    errors = {}
    for name in names:
        value = getattr(row, name)
        if isinstance(value, datetime) and settings.USE_TZ and django_timezone.is_naive(value):
            errors[name] = [_('Enter a time with a time zone (USE_TZ is on).')]
    return errors
