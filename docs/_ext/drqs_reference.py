"""Reference tables read from the code, so that the docs cannot drift from it.

``.. drqs-settings::`` lists every ``RQ_SCHEDULED`` setting with its default and help (``conf.SETTINGS``).
``.. drqs-model-fields:: django_rq_scheduled.models.CronJob`` lists a model's fields with their help texts.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.module_loading import import_string
from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


def _table(directive: Directive, header: list[str], rows: list[list[str]], widths: list[int]) -> list[nodes.Node]:
    lines = ['.. list-table::', '   :header-rows: 1', f'   :widths: {" ".join(map(str, widths))}', '']
    for row in [header, *rows]:
        lines.append(f'   * - {row[0]}')
        lines += [f'     - {cell}' for cell in row[1:]]
    container = nodes.section()
    directive.state.nested_parse(StringList(lines), directive.content_offset, container)
    return list(container.children)


def _literal(value: Any) -> str:
    return f'``{value!r}``'


class SettingsTable(Directive):
    def run(self) -> list[nodes.Node]:
        from django_rq_scheduled.conf import SETTINGS

        rows = [[f'``{name}``', _literal(setting.default), setting.help] for name, setting in SETTINGS.items()]
        return _table(self, ['setting', 'default', 'meaning'], rows, [20, 12, 68])


def _field_type(field: models.Field) -> str:
    kind = type(field).__name__
    if field.choices:
        kind += ' (' + ', '.join(f'``{value}``' for value, _ in field.choices) + ')'
    return kind


def _field_notes(field: models.Field) -> str:
    notes = [str(field.help_text)] if field.help_text else []
    if not field.editable:
        notes.append('*Read-only: written by the scheduler.*')
    elif field.has_default() and not callable(field.default):
        notes.append(f'Default {_literal(field.default)}.')
    if field.null:
        notes.append('May be empty.')
    return ' '.join(notes)


class ModelFieldsTable(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        model = import_string(self.arguments[0])
        rows = [
            [f'``{field.name}``', _field_type(field), _field_notes(field)]
            for field in model._meta.concrete_fields
            if not field.primary_key
        ]
        return _table(self, ['field', 'type', 'meaning'], rows, [18, 22, 60])


def setup(app: Any) -> dict[str, Any]:
    app.add_directive('drqs-settings', SettingsTable)
    app.add_directive('drqs-model-fields', ModelFieldsTable)
    return {'parallel_read_safe': True}
