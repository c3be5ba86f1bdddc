"""Admin: the cron job change list's SQL queries, Redis round trips and render time at 100 and at 100,000 rows.

Run as ``PYTHONPATH=. python -m bench.admin_cost [--quick]`` from the repository root. It starts its own redis-server
on a free loopback port, uses a migrated SQLite file database in a temporary directory (the test client's requests
need one that persists), prints a markdown table, and checks every count it relies on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
DATABASE_DIR = tempfile.mkdtemp(prefix='drqs-admin-bench-')
os.environ['DRQS_TEST_DB'] = str(Path(DATABASE_DIR) / 'admin.sqlite3')  # read by tests.settings
warnings.filterwarnings('ignore', category=FutureWarning, module='rq_scheduler')

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection as db_connection  # noqa: E402
from django.db import connections  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from django_rq_scheduled.models import CronJob  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

URL = '/admin/django_rq_scheduled/cronjob/'
ROUNDS = 7


class CountError(RuntimeError):
    """A benchmark whose counts are wrong measures nothing."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CountError(message)


class RoundTrips:
    count = 0


def count_round_trips() -> None:
    original = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: object, check_health: bool = True) -> None:
        RoundTrips.count += 1
        return original(self, command, check_health)

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]


def add_rows(start: int, stop: int) -> None:
    """Plain rows (no validation, no sync): the page reads Redis for the rows it shows only."""
    QuerySet(CronJob).bulk_create(
        (CronJob(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(start, stop)),
        batch_size=5000,
    )


@dataclass
class PageCost:
    rows: int
    queries: int
    round_trips: int
    best_ms: float


def page_cost(client: Client, rows: int) -> PageCost:
    """SQL queries and Redis round trips of one GET of the change list, and the best of ``ROUNDS`` render times."""
    check(QuerySet(CronJob).count() == rows, f'{QuerySet(CronJob).count()} rows in the table, {rows} expected')
    check(client.get(URL).status_code == 200, 'warm-up request failed')  # connections, session
    before = RoundTrips.count
    with CaptureQueriesContext(db_connection) as queries:
        response = client.get(URL)
    trips = RoundTrips.count - before
    query_count = len(queries)  # read now: the next request resets Django's query log
    check(response.status_code == 200, f'GET {URL}: {response.status_code}')
    content = response.content.decode()
    shown = content.count('name="_selected_action"')
    check(shown == 50, f'{rows:,} rows: the page shows {shown} rows, not 50')
    check(f'{rows} cron jobs' in content, f'{rows:,} rows: the page does not count them all')
    timings = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        client.get(URL)
        timings.append(time.perf_counter() - started)
    return PageCost(rows, query_count, trips, min(timings) * 1000)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true', help='100 and 10,000 rows instead of 100 and 100,000')
    options = parser.parse_args(argv)
    small, large = (100, 10_000) if options.quick else (100, 100_000)
    server = RedisServer().start()
    try:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        count_round_trips()
        client = Client()
        client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
        add_rows(0, small)
        costs = [page_cost(client, small)]
        add_rows(small, large)
        costs.append(page_cost(client, large))
        print(f'## Admin: one GET of the cron job change list ({URL}), 50 rows a page\n')
        print('| rows | SQL queries | Redis round trips | best of 7 ms |\n| ---: | ---: | ---: | ---: |')
        for cost in costs:
            print(f'| {cost.rows:,} | {cost.queries} | {cost.round_trips} | {cost.best_ms:.1f} |')
        print(f'\nRender time at {large:,} rows / at {small:,} rows: {costs[1].best_ms / costs[0].best_ms:.2f}')
    finally:
        server.close()
        connections.close_all()
        shutil.rmtree(DATABASE_DIR, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
