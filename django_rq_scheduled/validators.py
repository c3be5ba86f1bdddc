"""Field validators shared by the models, their forms, fixtures and bulk paths: one place for every rule."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from . import cron
from .conf import callable_allowed


def callable_path(value: Any) -> Any:
    """A function or other importable callable becomes its dotted path; strings are left as they are."""
    if callable(value) and hasattr(value, '__module__') and hasattr(value, '__qualname__'):
        return f'{value.__module__}.{value.__qualname__}'
    return value


def validate_callable(value: Any) -> None:
    if not isinstance(value, str) or '.' not in value:
        raise ValidationError(_('Enter a dotted path such as "myapp.tasks.send_report".'), code='invalid')
    try:
        target = import_string(value)
    except ImportError as exc:
        raise ValidationError(_('Cannot import %(path)s: %(error)s'), params={'path': value, 'error': exc}) from exc
    if not callable(target):
        raise ValidationError(_('%(path)s is not callable.'), params={'path': value}, code='not_callable')
    if not callable_allowed(value):
        raise ValidationError(
            _('%(path)s is not allowed by the ALLOWED_CALLABLES setting.'), params={'path': value}, code='not_allowed'
        )


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
