#!/usr/bin/env python
"""Run the test suite with pytest on SQLite, then the tests where the database matters again on PostgreSQL.

``runtests.py [--no-postgres | --postgres-only] [pytest arguments]``. The PostgreSQL pass starts a throwaway
cluster (tests/postgres_server.py) and runs POSTGRES_TESTS there, or those of the given test paths that are among
them; the processes those tests start (``manage.py rqscheduler``) get a database of their own in the same cluster
(tests/processes_database.py). ``--postgres-only`` skips the SQLite pass and runs the given tests, whichever they
are, on PostgreSQL. It is skipped, with a message, where PostgreSQL is not installed (in CI that is a failure),
with ``--no-postgres``, and when ``DRQS_TEST_POSTGRES_URL`` already puts the first pass on a PostgreSQL. Either pass
failing fails the run, and an empty pass (pytest exit code 5) counts as a failure.

Both passes run on pytest-xdist's workers, one per core up to ``MAX_WORKERS`` (each starts its own redis-server and
processes' databases), unless the arguments choose (``-n 0``, ``-n 4``, ``-p no:xdist``) or pytest-xdist is not
installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

NO_TESTS_COLLECTED = 5
MAX_WORKERS = 4
"""More workers than this start more real processes at once than they save time."""
ROOT = Path(__file__).resolve().parent
POSTGRES_TESTS = (
    'tests/test_models.py',
    'tests/test_fuzz_models.py',
    'tests/adversarial/test_model_input.py',
    'tests/adversarial/test_sync.py',
    'tests/adversarial/test_admin_actions.py',
    'tests/test_reconcile.py',
    'tests/test_admin.py',
    'tests/test_faults.py',
    'tests/test_outages.py',
    'tests/test_run_history.py',
    'tests/test_bulk.py',
    'tests/test_bulk_validation.py',
    'tests/test_runs_admin.py',
    'tests/test_schedules_command.py',
)


def main(argv: list[str]) -> int:
    with_postgres = '--no-postgres' not in argv
    postgres_only = '--postgres-only' in argv
    argv = with_workers([arg for arg in argv if arg not in ('--no-postgres', '--postgres-only')])
    if postgres_only:
        return postgres_pass(argv, only_postgres_tests=False)
    database = 'PostgreSQL' if os.environ.get('DRQS_TEST_POSTGRES_URL') else 'SQLite'
    code = checked(database, pytest.main(argv))
    if with_postgres:
        code = postgres_pass(argv) or code
    return code


def with_workers(argv: list[str]) -> list[str]:
    """``argv`` with pytest-xdist's workers, one per core, unless it chooses itself or pytest-xdist is missing."""
    chosen = any(arg.startswith(('-n', '--numprocesses', '--dist')) or 'xdist' in arg for arg in argv)
    if chosen or importlib.util.find_spec('xdist') is None:
        return argv
    return ['--numprocesses', 'auto', '--maxprocesses', str(MAX_WORKERS), *argv]


def checked(name: str, code: int) -> int:
    if code == NO_TESTS_COLLECTED:
        print(f'runtests.py: the {name} pass collected no tests; failing on purpose.', file=sys.stderr)
        return 1
    return int(code)


def postgres_pass(argv: list[str], *, only_postgres_tests: bool = True) -> int:
    from tests.postgres_server import find_bindir, start_postgres

    if os.environ.get('DRQS_TEST_POSTGRES_URL'):
        return 0  # the first pass ran on PostgreSQL already
    options, paths = split_paths(argv)
    selected = postgres_paths(paths) if only_postgres_tests else paths or ['tests']
    if not selected:
        print('\nruntests.py: none of the given tests runs on PostgreSQL; the PostgreSQL pass is skipped.')
        return 0
    if find_bindir() is None:
        message = (
            'runtests.py: PostgreSQL is not installed (no initdb on PATH, in DRQS_TEST_PG_BINDIR or in '
            '/usr/lib/postgresql/*/bin); the PostgreSQL pass is skipped. Install it with `apt-get install postgresql`.'
        )
        print(f'\n{message}', file=sys.stderr)
        return 1 if os.environ.get('CI') or not only_postgres_tests else 0
    started = time.monotonic()
    server = start_postgres()
    print(f'\nruntests.py: PostgreSQL pass on a throwaway cluster at 127.0.0.1:{server.port}: {" ".join(selected)}')
    try:
        env = {**os.environ, 'DRQS_TEST_POSTGRES_URL': server.url}
        code = subprocess.call([sys.executable, '-m', 'pytest', *options, *selected], cwd=ROOT, env=env)
    finally:
        server.close()
    print(f'runtests.py: PostgreSQL pass finished in {time.monotonic() - started:.0f} s (pytest exit code {code}).')
    return checked('PostgreSQL', code)


def split_paths(argv: list[str]) -> tuple[list[str], list[str]]:
    """The options (and their values), and the arguments naming test files or folders (with an optional ::id)."""
    options, paths = [], []
    for arg in argv:
        is_path = not arg.startswith('-') and (ROOT / arg.split('::')[0]).exists()
        (paths if is_path else options).append(arg)
    return options, paths


def postgres_paths(paths: list[str]) -> list[str]:
    """POSTGRES_TESTS, narrowed to the given paths when there are any."""
    if not paths:
        return list(POSTGRES_TESTS)
    selected = []
    for path in paths:
        given = (ROOT / path.split('::')[0]).resolve()
        for candidate in POSTGRES_TESTS:
            known = (ROOT / candidate).resolve()
            if given == known or known in given.parents:
                selected.append(path)  # a PostgreSQL test file, folder, or a test inside one
                break
            if given in known.parents:
                selected.append(candidate)  # a folder holding PostgreSQL tests: those only
    return list(dict.fromkeys(selected))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
