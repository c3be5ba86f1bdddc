"""The database of the Django processes the tests start (``manage.py rqscheduler``, ``manage.py shell``).

The test database belongs to the test process (pytest-django holds each test in a transaction no other process
sees), so the processes get one of their own: a SQLite file, or on the PostgreSQL pass (``DRQS_TEST_POSTGRES_URL``
set) a database in the same cluster, named after the test database and the pytest-xdist worker
(``drqs_processes_gw0_template``). It is migrated
once per test run and used as a template: each test that starts a process gets a fresh copy, dropped after the test by
tests/conftest.py, so no test's rows reach another test's processes.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django_rq_scheduled.core import keys

ROOT = Path(__file__).resolve().parent.parent
SQLITE_VARIABLE = 'DRQS_TEST_DB'
POSTGRES_VARIABLE = 'DRQS_TEST_POSTGRES_URL'
DATABASE_VARIABLES = (SQLITE_VARIABLE, POSTGRES_VARIABLE)
SCHEDULE_MODELS = ('scheduledjob', 'repeatablejob', 'cronjob')


class SqliteFiles:
    """Migrated files in a temporary folder, removed at exit."""

    variable = SQLITE_VARIABLE

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix='drqs-db-'))
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def create(self, name: str, template: str | None = None) -> str:
        path = self.folder / f'{name}.sqlite3'
        if template:
            shutil.copyfile(template, path)
        return str(path)

    def drop(self, location: str) -> None:
        Path(location).unlink(missing_ok=True)

    def connect(self, location: str) -> Any:
        return sqlite3.connect(location, timeout=5, isolation_level=None)


class PostgresDatabases:
    """Databases ``<test database>_processes[_<xdist worker>]_<name>`` in the cluster of the test database; those
    left at exit are dropped then.

    psycopg is imported only here: the benchmarks' environment, which imports tests/processes.py, has none.
    """

    variable = POSTGRES_VARIABLE

    def __init__(self, test_url: str) -> None:
        self.url = urlsplit(test_url)
        self.prefix = f'{self.url.path.lstrip("/") or "drqs"}_processes'  # the default NAME of tests/settings.py
        if os.environ.get('PYTEST_XDIST_WORKER'):  # pytest-xdist's workers share the cluster: one name each
            self.prefix += f'_{os.environ["PYTEST_XDIST_WORKER"]}'
        self.existing: set[str] = set()
        atexit.register(self.drop_all)

    def create(self, name: str, template: str | None = None) -> str:
        from psycopg import sql

        database = f'{self.prefix}_{name}'
        self._drop_database(database)  # left over by a run that was killed, on a cluster that outlived it
        create = sql.SQL('CREATE DATABASE {}').format(sql.Identifier(database))
        if template:
            create = sql.SQL('CREATE DATABASE {} TEMPLATE {}').format(
                sql.Identifier(database), sql.Identifier(self._database_name(template))
            )
        self._run_in_cluster(create)
        self.existing.add(database)
        return self._url_of(database)

    def drop(self, location: str) -> None:
        self._drop_database(self._database_name(location))

    def drop_all(self) -> None:
        for database in sorted(self.existing):
            self._drop_database(database)

    def connect(self, location: str) -> Any:
        import psycopg

        return psycopg.connect(location, autocommit=True)

    def _drop_database(self, database: str) -> None:
        from psycopg import sql

        # FORCE: a process that a failed test left running must not keep its database alive.
        self._run_in_cluster(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(database)))
        self.existing.discard(database)

    def _run_in_cluster(self, statement: Any) -> None:
        import psycopg

        with psycopg.connect(self._url_of('postgres'), autocommit=True) as connection:
            connection.execute(statement)

    def _url_of(self, database: str) -> str:
        return self.url._replace(path=f'/{database}').geturl()

    @staticmethod
    def _database_name(url: str) -> str:
        return urlsplit(url).path.lstrip('/')


@functools.cache
def databases() -> SqliteFiles | PostgresDatabases:
    """Where this run's processes keep their data: in the PostgreSQL cluster on the PostgreSQL pass."""
    test_url = os.environ.get(POSTGRES_VARIABLE)
    return PostgresDatabases(test_url) if test_url else SqliteFiles()


def database_env(location: str) -> dict[str, str]:
    """The variable that points tests/settings.py at a database of ``databases()``."""
    return {databases().variable: location}


def without_database(environ: Mapping[str, str]) -> dict[str, str]:
    """An environment naming no database: the test process's own is not the processes' one."""
    return {name: value for name, value in environ.items() if name not in DATABASE_VARIABLES}


@functools.cache
def migrated_template() -> str:
    """The database migrated once per test run, of which each test's processes get a copy."""
    location = databases().create('template')
    env = {**without_database(os.environ), **database_env(location), 'PYTHONPATH': str(ROOT)}
    command = [sys.executable, '-m', 'django', 'migrate', '--settings', 'tests.settings', '-v', '0']
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=120)
    return location


class FreshCopies:
    """One copy of the template per test: the first process of a test creates it, ``discard`` drops it."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.numbers = itertools.count(1)

    def current_or_new(self) -> str:
        if self.current is None:
            self.current = databases().create(f'{next(self.numbers)}', template=migrated_template())
        return self.current

    def discard(self) -> None:
        if self.current is not None:
            databases().drop(self.current)
            self.current = None


COPIES = FreshCopies()


def processes_database() -> str:
    """The database of the processes of the running test (a SQLite path or a PostgreSQL URL)."""
    return COPIES.current_or_new()


def discard_processes_database() -> None:
    """Drops the running test's copy, if it has one (after the test: its processes are gone)."""
    COPIES.discard()


def connect_processes_database() -> Any:
    """A DB-API connection to the running test's copy, in autocommit, for a test to read what its processes
    wrote (use SQL both SQLite and PostgreSQL understand, without parameters)."""
    return databases().connect(processes_database())


def run_feedback() -> dict[str, tuple[int, bool]]:
    """What the processes wrote back into the running test's rows, by template id: the run count, and whether
    the row has a last run."""
    feedback = {}
    with closing(connect_processes_database()) as connection:
        for model in SCHEDULE_MODELS:
            rows = connection.execute(f'SELECT id, run_count, last_run FROM django_rq_scheduled_{model}')
            feedback |= {keys.template_id(model, pk): (runs, last is not None) for pk, runs, last in rows}
    return feedback
