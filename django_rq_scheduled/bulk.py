"""Many rows written by one statement run over a list of parameters (``executemany``), and read by one query per
batch of keys, for the loop's own hot paths: the ORM's bulk methods cost ten times more in Python per value, and
its ``bulk_update`` builds a CASE per field whose cost grows with the square of the batch. Values go through each
field's own conversion (datetimes on SQLite through a shortcut that gives the same text); no signal is sent and no
validation run (the callers write fields the loop alone owns)."""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import connections
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import (
    CharField,
    DateTimeField,
    Field,
    FloatField,
    ForeignKey,
    IntegerField,
    JSONField,
    Model,
    TextField,
)
from django.db.models.base import ModelState
from django.db.models.fields import AutoFieldMixin
from django.db.models.signals import post_init, pre_init
from django.utils.dateparse import parse_datetime

BATCH = 500
"""Rows per ``executemany``, and keys per query of ``read()``."""
UTC = timezone.utc
M = TypeVar('M', bound=Model)


class BulkWriter:
    def __init__(self, using: str) -> None:
        self.connection = connections[using]
        self.quote = self.connection.ops.quote_name

    def insert(self, model: type[Model], rows: Sequence[Any], names: Iterable[str]) -> None:
        """Inserts ``rows`` (objects with the fields' attributes); their primary keys are not read back."""
        if not rows:
            return
        fields = self._fields(model, names)
        values = self._reader(fields)
        self._run(self._insert_sql(model, fields), [values(row) for row in rows])

    def insert_keyed(self, model: type[Model], rows: Sequence[Any], names: Sequence[str], key: str) -> None:
        """Inserts ``rows`` and sets each one's ``pk``, found by its unique field ``key``. The caller holds the
        database's writer lock (on SQLite, a write made earlier in the same transaction)."""
        if not rows:
            return
        if self._numbers_rows_in_order(model):
            fields = self._fields(model, names)
            values = self._reader(fields)
            for number, row in enumerate(rows, self._next_row_number(model)):
                row.pk = number
            self._run(self._insert_sql(model, fields, keyed=True), [[row.pk, *values(row)] for row in rows])
            return
        self.insert(model, rows, names)
        pk = cast(Field, model._meta.pk).name
        ids = dict(self.read(model, (key, pk), where=key, values=[getattr(row, key) for row in rows]))
        for row in rows:
            row.pk = ids[getattr(row, key)]

    def _numbers_rows_in_order(self, model: type[Model]) -> bool:
        # SQLite's AUTOINCREMENT gives the next row one more than the largest key the table ever held: under the
        # single writer's lock, the keys it would give are known before the insert, and their read back is saved.
        return self.connection.vendor == 'sqlite' and isinstance(model._meta.pk, AutoFieldMixin)

    def _next_row_number(self, model: type[Model]) -> int:
        table, key = self._table(model), self._column(cast(Field, model._meta.pk))
        with self.connection.cursor() as cursor:
            cursor.execute(
                f'SELECT (SELECT max({key}) FROM {table}), '
                f"(SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence')"
            )
            largest, counted = cursor.fetchone()
            largest = largest or 0
            if counted:  # a table without AUTOINCREMENT has no entry, and gives the largest key plus one
                cursor.execute('SELECT seq FROM sqlite_sequence WHERE name = %s', [model._meta.db_table])
                found = cursor.fetchone()
                largest = max(largest, found[0] if found else 0)
            return int(largest) + 1

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

    def read(
        self, model: type[Model], names: Sequence[str], *, where: str, values: Iterable[Any], for_update: bool = False
    ) -> Iterator[list[Any]]:
        """The fields ``names`` of the rows whose field ``where`` holds one of ``values``, converted as the ORM
        converts them; ``for_update`` locks the rows where the database can (PostgreSQL)."""
        fields = self._fields(model, names)
        columns = ', '.join(self._column(field) for field in fields)
        key = self._column(self._fields(model, [where])[0])
        lock = ' FOR UPDATE' if for_update and self.connection.features.has_select_for_update else ''
        convert = _row_converter([self._from_database(field) for field in fields])
        ordered = list(values)
        with self.connection.cursor() as cursor:
            for start in range(0, len(ordered), BATCH):
                chunk = ordered[start : start + BATCH]
                marks = ', '.join(['%s'] * len(chunk))
                cursor.execute(f'SELECT {columns} FROM {self._table(model)} WHERE {key} IN ({marks}){lock}', chunk)
                yield from map(convert, cursor.fetchall())

    def read_rows(
        self, model: type[M], names: Sequence[str], pks: Iterable[Any], *, for_update: bool = False
    ) -> Iterator[M]:
        """The rows of ``model`` whose primary key is among ``pks``, with only the fields ``names`` loaded (the others
        deferred, read when first used): the instances ``Model.from_db`` makes, made without ``Model.__init__`` (most of
        the cost) while no receiver of ``pre_init`` or ``post_init`` would miss it."""
        fields = self._fields(model, [cast(Field, model._meta.pk).name, *names])
        attnames = [field.attname for field in fields]
        names = [field.name for field in fields]
        heard = pre_init.has_listeners(model) or post_init.has_listeners(model)
        alias = self.connection.alias
        for values in self.read(model, names, where=names[0], values=pks, for_update=for_update):
            yield model.from_db(alias, attnames, values) if heard else _loaded(model, alias, attnames, values)

    def _insert_sql(self, model: type[Model], fields: list[Field], *, keyed: bool = False) -> str:
        columns = [self._column(field) for field in fields]
        if keyed:
            columns.insert(0, self._column(cast(Field, model._meta.pk)))
        marks = ', '.join(['%s'] * len(columns))
        return f'INSERT INTO {self._table(model)} ({", ".join(columns)}) VALUES ({marks})'

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
        values = operator.attrgetter(*(field.attname for field in fields))
        convert = _row_converter([self._converter(field) for field in fields])
        if len(fields) == 1:
            return lambda row: convert((values(row),))
        return lambda row: convert(values(row))

    @functools.cache  # noqa: B019 - a writer lives for one transaction
    def _converter(self, field: Field) -> Callable[[Any], Any]:
        if isinstance(field, (CharField, TextField, IntegerField)) or _refers_to_integers(field):
            return _same
        if isinstance(field, DateTimeField):
            adapt = self.connection.ops.adapt_datetimefield_value
            return functools.partial(_utc_text, adapt) if self._holds_utc_text() else adapt
        prepare = functools.partial(field.get_db_prep_save, connection=self.connection)
        if isinstance(field, FloatField):
            return functools.partial(_float, prepare)
        if self._plain_json(field):
            return functools.partial(_json_text, prepare)
        return prepare

    def _from_database(self, field: Field) -> Callable[[Any], Any]:
        if isinstance(field, DateTimeField) and self._holds_utc_text():
            return _utc_datetime
        if isinstance(field, (CharField, TextField, IntegerField, DateTimeField)):
            return _same  # the drivers give these as the ORM would (aware datetimes on PostgreSQL)
        expression = field.get_col(field.model._meta.db_table)
        backend_converters = self.connection.ops.get_db_converters(expression)
        if self._plain_json(field) and not backend_converters:
            return _json_value
        converters = [*backend_converters, *expression.get_db_converters(self.connection)]
        if not converters:  # a float, a content type's id
            return _same
        return functools.partial(_converted, converters, expression, self.connection)

    def _plain_json(self, field: Field) -> bool:
        """A JSON field without an encoder or decoder of its own, on a database that stores JSON as the text
        ``json.dumps`` gives (SQLite; not PostgreSQL, whose driver adapts it)."""
        if not isinstance(field, JSONField) or field.encoder is not None or field.decoder is not None:
            return False
        base = getattr(BaseDatabaseOperations, 'adapt_json_value', None)  # Django 4.2 and later
        return base is not None and getattr(type(self.connection.ops), 'adapt_json_value', None) is base

    def _holds_utc_text(self) -> bool:
        """Whether datetimes are stored as naive UTC text (SQLite with USE_TZ, the database's time zone UTC)."""
        return self.connection.vendor == 'sqlite' and settings.USE_TZ and self.connection.timezone_name == 'UTC'

    def _run(self, sql: str, params: list[list[Any]]) -> None:
        with self.connection.cursor() as cursor:
            for start in range(0, len(params), BATCH):
                cursor.executemany(sql, params[start : start + BATCH])


