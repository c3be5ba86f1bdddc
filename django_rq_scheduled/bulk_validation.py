"""The validation of a ``bulk_create()``: every row as ``full_clean()`` would, done once per distinct definition.

Rows of one bulk usually share everything but their name (and a one-off's time): the same callable, arguments,
queue and options. A row is fully validated (``full_clean()``) the first time its *shared values* (every field but
its model's ``ROW_FIELDS``) are seen; a later row with the same shared values, compared by type and value, is
validated on its ``ROW_FIELDS`` alone, which no rule of another field reads, and takes the first row's cleaned
shared values. A row whose shared values cannot be compared (an unknown type, nesting too deep) is fully validated.
The first invalid row refuses the whole bulk, with a ValidationError naming its fields and the row.
"""

from __future__ import annotations

import copy
import enum
import operator
import types
from collections.abc import Callable, Hashable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

_SCALARS = frozenset({str, int, float, bool, type(None), bytes, Decimal, date, time, timedelta})
_MAX_DEPTH = 16  # deeper values are fully validated row by row (the rules cap JSON nesting anyway)


class Incomparable(Exception):
    """A value ``frozen()`` cannot make a key of."""


def validate_rows(objs: Sequence[Any]) -> set[str]:
    """Validates ``objs`` as ``full_clean()`` would (uniqueness and constraints left to the database); returns the
    versions of their definitions (``pending.note_validated``). ValidationError for the first invalid row."""
    cleaned: dict[Hashable, dict[str, Any]] = {}
    versions: dict[Hashable, str] = {}
    found: set[str] = set()
    for index, obj in enumerate(objs):
        try:
            shared = _shared_key(obj)
            converted = cleaned.get(shared) if shared is not None else None
            if converted is None:
                converted = _full_clean(obj)
                if shared is not None:
                    cleaned[shared] = converted
            else:
                _clean_row_fields(obj)
                for attname, value in converted.items():
                    setattr(obj, attname, copy.deepcopy(value))
        except ValidationError as exc:
            raise _naming_the_row(exc, index, obj) from exc
        key = None if shared is None else (shared, _row_definition(obj))
        if key is None:
            found.add(obj.version())
        elif key not in versions:
            versions[key] = obj.version()
    return found | set(versions.values())


def _full_clean(obj: Any) -> dict[str, Any]:
    """``full_clean()`` of ``obj``; returns the shared values it changed (e.g. a function given as the callable)."""
    raw = {field.attname: field.value_from_object(obj) for field in _shared_fields(type(obj))[0]}
    obj.full_clean(validate_unique=False, validate_constraints=False)
    return {name: getattr(obj, name) for name, value in raw.items() if getattr(obj, name) is not value}


def _clean_row_fields(obj: Any) -> None:
    """What ``full_clean()`` checks of a row's ``ROW_FIELDS``: their fields' own checks and the model's rules."""
    others = _shared_fields(type(obj))[1]
    errors: dict[str, Any] = {}
    try:
        obj.clean_fields(exclude=others)
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    for name, messages in obj.row_field_errors().items():
        errors.setdefault(name, messages)
    if errors:
        raise ValidationError(errors)


_Shared = tuple[list[Any], frozenset[str], Callable[[Any], tuple[Any, ...]]]
_SHARED: dict[type, _Shared] = {}


def _shared_fields(model: type) -> _Shared:
    """The fields of ``model`` but its ``ROW_FIELDS``, their names, and a getter of their values."""
    if model not in _SHARED:
        own = model.ROW_FIELDS  # type: ignore[attr-defined]
        fields = [field for field in model._meta.concrete_fields if field.name not in own]  # type: ignore[attr-defined]
        getter = operator.attrgetter(*(field.attname for field in fields))
        _SHARED[model] = (fields, frozenset(field.name for field in fields), getter)
    return _SHARED[model]


def _shared_key(obj: Any) -> Hashable | None:
    """The row's shared values, by type and value, or None if one cannot be compared."""
    values = _shared_fields(type(obj))[2](obj)
    try:
        return (type(obj), *[(type(value), value) if type(value) in _SCALARS else frozen(value) for value in values])
    except Incomparable:
        return None


def _row_definition(obj: Any) -> Hashable | None:
    """The row's own values that its definition (its version) holds, by type and value."""
    try:
        definition = type(obj).DEFINITION_FIELDS
        return tuple(frozen(getattr(obj, name)) for name in type(obj).ROW_FIELDS if name in definition)
    except Incomparable:
        return object()  # equal to nothing: its version is computed


def frozen(value: Any, depth: int = 0) -> Hashable:
    """``value`` as a hashable key equal to another only for a value of the same types and the same values (1, 1.0
    and True are equal in Python, not to the rules); Incomparable for a value of another type, or nested too deep."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if isinstance(value, enum.Enum):
        return (kind, value)  # a model's choices (``Overlap.ALLOW``): hashable, compared by value
    if kind is datetime:
        # Equal instants in two zones are equal datetimes; so are the two readings of an hour a zone repeats.
        return (kind, value, value.tzinfo, value.fold)
    if depth >= _MAX_DEPTH:
        raise Incomparable
    if kind is list or kind is tuple:
        return (kind, tuple(frozen(item, depth + 1) for item in value))
    if kind is dict:
        return (kind, tuple((frozen(key, depth + 1), frozen(item, depth + 1)) for key, item in value.items()))
    if kind in (types.FunctionType, types.BuiltinFunctionType):
        return (kind, value)  # compared by identity
    raise Incomparable


def _naming_the_row(exc: ValidationError, index: int, obj: Any) -> ValidationError:
    """``exc`` with each message saying which row of the bulk it is about (its position and name)."""
    name = getattr(obj, 'name', None)
    label = f'row {index} ({name!r:.80})' if isinstance(name, str) else f'row {index}'
    errors = exc.error_dict if hasattr(exc, 'error_dict') else {NON_FIELD_ERRORS: exc.error_list}
    return ValidationError(
        {
            field: [ValidationError(f'{label}: {message}', code=error.code) for error in found for message in error]
            for field, found in errors.items()
        }
    )
