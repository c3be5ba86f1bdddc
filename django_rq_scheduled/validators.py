"""Field validators shared by the models, their forms, fixtures and bulk paths: one place for every rule."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from . import conf, cron
from .allowlist import CallableRefused


def callable_path(value: Any) -> Any:
    """A function or other importable callable becomes its dotted path; strings are left as they are."""
    if callable(value) and hasattr(value, '__module__') and hasattr(value, '__qualname__'):
        return f'{value.__module__}.{value.__qualname__}'
    return value


CALLABLE_MESSAGES = {
    'invalid': gettext_lazy('Enter a dotted path such as "myapp.tasks.send_report".'),
    'not_allowed': gettext_lazy('%(path)s is not allowed by the ALLOWED_CALLABLES setting.'),
    'not_defined_here': gettext_lazy('%(path)s is not allowed: %(error)s. Name the module that defines it.'),
    'not_importable': gettext_lazy('Cannot import %(path)s: %(error)s'),
    'not_callable': gettext_lazy('%(path)s is not callable.'),
}


def validate_callable(value: Any) -> None:
    """The allow-list's verdict (its patterns are matched before anything is imported), or an import check."""
    allow_list = conf.allow_list()
    try:
        allow_list.check(value)
        if not allow_list.restricts:
            _check_importable(value)
    except CallableRefused as exc:
        raise ValidationError(
            CALLABLE_MESSAGES[exc.code], params={'path': value, 'error': str(exc)}, code=exc.code
        ) from exc


def _check_importable(path: str) -> None:
    try:
        target = import_string(path)
    except Exception as exc:  # whatever the module raises at import time
        raise CallableRefused(repr(exc), 'not_importable') from exc
    if not callable(target):
        raise CallableRefused(f'{path} is not callable', 'not_callable')


def validate_args(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError(_('Enter a JSON list, e.g. [1, "two"].'), code='invalid')


def validate_kwargs(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError(_('Enter a JSON object, e.g. {"name": "value"}.'), code='invalid')
    bad = [key for key in value if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise ValidationError(
            _('Keyword argument names must be identifiers; not %(keys)s.'),
            params={'keys': ', '.join(repr(key) for key in bad)},
            code='invalid',
        )


def queue_names() -> list[str]:
    return list(getattr(settings, 'RQ_QUEUES', {}) or {})


def validate_queue(value: Any) -> None:
    known = queue_names()
    if value not in known:
        raise ValidationError(
            _('Unknown queue %(queue)s; RQ_QUEUES has: %(known)s.'),
            params={'queue': repr(value), 'known': ', '.join(known) or _('no queues')},
            code='unknown_queue',
        )


def validate_timezone(value: Any) -> None:
    try:
        cron.get_zone(value)
    except cron.CronError as exc:
        raise ValidationError(_('Unknown time zone %(zone)s.'), params={'zone': repr(value)}, code='invalid') from exc


def validate_cron_string(value: Any, timezone: str = 'UTC') -> None:
    try:
        cron.validate_cron_string(value, timezone)
    except cron.CronError as exc:
        message = str(exc).removeprefix('cron_string: ')
        raise ValidationError(_('Invalid cron string: %(error)s'), params={'error': message}, code='invalid') from exc


def wrong_type(field: Any, value: Any) -> str | None:
    """Why ``value`` cannot be given to ``field`` at all, for values Django would coerce silently or crash on.

    Django turns ``1.5`` into 1 and ``True`` into 1 in an integer field, any object into its ``str()`` in a text
    field, and raises TypeError or OverflowError (not a ValidationError) for ``inf`` in an integer field or a
    number in a date field. Non-empty strings are left to Django: forms and fixtures send them.
    """
    if not field.editable or field.primary_key:
        return None  # set by the model or the database, not by callers
    if value is None:
        # Django skips every check of a blank field given None, and the database then refuses it.
        return _('This field cannot be null.') if field.blank and not field.null else None
    if isinstance(field, models.BooleanField):
        return None
    if isinstance(value, str):
        # Django skips every check of a blank field given '', and the database then refuses it (or worse).
        empty_allowed = isinstance(field, models.CharField)
        return None if value.strip() or empty_allowed else _('This field cannot be an empty string.')
    if isinstance(field, models.IntegerField):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            return _('Enter a whole number.')
    elif isinstance(field, models.DateTimeField):
        if not isinstance(value, datetime):
            return _('Enter a date and time.')
    elif isinstance(field, models.CharField):
        return _('Enter text.')
    return None
