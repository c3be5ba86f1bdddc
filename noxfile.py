"""The version matrix: Django 4.2 / 5.1 / 5.2 x RQ at its declared floor / latest x SQLite / PostgreSQL.

A "floor" cell installs every declared floor at once (rq, django-rq, redis-py, croniter, cron-descriptor); a
"latest" cell lets pip take the newest releases. Each cell runs MATRIX_TESTS: the tests that touch the ORM, RQ and
Redis (models, sync and reconciliation, the moves, the API, rq-scheduler interop, the admin, the command, and the
adversarial modules of those). The full suite runs on the default combination (``make test``).

    nox -s matrix        # all 12 cells, by hand (about 30 minutes on 2 cores)
    nox -s ci            # the cells .ci/run runs: with the default suite, every pair of values of two axes meets
    nox -l               # the list
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = 'venv'
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ['ci']

DJANGO = {'4.2': 'django>=4.2,<4.3', '5.1': 'django>=5.1,<5.2', '5.2': 'django>=5.2,<5.3'}
FLOORS = [
    'rq==2.6.0', 'django-rq==3.0.0', 'redis[hiredis]==4.6.0', 'croniter==6.1.0', 'cron-descriptor==1.4.0',
    'prometheus_client==0.17.0',
]  # fmt: skip
STACK = {
    'floor': FLOORS,  # the floors pyproject.toml declares, all at once
    'latest': ['rq', 'django-rq', 'redis[hiredis]', 'croniter', 'cron-descriptor', 'prometheus_client'],
}
DATABASES = ('sqlite', 'postgres')
TEST_TOOLS = [
    'pytest>=8', 'pytest-django>=4.8', 'pytest-xdist>=3.5', 'fakeredis[lua]>=2.26', 'time-machine>=2.13',
    'hypothesis>=6.100', 'rq-scheduler==0.14.0', 'psycopg[binary]>=3.1', 'django-tasks>=0.12', 'django-tasks-rq>=0.12',
]  # fmt: skip
MATRIX_TESTS = [
    'tests/test_models.py',
    'tests/test_reconcile.py',
    'tests/test_moves.py',
    'tests/test_scheduler_api.py',
    'tests/test_interop.py',
    'tests/test_admin.py',
    'tests/test_command.py',
    'tests/test_metrics.py',
    'tests/test_rq_scheduler_parity.py',
    'tests/adversarial/test_sync.py',
    'tests/adversarial/test_api.py',
    'tests/adversarial/test_loop.py',
    'tests/adversarial/test_model_input.py',
    'tests/test_django_tasks.py',
]
# With the default suite (Django 5.2, latest, on SQLite and then PostgreSQL), these five cells make every pair of
# values of any two axes meet at least once, in about a third of the time of all twelve.
CI_CELLS = [
    ('4.2', 'floor', 'sqlite'),
    ('4.2', 'latest', 'postgres'),
    ('5.1', 'floor', 'postgres'),
    ('5.1', 'latest', 'sqlite'),
    ('5.2', 'floor', 'sqlite'),
]


def run_cell(session: nox.Session, django: str, stack: str, database: str) -> None:
    session.install('-e', '.', DJANGO[django], *STACK[stack], *TEST_TOOLS)
    session.run('python', '-m', 'pip', 'list', '--format=freeze', silent=False)
    where = '--postgres-only' if database == 'postgres' else '--no-postgres'
    session.run('python', 'runtests.py', where, '-q', '-p', 'no:cacheprovider', *session.posargs, *MATRIX_TESTS)


@nox.session
@nox.parametrize('database', DATABASES)
@nox.parametrize('stack', list(STACK))
@nox.parametrize('django', list(DJANGO))
def matrix(session: nox.Session, django: str, stack: str, database: str) -> None:
    """One cell of the matrix."""
    run_cell(session, django, stack, database)


@nox.session
@nox.parametrize(('django', 'stack', 'database'), CI_CELLS)
def ci(session: nox.Session, django: str, stack: str, database: str) -> None:
    """The cells that CI runs next to the default suite."""
    run_cell(session, django, stack, database)
