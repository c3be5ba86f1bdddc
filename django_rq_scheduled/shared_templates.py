"""Templates (and versions) built once per sync for the rows that share them.

Rows with one definition (one version) that have made the same runs have the same compact template: nothing of a
row's own id is in it (its owner is left out, as its id says it: ``compact.derived_owner``). Within one batch of a
sync (``sharing()``), such a template is built for the first of them and reused for the others; a ``bulk_create()``
of many rows of one definition builds one template instead of one per row.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .bulk_validation import Incomparable, frozen
from .core import compact, fast_rows, keys
from .servers import template_job

if TYPE_CHECKING:
    from .core.scheduler import Scheduler
    from .models import ScheduleBase

_built: ContextVar[dict[Hashable, Any] | None] = ContextVar('drqs_shared_templates', default=None)


@contextmanager
def sharing() -> Iterator[None]:
    """Templates built in this block are reused by the rows that share them (a batch: they are kept until it ends)."""
    token = _built.set({})
    try:
        yield
    finally:
        _built.reset(token)


def version_of(row: ScheduleBase) -> str:
    """``row.version()``, computed once per distinct definition (compared by type and value) in ``sharing()``."""
    built = _built.get()
    try:
        key = ('version', type(row), *[frozen(getattr(row, name)) for name in row.DEFINITION_FIELDS])
    except Incomparable:
        key = None
    if built is None or key is None:
        return row.version()
    if key not in built:
        built[key] = row.version()
    return str(built[key])


def template_fields(
    scheduler: Scheduler, row: ScheduleBase, runs: int, version: str, late_from: float | None
) -> list[Any]:
    """The row's compact template (``core.compact``) as a flat field, value list; ``version``: ``row.version()``.
    A one-off's carries its row mark (``core.fast_rows``), if the scheduler's marks can be trusted."""
    built = _built.get()
    if built is None or compact.derived_owner(row.template_id) != row.owner:
        return _marked(scheduler, row.template_id, _build(scheduler, row, runs, version, late_from))
    key = ('template', scheduler, type(row), version, runs, late_from)
    if key not in built:
        built[key] = _build(scheduler, row, runs, version, late_from)
    return _marked(scheduler, row.template_id, built[key])


def _marked(scheduler: Scheduler, template_id: str, flat: list[Any]) -> list[Any]:
    signer = scheduler.jobs.signer
    fields = dict(zip(flat[::2], flat[1::2]))
    if signer is None or not fast_rows.markable(fields):
        return flat
    return [*flat, keys.ROW_MARK_FIELD, signer.row_mark(template_id, fields)]


def _build(scheduler: Scheduler, row: ScheduleBase, runs: int, version: str, late_from: float | None) -> list[Any]:
    job = template_job(scheduler, row, runs, late_from=late_from, version=version)
    mapping = compact.template_fields(job.to_dict(), job.meta, job.id)
    return [item for pair in mapping.items() for item in pair]
