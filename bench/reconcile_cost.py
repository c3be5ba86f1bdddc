"""Reconciliation cost: the leader's periodic pass over an unchanged table of N cron job rows, a full sweep of the
table by those passes, and a full pass, at several sizes.

The rows are made without the app (a plain ``QuerySet.bulk_create``), and Redis is given what a sync would have
written for each (its version and its schedule entry; the template hashes themselves are left out: a pass over an
unchanged row reads the version, the score and the meta, and finds no meta: a real pass reads some more bytes). The
rows' ``modified`` is set an hour back, so none of them counts as changed.

Per pass: SQL queries and the time the database spent executing them (an execute wrapper: the time of each
statement's execution, not the building of model instances), Redis round trips, and the pass's own time.

Run from the repository root: ``PYTHONPATH=. python -m bench.reconcile_cost [--quick] [--json FILE]``. It starts its
own redis-server on a free loopback port, uses an in-memory SQLite database (or the PostgreSQL database that
``DRQS_TEST_POSTGRES_URL`` names, as the test settings do), prints markdown tables, and checks every count it relies
on.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = ':memory:'  # one private database per run, migrated at start

import django

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection as db_connection  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.common import RoundTrips, check, private_redis, run_command_line  # noqa: E402
from django_rq_scheduled import reconciliation, sync  # noqa: E402
from django_rq_scheduled.conf import reconcile_sweep_rows  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from django_rq_scheduled.models import SCHEDULE_MODELS, CronJob  # noqa: E402
from django_rq_scheduled.reconciliation import Reconciler, read_state  # noqa: E402

UTC = timezone.utc
INTERVAL = 60.0  # RECONCILE_INTERVAL's default
DATABASES = {'sqlite': 'SQLite in memory', 'postgresql': 'PostgreSQL (DRQS_TEST_POSTGRES_URL)'}
CREATE_BATCH = 20_000


@dataclass(frozen=True)
class Config:
    mode: str
    sizes: tuple[int, ...]
    passes: int
    """Periodic passes measured at each size (a whole sweep is run too, and timed)."""
    full_pass_up_to: int
    """Sizes up to this one also time a full pass ..."""
    sweep_up_to: int
    """... and a whole sweep by periodic passes."""


FULL = Config(
    mode='full', sizes=(10_000, 100_000, 1_000_000), passes=20, full_pass_up_to=1_000_000, sweep_up_to=1_000_000
)
QUICK = Config(mode='quick', sizes=(10_000, 50_000), passes=5, full_pass_up_to=10_000, sweep_up_to=10_000)


class Database:
    queries = 0
    seconds = 0.0


def timed_query(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        Database.queries += 1
        Database.seconds += time.perf_counter() - started


@contextmanager
def counted() -> Iterator[dict[str, float]]:
    costs: dict[str, float] = {}
    queries, seconds, trips = Database.queries, Database.seconds, RoundTrips.count
    started = time.perf_counter()
    yield costs
    costs['seconds'] = time.perf_counter() - started
    costs['queries'] = Database.queries - queries
    costs['db_ms'] = (Database.seconds - seconds) * 1000
    costs['round_trips'] = RoundTrips.count - trips


def grow_to(size: int, connection: redis.Redis) -> float:
    """Adds rows (and what their sync would have written to Redis) until the table holds ``size``; seconds taken."""
    started = time.perf_counter()
    plain = QuerySet(CronJob)
    have = plain.count()
    score = (datetime.now(UTC) + timedelta(days=1)).timestamp()
    for start in range(have, size, CREATE_BATCH):
        rows = [
            CronJob(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *')
            for i in range(start, min(size, start + CREATE_BATCH))
        ]
        plain.bulk_create(rows, batch_size=2000)
        with connection.pipeline(transaction=False) as pipe:
            pipe.hset(keys.VERSIONS_KEY, mapping={row.template_id: row.version() for row in rows})
            pipe.zadd(keys.SCHEDULED_JOBS_KEY, {row.template_id: score for row in rows})
            pipe.execute()
    plain.update(modified=datetime.now(UTC) - timedelta(hours=1))  # unchanged since well before the passes
    if db_connection.vendor == 'postgresql':
        with db_connection.cursor() as cursor:
            cursor.execute('ANALYZE django_rq_scheduled_cronjob')  # as autovacuum would after so many inserts
    check(plain.count() == size, f'{size} rows made')
    check(connection.zcard(keys.SCHEDULED_JOBS_KEY) == size, f'{size} schedule entries')
    return time.perf_counter() - started


def one_pass(connection: redis.Redis, *, full: bool = False) -> dict[str, float]:
    captured = CaptureQueriesContext(db_connection)
    with nullcontext() if full else captured, counted() as costs:  # a full pass makes more queries than Django logs
        report = Reconciler(connection).run(full=full)
    check(report.written == report.removed == report.failed == [], f'nothing to repair: {report}')
    if not full:
        costs['db_fetch_ms'] = replayed_ms([query['sql'] for query in captured.captured_queries])
    return costs


def replayed_ms(statements: list[str]) -> float:
    """The database's time for a pass's statements, each executed again and its rows all fetched (the execute
    wrapper times a SELECT's execution, and SQLite hands its rows over afterwards)."""
    raw = db_connection.connection
    started = time.perf_counter()
    for sql in statements:
        raw.execute(sql).fetchall()
    return (time.perf_counter() - started) * 1000


def sweep(connection: redis.Redis) -> dict[str, float]:
    """Periodic passes from the first row until the rolling sweep has verified every row; their number and time."""
    connection.hset(keys.RECONCILE_KEY, mapping={'model': 0, 'after': ''})  # the cursor back at the start
    began = read_state(connection)
    check(began is not None, 'a state to sweep from')
    passes = []
    while True:
        passes.append(one_pass(connection))
        state = read_state(connection)
        check(state is not None and state.epoch == began.epoch, 'no full pass in a sweep')
        if state.swept_at > began.swept_at:
            break
    return {
        'passes': len(passes),
        'work_s': sum(cost['seconds'] for cost in passes),
        'db_ms': sum(cost['db_ms'] for cost in passes),
        'duration_h': len(passes) * INTERVAL / 3600,
    }


def index_used() -> str:
    since = datetime.now(UTC)
    sql, params = CronJob._base_manager.filter(modified__gte=since).order_by().values_list('pk').query.sql_with_params()
    explain = 'EXPLAIN QUERY PLAN' if db_connection.vendor == 'sqlite' else 'EXPLAIN'
    with db_connection.cursor() as cursor:
        cursor.execute(f'{explain} {sql}', params)
        return ' '.join(str(row[-1]).strip() for row in cursor.fetchall())


def measure_size(size: int, config: Config, connection: redis.Redis) -> dict[str, Any]:
    made = grow_to(size, connection)
    result: dict[str, Any] = {'rows': size, 'made_s': made}
    if size <= config.full_pass_up_to:
        result['full_pass'] = one_pass(connection, full=True)
    else:
        Reconciler(connection).run(full=True)
    passes = [one_pass(connection) for _ in range(config.passes)]
    result['pass'] = {name: [cost[name] for cost in passes] for name in passes[0]}
    if size <= config.sweep_up_to:
        result['sweep'] = sweep(connection)
    return result


def run(config: Config) -> dict:
    results = []
    with private_redis() as server:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        connection = redis.Redis.from_url(server.url)
        RoundTrips.install()
        with db_connection.execute_wrapper(timed_query):
            for size in config.sizes:
                results.append(measure_size(size, config, connection))
        plan = index_used()
        connection.connection_pool.disconnect()
    check('drqs_cronjob_modified' in plan, f'the changed rows are read on the index: {plan}')
    return {
        'results': results, 'changed_rows_plan': plan, 'sweep_rows': reconcile_sweep_rows(),
        'database': db_connection.vendor,
        'changed_margin_s': reconciliation.CHANGED_MARGIN, 'models': len(SCHEDULE_MODELS), 'batch': sync.BATCH,
    }  # fmt: skip


def median(values: list[float]) -> float:
    return statistics.median(values)


def sweep_cells(sweep_: dict | None) -> str:
    if sweep_ is None:
        return 'not run | | '
    hours = sweep_['duration_h']
    duration = f'{hours * 60:.0f} min' if hours < 2 else f'{hours:.1f} h'
    return f'{sweep_["passes"]:,} | {duration} | {sweep_["work_s"]:.1f}'


def cell(values: list[float], fmt: str) -> str:
    return f'{median(values):{fmt}} ({max(values):{fmt}})'


def report(data: dict) -> str:
    config = data['config']
    lines = [
        f'## Reconciliation: the periodic pass over an unchanged table of cron job rows, median (max) of '
        f'{config["passes"]} passes; {DATABASES.get(data["database"], data["database"])}, '
        f'{data["sweep_rows"]:,} rows swept per pass',
        '',
        '| rows | SQL queries | database ms: executed | database ms: with rows fetched | Redis round trips | pass ms '
        '| full sweep: passes | full sweep at 60 s | full sweep: work s | full pass s (queries) |',
        '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for result in data['results']:
        costs = result['pass']
        full = result.get('full_pass')
        full_text = f'{full["seconds"]:.1f} ({full["queries"]:,})' if full else 'not run'
        lines.append(
            f'| {result["rows"]:,} | {cell(costs["queries"], ".0f")} | {cell(costs["db_ms"], ".2f")} '
            f'| {cell(costs["db_fetch_ms"], ".2f")} | {cell(costs["round_trips"], ".0f")} '
            f'| {cell([seconds * 1000 for seconds in costs["seconds"]], ".1f")} '
            f'| {sweep_cells(result.get("sweep"))} | {full_text} |'
        )
    lines += [
        '',
        f'The changed rows are read on the index: `{data["changed_rows_plan"]}`.',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.reconcile_cost', __doc__, {'full': FULL, 'quick': QUICK}, run, report)
