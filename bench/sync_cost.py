"""Sync cost: creating, updating and deleting N cron job rows through the ORM, with the app's sync and without it.

"Without" runs the same operations on the same model with the app's signal receivers disconnected and its
QuerySet methods bypassed (a plain ``django.db.models.QuerySet``): the price of a table Django alone would write.
The two alternate round after round.

Run from the repository root: ``PYTHONPATH=. python -m bench.sync_cost [--quick] [--json FILE]``. It starts its own
redis-server on a free loopback port, uses an in-memory SQLite database, prints a markdown table, and checks every
count it relies on.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
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
from django.db.models.signals import post_delete, post_save, pre_save  # noqa: E402

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
from django_rq_scheduled import signals  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from django_rq_scheduled.models import CronJob  # noqa: E402

UID = 'django_rq_scheduled.CronJob'
OPERATIONS = ('create', 'update', 'delete')
MODES = ('one by one', 'bulk')
WITH, WITHOUT = 'with app', 'without app'


@dataclass(frozen=True)
class Config:
    mode: str
    rows: int
    rounds: int


FULL = Config(mode='full', rows=10_000, rounds=5)
QUICK = Config(mode='quick', rows=1_000, rounds=2)


class Queries:
    count = 0


def count_query(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
    # An execute wrapper rather than CaptureQueriesContext: Django's query log keeps only the last 9,000 queries.
    Queries.count += 1
    return execute(sql, params, many, context)


@contextmanager
def without_app() -> Iterator[None]:
    """The app's receivers disconnected for CronJob, reconnected afterwards (its QuerySet is bypassed by callers)."""
    pre_save.disconnect(sender=CronJob, dispatch_uid=f'{UID}.validate')
    post_save.disconnect(sender=CronJob, dispatch_uid=f'{UID}.sync')
    post_delete.disconnect(sender=CronJob, dispatch_uid=f'{UID}.delete')
    try:
        yield
    finally:
        signals.connect()


def fields(i: int) -> dict[str, str]:
    return {'name': f'c{i}', 'callable': 'tests.tasks.add', 'cron_string': '*/5 * * * *'}


def new_rows(count: int) -> list[CronJob]:
    return [CronJob(**fields(i)) for i in range(count)]


def one_by_one(count: int, rows: list[CronJob]) -> dict[str, Callable[[], None]]:
    """Each row saved or deleted on its own; ``rows`` is filled with the created rows before the update."""

    def create() -> None:
        for i in range(count):
            CronJob.objects.create(**fields(i))

    def update() -> None:
        for row in rows:
            row.description = 'changed one by one'
            row.save()

    def delete() -> None:
        for row in rows:
            row.delete()

    return {'create': create, 'update': update, 'delete': delete}


def bulk(queryset: QuerySet, count: int) -> dict[str, Callable[[], None]]:
    def create() -> None:
        queryset.bulk_create(new_rows(count))

    def update() -> None:
        check(queryset.all().update(description='changed in bulk') == count, 'bulk update: rows touched')

    def delete() -> None:
        check(queryset.all().delete()[0] == count, 'bulk delete: rows deleted')

    return {'create': create, 'update': update, 'delete': delete}


def measure(operation: Callable[[], None]) -> dict[str, Any]:
    trips, queries = RoundTrips.count, Queries.count
    started = time.perf_counter()
    operation()
    seconds = time.perf_counter() - started
    return {'seconds': seconds, 'round_trips': RoundTrips.count - trips, 'queries': Queries.count - queries}


def run_mode(mode: str, system: str, count: int, connection: redis.Redis) -> dict[str, Any]:
    """Creates, updates and deletes ``count`` rows in one mode; counts rows and Redis templates after each step."""
    plain = QuerySet(CronJob)
    rows: list[CronJob] = []
    with_app = system == WITH
    if mode == 'one by one':
        operations = one_by_one(count, rows)
    else:
        operations = bulk(CronJob.objects.all() if with_app else plain, count)
    costs: dict[str, Any] = {}
    counts: dict[str, int] = {}
    with nullcontext() if with_app else without_app():
        costs['create'] = measure(operations['create'])
        counts['rows after create'] = plain.count()
        counts['templates after create'] = connection.zcard(keys.SCHEDULED_JOBS_KEY)
        rows[:] = plain.order_by('pk')
        costs['update'] = measure(operations['update'])
        counts['rows updated'] = plain.exclude(description='').count()
        counts['templates after update'] = connection.zcard(keys.SCHEDULED_JOBS_KEY)
        costs['delete'] = measure(operations['delete'])
        counts['rows after delete'] = plain.count()
        counts['templates after delete'] = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    check(counts == expected_counts(count, with_app), f'{mode}, {system}: counts {counts}')
    if not with_app:
        trips = sum(cost['round_trips'] for cost in costs.values())
        check(trips == 0, f'{mode}, {system}: {trips} Redis round trips')
    connection.flushdb()
    return {**costs, 'counts': counts}


def expected_counts(count: int, with_app: bool) -> dict[str, int]:
    templates = count if with_app else 0
    return {
        'rows after create': count,
        'templates after create': templates,
        'rows updated': count,
        'templates after update': templates,
        'rows after delete': 0,
        'templates after delete': 0,
    }


def run(config: Config) -> dict:
    with private_redis() as server:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        connection = redis.Redis.from_url(server.url)
        RoundTrips.install()
        measures = {
            (mode, system): functools.partial(run_mode, mode, system, config.rows, connection)
            for mode in MODES
            for system in (WITH, WITHOUT)
        }
        with db_connection.execute_wrapper(count_query):
            rounds = alternate(config.rounds, measures)
        connection.connection_pool.disconnect()
    results: dict[str, dict[str, list]] = {mode: {} for mode in MODES}
    for (mode, system), runs in rounds.items():
        results[mode][system] = runs
    return {'results': results}


def rows_of_table(results: dict[str, dict[str, list[dict]]]) -> list[str]:
    rows = [
        f'| operation | mode | {WITH} ms | {WITHOUT} ms | ratio of medians | Redis round trips | '
        'SQL queries (with / without) |',
        '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ]
    for operation in OPERATIONS:
        for mode in MODES:
            costs = {system: [run[operation] for run in runs] for system, runs in results[mode].items()}
            ms = {system: [cost['seconds'] * 1000 for cost in values] for system, values in costs.items()}
            trips = same_or_range([cost['round_trips'] for cost in costs[WITH]])
            queries = {system: same_or_range([cost['queries'] for cost in values]) for system, values in costs.items()}
            ratio = ratio_of_medians(ms[WITH], ms[WITHOUT])
            rows.append(
                f'| {operation} | {mode} | {spread(ms[WITH], ",.1f")} | {spread(ms[WITHOUT], ",.1f")} | {ratio:,.1f} | '
                f'{trips} | {queries[WITH]} / {queries[WITHOUT]} |'
            )
    return rows


def report(data: dict) -> str:
    config = data['config']
    lines = [
        f'## Sync cost: create, update and delete {config["rows"]:,} cron job rows through the ORM, '
        f'median (min - max) of {config["rounds"]} rounds, with and without the app alternated',
        '',
        *rows_of_table(data['results']),
        '',
        'Update changes `description`, a definition field: each row is validated and synced. '
        'Without the app, no Redis round trip is made.',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.sync_cost', __doc__, {'full': FULL, 'quick': QUICK}, run, report)