def _loaded(model: type[M], alias: str, attnames: list[str], values: Sequence[Any]) -> M:
    """What ``Model.from_db`` gives, less its signals: attributes in the instance's ``__dict__``, its state saved."""
    row = model.__new__(model)
    row._state = ModelState()
    row._state.adding, row._state.db = False, alias
    row.__dict__.update(zip(attnames, values))
    return row


def _same(value: Any) -> Any:
    return value


def _refers_to_integers(field: Field) -> bool:
    """A foreign key to an integer key (a content type): its ids are written as they are, as the key's own."""
    return isinstance(field, ForeignKey) and isinstance(field.target_field, IntegerField)


def _row_converter(converters: list[Callable[[Any], Any]]) -> Callable[[Sequence[Any]], list[Any]]:
    """A function converting a row of values with ``converters``, one per column; columns that need no conversion
    cost nothing."""
    work = [(index, convert) for index, convert in enumerate(converters) if convert is not _same]

    def convert_row(row: Sequence[Any]) -> list[Any]:
        converted = list(row)
        for index, convert in work:
            converted[index] = convert(converted[index])
        return converted

    return convert_row


def _utc_text(adapt: Callable[[Any], Any], value: datetime | None) -> Any:
    """What SQLite's ``adapt_datetimefield_value`` gives (naive UTC as ``str()`` writes it), a tenth of its cost for
    the common case (aware UTC)."""
    if value is None:
        return None
    if value.tzinfo is UTC:
        # The naive time's text: half the cost of the aware one's (its offset, then cut off).
        return _naive(value.date(), value.time()).isoformat(' ')
    return adapt(value)


_naive = datetime.combine


def _float(prepare: Callable[[Any], Any], value: Any) -> Any:
    """What ``FloatField.get_db_prep_save`` gives, without its calls for a float or None (left as they are)."""
    if value is None or type(value) is float:
        return value
    return prepare(value)


def _json_text(prepare: Callable[[Any], Any], value: Any) -> Any:
    """What ``JSONField.get_db_prep_save`` gives for a list or a dict (``_plain_json``), without its calls."""
    if type(value) is list or type(value) is dict:
        return json.dumps(value)
    return prepare(value)


def _json_value(value: Any) -> Any:
    """What ``JSONField.from_db_value`` gives for a column of a field without a decoder (``_plain_json``)."""
    if type(value) is not str:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _utc_datetime(value: datetime | str | None) -> datetime | None:
    """What SQLite's ``convert_datetimefield_value`` gives (its driver parses the column's text already)."""
    moment = parse_datetime(value) if isinstance(value, str) else value
    if moment is not None and moment.tzinfo is None:
        return _naive(moment.date(), moment.time(), UTC)  # what .replace(tzinfo=UTC) gives, at a fifth of its cost
    return moment


def _converted(converters: list[Callable[..., Any]], expression: Any, connection: Any, value: Any) -> Any:
    for convert in converters:
        value = convert(value, expression, connection)
    return value
