"""Admin: the cron job change list's SQL queries, Redis round trips and render time at 100 and at 100,000 rows.

The two sizes are two migrated SQLite files (the test client's requests need a database that persists) with the same
user and session; the render times alternate between them round after round.

Run from the repository root: ``PYTHONPATH=. python -m bench.admin_cost [--quick] [--json FILE]``. It starts its own
redis-server on a free loopback port, prints a markdown table, and checks every count it relies on.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = ':memory:'  # replaced by the run's files before the first query

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection as db_connection  # noqa: E402
from django.db import connections  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.common import (  # noqa: E402
    RoundTrips,
    alternate,
    check,
    private_redis,
    ratio_of_medians,
    run_command_line,
    same_or_range,
    spread,
)
from django_rq_scheduled.models import CronJob  # noqa: E402

URL = '/admin/django_rq_scheduled/cronjob/'
PAGE_ROWS = 50


@dataclass(frozen=True)
class Config:
    mode: str
    sizes: tuple[int, int]
    rounds: int
    renders: int  # timed renders of each size a round, after one untimed one


FULL = Config(mode='full', sizes=(100, 100_000), rounds=7, renders=5)
QUICK = Config(mode='quick', sizes=(100, 10_000), rounds=3, renders=3)


def add_rows(start: int, stop: int) -> None:
    """Plain rows (no validation, no sync): the page reads Redis for the rows it shows only."""
    QuerySet(CronJob).bulk_create(
        (CronJob(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(start, stop)),
        batch_size=5000,
    )


def use_database(path: Path) -> None:
    connection = connections['default']
    connection.close()
    connection.settings_dict['NAME'] = str(path)


def databases(client: Client, sizes: tuple[int, int], folder: Path) -> dict[int, Path]:
    """One file per size, the larger a copy of the smaller with more rows: the same user, session and first rows."""
    small, large = sizes
    paths = {small: folder / 'small.sqlite3', large: folder / 'large.sqlite3'}
    use_database(paths[small])
    call_command('migrate', verbosity=0)
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    add_rows(0, small)
    connections['default'].close()
    shutil.copyfile(paths[small], paths[large])
    use_database(paths[large])
    add_rows(small, large)
    return paths


def page_counts(client: Client, rows: int) -> dict[str, int]:
    """SQL queries and Redis round trips of one GET of the change list, and what the page shows."""
    check(client.get(URL).status_code == 200, 'warm-up request failed')  # connections, session
    before = RoundTrips.count
    with CaptureQueriesContext(db_connection) as queries:
        response = client.get(URL)
    check(response.status_code == 200, f'GET {URL}: {response.status_code}')
    content = response.content.decode()
    counts = {
        'rows': QuerySet(CronJob).count(),
        'shown': content.count('name="_selected_action"'),
        'counted_in_page': int(f'{rows} cron jobs' in content),
        'queries': len(queries),
        'round_trips': RoundTrips.count - before,
    }
    check(counts['rows'] == rows, f'{counts["rows"]:,} rows in the table, {rows:,} expected')
    check(counts['shown'] == PAGE_ROWS, f'{rows:,} rows: the page shows {counts["shown"]} rows, not {PAGE_ROWS}')
    check(counts['counted_in_page'] == 1, f'{rows:,} rows: the page does not count them all')
    return counts


def render_round(client: Client, path: Path, rows: int, renders: int) -> dict[str, Any]:
    """Switches to the size's database, checks its page once, then times ``renders`` GETs: their median."""
    use_database(path)
    counts = page_counts(client, rows)
    timings = []
    for _ in range(renders):
        started = time.perf_counter()
        client.get(URL)
        timings.append((time.perf_counter() - started) * 1000)
    return {'ms': statistics.median(timings), 'renders_ms': timings, **counts}


def run(config: Config) -> dict:
    with tempfile.TemporaryDirectory(prefix='drqs-admin-bench-') as folder, private_redis() as server:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        RoundTrips.install()
        client = Client()
        try:
            paths = databases(client, config.sizes, Path(folder))
            measures = {
                str(rows): functools.partial(render_round, client, path, rows, config.renders)
                for rows, path in paths.items()
            }
            return {'pages': alternate(config.rounds, measures)}
        finally:
            connections.close_all()


def report(data: dict) -> str:
    config, pages = data['config'], data['pages']
    small, large = (str(rows) for rows in config['sizes'])
    ms = {rows: [r['ms'] for r in rounds] for rows, rounds in pages.items()}
    lines = [
        f'## Admin: one GET of the cron job change list ({URL}), {PAGE_ROWS} rows a page',
        '',
        f'Render time: median (min - max) over {config["rounds"]} rounds that alternate the sizes, each round the '
        f'median of {config["renders"]} renders.',
        '',
        '| rows | SQL queries | Redis round trips | render ms |',
        '| ---: | ---: | ---: | ---: |',
        *(
            f'| {int(rows):,} | {same_or_range([r["queries"] for r in rounds])} | '
            f'{same_or_range([r["round_trips"] for r in rounds])} | {spread(ms[rows], ".1f")} |'
            for rows, rounds in pages.items()
        ),
        '',
        f'Render time at {int(large):,} rows / at {int(small):,} rows (medians): '
        f'{ratio_of_medians(ms[large], ms[small]):.2f}',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.admin_cost', __doc__, {'full': FULL, 'quick': QUICK}, run, report)
