"""Many rows written by one statement run over a list of parameters (``executemany``), for the loop's own hot
writes: the ORM's bulk methods cost ten times more in Python per value, and its ``bulk_update`` builds a CASE per
field whose cost grows with the square of the batch. Values go through each field's own conversion for the
database; no signal is sent and no validation run (the callers write fields the loop alone owns)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from django.db import connections
from django.db.models import CharField, DateTimeField, Field, IntegerField, Model, TextField

BATCH = 500
"""Rows per ``executemany``."""


class BulkWriter:
    def __init__(self, using: str) -> None:
        self.connection = connections[using]
        self.quote = self.connection.ops.quote_name

    def insert(self, model: type[Model], rows: Sequence[Any], names: Iterable[str]) -> None:
        """Inserts ``rows`` (objects with the fields' attributes); their primary keys are not read back."""
        if not rows:
            return
        fields = self._fields(model, names)
        columns = ', '.join(self._column(field) for field in fields)
        marks = ', '.join(['%s'] * len(fields))
        values = self._reader(fields)
        self._run(f'INSERT INTO {self._table(model)} ({columns}) VALUES ({marks})', [values(row) for row in rows])

    def update(self, model: type[Model], rows: Sequence[Any], names: Iterable[str]) -> None:
        """Writes ``names`` of saved ``rows`` (objects with ``pk`` and the fields' attributes)."""
        if not rows:
            return
        fields = self._fields(model, names)
        values = self._reader(fields)
        self._run(self._update_sql(model, fields), [[*values(row), row.pk] for row in rows])

    def update_values(
        self, model: type[Model], changes: Sequence[tuple[Any, dict[str, Any]]], *, at_most: str | None = None
    ) -> None:
        """Writes each ``(pk, {field: value})`` of ``changes`` (all with the same fields); with ``at_most``, only where
        that column is at most its new value (the write never goes backwards)."""
        if not changes:
            return
        names = list(changes[0][1])
        fields = self._fields(model, names)
        converters = [self._converter(field) for field in fields]
        sql = self._update_sql(model, fields)
        params = []
        for pk, values in changes:
            row = [convert(values[name]) for name, convert in zip(names, converters)]
            params.append([*row, pk, values[at_most]] if at_most else [*row, pk])
        if at_most:
            sql += f' AND {self.quote(at_most)} <= %s'
        self._run(sql, params)

    def _update_sql(self, model: type[Model], fields: list[Field]) -> str:
        assignments = ', '.join(f'{self._column(field)} = %s' for field in fields)
        key = self._column(cast(Field, model._meta.pk))
        return f'UPDATE {self._table(model)} SET {assignments} WHERE {key} = %s'

    def _table(self, model: type[Model]) -> str:
        return self.quote(model._meta.db_table)

    def _column(self, field: Field) -> str:
        return self.quote(cast(str, field.column))

    @staticmethod
    def _fields(model: type[Model], names: Iterable[str]) -> list[Field]:
        return [cast(Field, model._meta.get_field(name)) for name in names]

    def _reader(self, fields: list[Field]) -> Callable[[Any], list[Any]]:
        """A function giving the values of ``fields`` of an object, converted for the database."""
        pairs = [(field.attname, self._converter(field)) for field in fields]
        return lambda row: [convert(getattr(row, name)) for name, convert in pairs]

    @functools.cache  # noqa: B019 - a writer lives for one transaction
    def _converter(self, field: Field) -> Callable[[Any], Any]:
        if isinstance(field, (CharField, TextField, IntegerField)):
            return _same
        if isinstance(field, DateTimeField):
            return self.connection.ops.adapt_datetimefield_value
        return functools.partial(field.get_db_prep_save, connection=self.connection)

    def _run(self, sql: str, params: list[list[Any]]) -> None:
        with self.connection.cursor() as cursor:
            for start in range(0, len(params), BATCH):
                cursor.executemany(sql, params[start : start + BATCH])


def _same(value: Any) -> Any:
    return value
