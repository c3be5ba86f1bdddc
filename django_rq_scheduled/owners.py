"""Template ids → the rows that own them: the model and primary key an id names, and the rows, one query per model.

Anything with access to Redis may write the schedule, so an id is trusted only when it is exactly the template id of
a row that exists: ``drqs-cronjob-007`` or ``drqs-cronjob-99999999999999999999`` names no row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError

from . import validators
from .core import keys
from .models import SCHEDULE_MODELS, ScheduleBase

MODELS_BY_NAME = {model._meta.model_name: model for model in SCHEDULE_MODELS}


def owner_of(template_id: str) -> tuple[type[ScheduleBase], Any] | None:
    """The model and primary key of the row whose template id this is, if a row can have it (it may not exist)."""
    owner = keys.template_owner(template_id)
    model = MODELS_BY_NAME.get(owner[0]) if owner else None
    if owner is None or model is None:
        return None
    field = model._meta.pk
    assert field is not None
    try:
        pk = field.to_python(owner[1])
    except ValidationError:
        return None
    if isinstance(pk, int) and validators.integer_range_problem(field, pk):
        return None
    return (model, pk) if keys.template_id(owner[0], pk) == template_id else None


def rows_owning(template_ids: Iterable[str], *fields: str, using: str = 'default') -> dict[str, ScheduleBase]:
    """The existing rows that own these template ids, by id, with only ``fields`` loaded (and the primary key).

    One query per model, whatever the number of ids (``in_bulk`` splits a list longer than the database takes).
    """
    wanted: dict[type[ScheduleBase], dict[Any, str]] = defaultdict(dict)
    for template_id in template_ids:
        owner = owner_of(template_id)
        if owner is not None:
            wanted[owner[0]][owner[1]] = template_id
    rows: dict[str, ScheduleBase] = {}
    for model, ids in wanted.items():
        found = model._base_manager.using(using).only(*fields).in_bulk(list(ids))
        rows.update({ids[pk]: row for pk, row in found.items()})
    return rows
