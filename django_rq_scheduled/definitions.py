"""Schedule rows as definitions, and definitions back into rows: ``manage.py schedules export`` and ``import``.

A definition is a schedule declared in code (``declared.py``) with its name, e.g. ``{'name': 'nightly', 'callable':
'reports.tasks.nightly', 'cron': '0 2 * * *', 'timezone': 'Europe/Paris', ...}``; an export holds every field of
it, so rows imported from it equal the rows exported. A document is ``{'version': 1, 'schedules': [definition,
...]}``, in JSON or YAML. An import is checked entry by entry by the rules of rows (``declared.declaration``) and
written in one transaction, all or nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone as django_timezone

from .choices import FROM_CODE, FROM_DATABASE
from .code_sync import DECLARABLE
from .declared import PERIODIC_OPTIONS, Declaration, DeclarationError, declaration, model_kind
from .models import SCHEDULE_MODELS, ScheduleBase

FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 10 * 1024 * 1024
"""The largest file an import reads (10 MB): larger ones are refused unread."""
YAML_EXTRA = 'YAML needs PyYAML: pip install "django-rq-scheduled[yaml]"'
ROW_OPTIONS = (
    'args', 'kwargs', 'queue', 'timeout', 'result_ttl', 'ttl', 'at_front', 'misfire_grace', 'overlap', 'description',
    'enabled', 'retries', 'retry_delays',
)  # fmt: skip


class ImportRefused(ValueError):
    """A document that cannot be imported as a whole; the message names the entry and the field."""


# -- export ---------------------------------------------------------------------------------------------------


def definition_of(row: ScheduleBase) -> dict[str, Any]:
    """The definition ``row`` is made of, with every field: imported, it makes the same row."""
    return {
        'name': row.name,
        'callable': row.callable,
        **_timing(row),
        **{key: getattr(row, key) for key in ROW_OPTIONS},
    }


def _timing(row: Any) -> dict[str, Any]:
    kind = model_kind(type(row))
    if kind == 'cron':
        return {'cron': row.cron_string, 'timezone': row.timezone, 'repeat': row.repeat, **_run_policies(row)}
    if kind == 'interval':
        return {
            'interval': row.interval,
            'unit': row.interval_unit,
            'start': _iso(row.scheduled_time),
            'repeat': row.repeat,
            **_run_policies(row),
        }
    return {'at': _iso(row.scheduled_time)}


def _run_policies(row: Any) -> dict[str, Any]:
    values = {option: getattr(row, option) for option in sorted(PERIODIC_OPTIONS)}
    return {option: _iso(value) if isinstance(value, datetime) else value for option, value in values.items()}


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def export_document(source: str = FROM_DATABASE) -> dict[str, Any]:
    """Every row made in the database (``source='db'``), declared in code (``'code'``) or both (``'all'``)."""
    rows = [
        row
        for model in SCHEDULE_MODELS
        for row in (model.objects.all() if source == 'all' else model.objects.filter(source=source))
    ]
    rows.sort(key=lambda row: (row.name, model_kind(type(row))))
    return {'version': FORMAT_VERSION, 'schedules': [definition_of(row) for row in rows]}


def dump(document: dict[str, Any], format: str) -> str:
    if format == 'yaml':
        return str(_yaml().safe_dump(document, sort_keys=False, allow_unicode=True))
    return json.dumps(document, indent=2, ensure_ascii=False)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ImportRefused(YAML_EXTRA) from None
    return yaml


# -- reading a document -----------------------------------------------------------------------------------------


def load(data: bytes) -> Any:
    """The document in ``data``: JSON, or YAML when it is not JSON (plain data only, no tags, no aliases)."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportRefused(f'The file is larger than {MAX_IMPORT_BYTES // 2**20} MB; split it.')
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as exc:
        raise ImportRefused(f'The file is not UTF-8 text: {exc}.') from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        json_error = exc
    try:
        yaml = _yaml()
    except ImportRefused:
        raise ImportRefused(f'The file is not JSON ({json_error}); {YAML_EXTRA}.') from None
    return _load_yaml(yaml, text)


def _load_yaml(yaml: Any, text: str) -> Any:
    class PlainLoader(yaml.SafeLoader):
        """Safe (no tags that build objects) and without aliases, whose nesting can grow a small file huge."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError('YAML aliases (*name) are not accepted')
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=PlainLoader)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ImportRefused(f'The file is neither JSON nor YAML: {exc}') from None


def entries(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise ImportRefused(f'A document {{"version": 1, "schedules": [...]}} expected, got {_kind(document)}.')
    if set(document) != {'version', 'schedules'} or type(document['version']) is not int:
        raise ImportRefused(
            f'A document {{"version": 1, "schedules": [...]}} expected, got the keys {sorted(document)}.'
        )
    if document['version'] != FORMAT_VERSION:
        raise ImportRefused(f'Version {document["version"]} of the format is unknown here; {FORMAT_VERSION} expected.')
    if not isinstance(document['schedules'], list):
        raise ImportRefused(f'"schedules": a list of definitions expected, got {_kind(document["schedules"])}.')
    return document['schedules']


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: 'an object', list: 'a list', str: 'a text', type(None): 'nothing'}
    return names.get(type(value), type(value).__name__)


# -- planning and writing -------------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    added: list[Declaration] = field(default_factory=list)
    changed: list[tuple[ScheduleBase, Declaration, dict[str, tuple[Any, Any]]]] = field(default_factory=list)
    unchanged: int = 0

    def lines(self) -> list[str]:
        """The diff: ``+`` added, ``~`` changed with each field's old and new value, then the count unchanged."""
        lines = [f'+ {item.name} ({_noun(item.model)}, added)' for item in self.added]
        for _row, item, changes in self.changed:
            lines.append(f'~ {item.name} ({_noun(item.model)}, changed)')
            lines += [f'    {name}: {_shown(old)} -> {_shown(new)}' for name, (old, new) in changes.items()]
        return [*lines, f'{self.unchanged} unchanged']


