"""Field validators shared by the models, their forms, fixtures and bulk paths: one place for every rule."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator
from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from . import conf, task_calls
from .core import cron
from .core.allowlist import CallableRefused

# PostgreSQL refuses NUL in text, and UTF-8 (hence every database and Redis's JSON) has no unpaired surrogates.
_UNSTORABLE_CHARACTER = re.compile('[\x00\ud800-\udfff]')
_CONTROL_CHARACTER = re.compile('[\x00-\x1f\x7f-\x9f]')
_JSON_INTEGER_LIMIT = 10**conf.MAX_JSON_INTEGER_DIGITS


def callable_path(value: Any) -> Any:
    """A function or other importable callable becomes its dotted path, a Django Task its function's; strings are
    left as they are."""
    if task_calls.is_task(value):
        return value.module_path
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
    if not callable(target) and not task_calls.is_task(target):
        raise CallableRefused(f'{path} is not callable', 'not_callable')


# Codes of their own, never 'invalid': a model field replaces the message of an error whose code it knows, and
# JSONField's 'invalid' says "Value must be valid JSON.", which a list given for an object is.
def validate_args(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError(
            _('Positional arguments must be a JSON list, e.g. [1, "a"]; got %(kind)s.'),
            params={'kind': json_kind(value)},
            code='not_a_list',
        )


def validate_kwargs(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError(
            _('Keyword arguments must be a JSON object, e.g. {"name": "value"}; got %(kind)s.'),
            params={'kind': json_kind(value)},
            code='not_an_object',
        )
    bad = [key for key in value if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise ValidationError(
            _('Keyword argument names must be identifiers; not %(keys)s.'),
            params={'keys': ', '.join(repr(key) for key in bad)},
            code='not_an_identifier',
        )


JSON_KINDS = (
    (bool, gettext_lazy('true or false')),  # before int: True is an int
    (dict, gettext_lazy('an object')),
    (list, gettext_lazy('a list')),
    (str, gettext_lazy('a string')),
    ((int, float), gettext_lazy('a number')),
)


def json_kind(value: Any) -> str:
    """What a value is, in JSON's words, for messages: "an object", "a list", "null"..."""
    if value is None:
        return 'null'
    kind = next((kind for types, kind in JSON_KINDS if isinstance(value, types)), None)
    return str(kind) if kind is not None else _('a Python %(type)s') % {'type': type(value).__name__}


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


def validate_printable(value: Any) -> None:
    if isinstance(value, str) and _CONTROL_CHARACTER.search(value):
        raise ValidationError(_('Enter text without control characters (such as line breaks).'), code='invalid')


def refusal(field: Any, value: Any) -> str | None:
    """Why ``value`` cannot be given to ``field`` (its type, or a limit), checked before Django's own validation.

    A field refused here skips Django's validation: its validators would crash on the value, take long over it, or
    pass what the database then refuses.
    """
    return wrong_type(field, value) or out_of_bounds(field, value)


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


def out_of_bounds(field: Any, value: Any) -> str | None:
    """Why a value of the right type cannot be stored: the same limits on every database (see conf.py)."""
    if not field.editable or field.primary_key or value is None:
        return None
    if isinstance(field, models.JSONField):
        return json_problem(value)
    try:
        value = field.to_python(value)
    except ValidationError:
        return None  # Django's own validation says why
    if isinstance(value, str) and isinstance(field, models.CharField):
        return text_problem(value) or too_long(value, field.max_length)
    if isinstance(field, models.IntegerField) and isinstance(value, int):
        return integer_range_problem(field, value)
    if isinstance(field, models.DateTimeField) and isinstance(value, datetime):
        return schedule_time_problem(value)
    return None


def integer_range_problem(field: models.Field, value: int) -> str | None:
    """Why ``value`` does not fit the column of an integer field (a primary key included).

    The ranges of PostgreSQL's and MySQL's columns: a row that SQLite takes must load anywhere, and a lookup of a
    larger number must not reach SQLite, which Django before 5.0 lets fail with OverflowError.
    """
    low, high = BaseDatabaseOperations.integer_field_ranges[field.get_internal_type()]
    if low <= value <= high:
        return None
    return _('Enter a whole number from %(low)d to %(high)d.') % {'low': low, 'high': high}


def text_problem(value: str) -> str | None:
    found = _UNSTORABLE_CHARACTER.search(value)
    if found is None:
        return None
    if found.group() == '\x00':
        return _('Null characters are not allowed.')
    return _('Enter text without unpaired surrogate characters (such as %(character)s).') % {
        'character': ascii(found.group()).strip("'")
    }


def too_long(value: str, max_length: int | None) -> str | None:
    """Django's own message, before any other validator spends time on a long value (e.g. 10 MB)."""
    if max_length is None:
        return None
    try:
        MaxLengthValidator(max_length)(value)
    except ValidationError as exc:
        return exc.messages[0]
    return None


def schedule_time_problem(value: datetime) -> str | None:
    earliest, latest = conf.EARLIEST_SCHEDULE_TIME, conf.LATEST_SCHEDULE_TIME
    # Naive times count as UTC here: near the limits, the difference does not matter. Comparing aware times never
    # overflows, even for one that is before year 1 or after year 9999 in UTC.
    if earliest <= (value if value.tzinfo else value.replace(tzinfo=earliest.tzinfo)) <= latest:
        return None
    return _('Enter a time from %(earliest)s to %(latest)s (UTC).') % {
        'earliest': f'{earliest:%Y-%m-%d %H:%M}',
        'latest': f'{latest:%Y-%m-%d %H:%M}',
    }


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored and sent as JSON: walked without recursion, however deep it is."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= conf.MAX_JSON_DEPTH:
                return _('Nest lists and objects at most %(limit)d levels deep.') % {'limit': conf.MAX_JSON_DEPTH}
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            if problem := text_problem(item):
                return problem
        elif isinstance(item, float) and not math.isfinite(item):
            return _('Enter finite numbers: JSON has no NaN or Infinity.')
        elif isinstance(item, int) and abs(item) >= _JSON_INTEGER_LIMIT:
            return _('Enter whole numbers of at most %(limit)d digits.') % {'limit': conf.MAX_JSON_INTEGER_DIGITS}
    return None
