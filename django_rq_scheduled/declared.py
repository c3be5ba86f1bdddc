"""Schedules declared in code: ``RQ_SCHEDULED['SCHEDULES']`` and the ``@cron`` / ``@every`` decorators.

Each declaration becomes a schedule row with ``source='code'`` (``code_sync`` writes them). A declaration is read
into the row it stands for, so it is checked by exactly the rules of rows (``full_clean``), and refused with its
name and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.core.exceptions import ValidationError
from django.utils import timezone as django_timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import autodiscover_modules

from .choices import UNIT_SECONDS
from .conf import get_setting
from .validators import callable_path

if TYPE_CHECKING:
    from .models import ScheduleBase

F = TypeVar('F', bound=Callable[..., Any])

KINDS = {'cron': 'CronJob', 'interval': 'RepeatableJob', 'at': 'ScheduledJob'}
"""The key that says when a declaration runs, and the model of the row it makes (read when needed: the
decorators are imported by tasks modules, maybe before the app's models are ready)."""
OPTIONS = frozenset(
    {
        'args', 'kwargs', 'queue', 'timeout', 'result_ttl', 'ttl', 'at_front', 'description', 'misfire_grace',
        'overlap', 'enabled', 'retries', 'retry_delays',
    }
)  # fmt: skip
"""Row options any declaration may set."""
PERIODIC_OPTIONS = frozenset({'jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit'})
"""The policies of periodic schedules (``policies.RunPolicy``)."""
MOMENTS = ('valid_from', 'valid_until')
KIND_OPTIONS = {
    'cron': {'timezone', 'repeat', *PERIODIC_OPTIONS},
    'interval': {'unit', 'repeat', 'start', *PERIODIC_OPTIONS},
    'at': set(),
}
"""Options of some kinds only: ``unit`` and ``start`` (the first run) of an interval, the cron's time zone, the
policies of periodic schedules."""
UNITS = tuple(sorted(UNIT_SECONDS, key=UNIT_SECONDS.__getitem__, reverse=True))


class DeclarationError(ValueError):
    """A declaration no row can be made of: names the schedule and, where there is one, the field."""

    def __init__(self, name: str, problem: str, field: str | None = None) -> None:
        self.name, self.problem, self.field = name, problem, field
        where = f'{field}: ' if field else ''
        super().__init__(f'Schedule {name!r} declared in code: {where}{problem}')


@dataclass(frozen=True)
class Declaration:
    """One schedule declared in code, as the row it stands for."""

    name: str
    model: type[ScheduleBase]
    fields: dict[str, Any]
    """The row's fields the code sets (``scheduled_time`` of an interval without ``start`` is the sync's)."""
    origin: str
    """Where it was declared: ``settings`` or the decorated function's dotted path."""
    version: str = field(default='')
    """A digest of the declaration: a row whose code_version differs was changed in code since the last sync."""


_decorated: dict[str, tuple[dict[str, Any], str]] = {}


def cron(expression: str, *, name: str | None = None, **options: Any) -> Callable[[F], F]:
    """Runs the decorated function on a cron expression: ``@cron('0 7 * * 1-5', timezone='Europe/Paris')``."""
    return _declare({'cron': expression, **options}, name)


def every(
    *, seconds: int = 0, minutes: int = 0, hours: int = 0, days: int = 0, weeks: int = 0, name: str | None = None,
    **options: Any,
) -> Callable[[F], F]:  # fmt: skip
    """Runs the decorated function every so often: ``@every(minutes=5)``; ``start=`` sets the first run."""
    parts = {'seconds': seconds, 'minutes': minutes, 'hours': hours, 'days': days, 'weeks': weeks}
    if any(isinstance(value, bool) or not isinstance(value, int) or value < 0 for value in parts.values()):
        raise TypeError(f'every(): whole numbers of at least 0 expected, got {parts}')
    total = sum(value * UNIT_SECONDS[unit] for unit, value in parts.items())
    unit = next(unit for unit in UNITS if total % UNIT_SECONDS[unit] == 0)
    return _declare({'interval': total // UNIT_SECONDS[unit], 'unit': unit, **options}, name)


def _declare(definition: dict[str, Any], name: str | None) -> Callable[[F], F]:
    def register(function: F) -> F:
        path = callable_path(function)  # a Django Task's is its function's
        _decorated[name or path] = ({**definition, 'callable': path}, path)
        return function

    return register


def declarations() -> dict[str, Declaration]:
    """Every schedule declared in code, by name: the setting's, then the decorated functions of the installed
    apps' ``tasks`` modules. Raises DeclarationError for the first that no row can be made of."""
    autodiscover_modules('tasks')
    declared = get_setting('SCHEDULES')
    if not isinstance(declared, dict):
        raise DeclarationError('SCHEDULES', f'a dict from names to definitions expected, got {type(declared).__name__}')
    found: dict[str, Declaration] = {}
    for name, (definition, origin) in [
        *((name, (definition, 'settings')) for name, definition in declared.items()),
        *_decorated.items(),
    ]:
        if name in found:
            raise DeclarationError(name, f'declared twice ({found[name].origin} and {origin})')
        found[name] = declaration(name, definition, origin)
    return found


def declaration(name: Any, definition: Any, origin: str = 'settings') -> Declaration:
    """The row ``definition`` stands for, checked as rows are; DeclarationError otherwise."""
    if not isinstance(name, str) or not name:
        raise DeclarationError(str(name), 'a schedule name must be a non-empty string')
    if not isinstance(definition, dict):
        raise DeclarationError(name, f'a dict expected, got {type(definition).__name__}')
    kinds = [kind for kind in KINDS if kind in definition]
    if len(kinds) != 1:
        raise DeclarationError(name, f'exactly one of {", ".join(KINDS)} expected, got {kinds or "none"}')
    kind = kinds[0]
    unknown = set(definition) - {'callable', kind} - OPTIONS - KIND_OPTIONS[kind]
    if unknown:
        allowed = sorted({'callable', kind} | OPTIONS | KIND_OPTIONS[kind])
        raise DeclarationError(name, f'unknown option(s) {sorted(unknown)}; a {kind} schedule takes {allowed}')
    if 'callable' not in definition:
        raise DeclarationError(name, 'the function to run is missing', 'callable')
    fields = _row_fields(name, kind, definition)
    model = kind_model(kind)
    _check_as_row(name, model, fields)
    return Declaration(name, model, fields, origin, _digest(kind, fields))


def kind_model(kind: str) -> type[ScheduleBase]:
    from . import models

    return cast('type[ScheduleBase]', getattr(models, KINDS[kind]))


def model_kind(model: type[ScheduleBase]) -> str:
    return next(kind for kind, name in KINDS.items() if name == model.__name__)


def _row_fields(name: str, kind: str, definition: dict[str, Any]) -> dict[str, Any]:
    fields = {key: value for key, value in definition.items() if key in OPTIONS or key == 'callable'}
    fields['callable'] = callable_path(fields['callable'])
    if kind == 'cron':
        fields['cron_string'] = definition['cron']
        for option in ('timezone', 'repeat'):
            if option in definition:
                fields[option] = definition[option]
    elif kind == 'interval':
        fields.update(interval=definition['interval'], interval_unit=definition.get('unit', 'seconds'))
        if 'repeat' in definition:
            fields['repeat'] = definition['repeat']
        if 'start' in definition:
            fields['scheduled_time'] = _moment(name, 'start', definition['start'])
    else:
        fields['scheduled_time'] = _moment(name, 'at', definition['at'])
    for option in PERIODIC_OPTIONS & set(definition):
        value = definition[option]
        fields[option] = _moment(name, option, value) if option in MOMENTS and value is not None else value
    return fields


def _moment(name: str, key: str, value: Any) -> datetime:
    moment = parse_datetime(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise DeclarationError(name, f'a datetime or an ISO 8601 text expected, got {value!r}', key)
    return moment if django_timezone.is_aware(moment) else django_timezone.make_aware(moment)


def _check_as_row(name: str, model: type[ScheduleBase], fields: dict[str, Any]) -> None:
    if kind_model('interval') is model and 'scheduled_time' not in fields:
        fields = {**fields, 'scheduled_time': django_timezone.now()}  # the sync's: any valid time checks the rest
    row = model(name=name, **fields)
    try:
        row.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise DeclarationError(name, ' '.join(messages), field if field != '__all__' else None) from exc


def _digest(kind: str, fields: dict[str, Any]) -> str:
    encoded = json.dumps({'kind': kind, **fields}, sort_keys=True, default=str).encode()
    return hashlib.sha1(encoded, usedforsecurity=False).hexdigest()[:16]