def _noun(model: type[ScheduleBase]) -> str:
    return str(model._meta.verbose_name)


def _shown(value: Any) -> str:
    return json.dumps(value.isoformat() if isinstance(value, datetime) else value, ensure_ascii=False, default=str)


def import_document(document: Any, *, update: bool = False, dry_run: bool = False) -> ImportPlan:
    """Adds (and with ``update``, changes) the rows of ``document``, all or none; returns the diff.

    ImportRefused, and nothing written, for the first entry that makes no valid row or names a row that exists
    (without ``update``) or is declared in code.
    """
    with transaction.atomic():
        plan = plan_import(entries(document), update=update)
        if not dry_run:
            _write(plan)
    return plan


def plan_import(definitions: list[Any], *, update: bool) -> ImportPlan:
    declared = [_declaration(index, entry) for index, entry in enumerate(definitions, 1)]
    _refuse_duplicates(declared)
    existing = _existing_rows(declared)
    plan = ImportPlan()
    for item in declared:
        row = existing.get((item.model, item.name))
        if row is None:
            plan.added.append(item)
            continue
        _refuse_to_replace(row, item, update=update)
        changes = _changes(row, item)
        if changes:
            plan.changed.append((row, item, changes))
        else:
            plan.unchanged += 1
    return plan


def _declaration(index: int, entry: Any) -> Declaration:
    if not isinstance(entry, dict):
        raise ImportRefused(f'Entry {index}: a definition (an object) expected, got {_kind(entry)}. Nothing imported.')
    definition = dict(entry)
    name = definition.pop('name', None)
    if not isinstance(name, str) or not name:
        raise ImportRefused(f'Entry {index}: name: a non-empty text expected, got {name!r}. Nothing imported.')
    try:
        return declaration(name, definition, origin='import')
    except DeclarationError as exc:
        where = f'{exc.field}: ' if exc.field else ''
        problem = exc.problem.rstrip('.')
        raise ImportRefused(f'Entry {index} ({name!r}): {where}{problem}. Nothing imported.') from None


def _refuse_duplicates(declared: list[Declaration]) -> None:
    seen: set[tuple[type[ScheduleBase], str]] = set()
    for item in declared:
        if (item.model, item.name) in seen:
            raise ImportRefused(f'{item.name!r}: two {_noun(item.model)}s of that name in the file. Nothing imported.')
        seen.add((item.model, item.name))


def _existing_rows(declared: list[Declaration]) -> dict[tuple[type[ScheduleBase], str], ScheduleBase]:
    # One query per kind: every row, rather than a name__in list longer than the database's limit of parameters.
    kinds = {item.model for item in declared}
    return {(model, row.name): row for model in kinds for row in model.objects.select_for_update()}


def _refuse_to_replace(row: ScheduleBase, item: Declaration, *, update: bool) -> None:
    if row.source == FROM_CODE:
        problem = 'is declared in code; change it there'
    elif not update:
        problem = 'exists; import with --update to change it'
    else:
        return
    raise ImportRefused(f'{item.name!r}: a {_noun(item.model)} of that name {problem}. Nothing imported.')


def _values(model: type[ScheduleBase], item: Declaration) -> dict[str, Any]:
    """Every field a definition sets, in the order of the model: its value in ``item``, or the field's default."""
    values = {}
    for model_field in model._meta.concrete_fields:
        if model_field.name in DECLARABLE:
            name = model_field.name
            values[name] = item.fields[name] if name in item.fields else model_field.get_default()
    return values


def _changes(row: ScheduleBase, item: Declaration) -> dict[str, tuple[Any, Any]]:
    changes = {}
    for name, value in _values(type(row), item).items():
        if name == 'scheduled_time' and value is None:
            continue  # an interval without start keeps its first run
        if getattr(row, name) != value:
            changes[name] = (getattr(row, name), value)
    return changes


def _write(plan: ImportPlan) -> None:
    for item in plan.added:
        row = item.model(name=item.name, source=FROM_DATABASE)
        _set(row, _values(item.model, item))
        _save(row)
    for row, _item, changes in plan.changed:
        _set(row, {name: new for name, (_old, new) in changes.items()})
        _save(row)


def _set(row: ScheduleBase, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(row, name, value)
    if getattr(row, 'scheduled_time', False) is None:
        row.scheduled_time = django_timezone.now()  # type: ignore[attr-defined]  # an interval without start: now


def _save(row: ScheduleBase) -> None:
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError as exc:
        raise ImportRefused(f'{row.name!r}: not written ({exc}). Nothing imported.') from None
