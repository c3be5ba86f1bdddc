"""Sync cost: creating, updating and deleting N cron job rows through the ORM, with the app's sync and without it.

"Without" runs the same operations on the same model with the app's signal receivers disconnected and its
QuerySet methods bypassed (a plain ``django.db.models.QuerySet``): the price of a table Django alone would write.

Run as ``PYTHONPATH=. python -m bench.sync_cost [--quick]`` from the repository root. It starts its own redis-server
on a free loopback port, uses an in-memory SQLite database, prints a markdown table, and checks every count it relies
on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = ':memory:'  # one private database per run, migrated at start
warnings.filterwarnings('ignore', category=FutureWarning, module='rq_scheduler')

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection as db_connection  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.db.models.signals import post_delete, post_save, pre_save  # noqa: E402

from django_rq_scheduled import keys, signals  # noqa: E402
from django_rq_scheduled.models import CronJob  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

UID = 'django_rq_scheduled.CronJob'
OPERATIONS = ('create', 'update', 'delete')
MODES = ('one by one', 'bulk')


class CountError(RuntimeError):
    """A benchmark whose counts are wrong measures nothing."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CountError(message)


class Counters:
    """Redis round trips (every packed command sent) and SQL statements (every execute) since the last reset."""

    round_trips = 0
    queries = 0

    @classmethod
    def reset(cls) -> None:
        cls.round_trips = cls.queries = 0


def count_round_trips() -> None:
    original = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: object, check_health: bool = True) -> None:
        Counters.round_trips += 1
        return original(self, command, check_health)

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]


def count_query(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
    # An execute wrapper rather than CaptureQueriesContext: Django's query log keeps only the last 9,000 queries.
    Counters.queries += 1
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


def new_rows(count: int) -> list[CronJob]:
    return [CronJob(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *') for i in range(count)]


@dataclass
class Cost:
    seconds: float
    round_trips: int
    queries: int


def measure(operation: Callable[[], None]) -> Cost:
    Counters.reset()
    started = time.perf_counter()
    operation()
    seconds = time.perf_counter() - started
    return Cost(seconds, Counters.round_trips, Counters.queries)


def run_mode(mode: str, with_app: bool, count: int, connection: redis.Redis) -> dict[str, Cost]:
    """Creates, updates and deletes ``count`` rows in one mode; checks rows and Redis templates after each step."""
    plain = QuerySet(CronJob)
    rows: list[CronJob] = []
    if mode == 'one by one':

        def create() -> None:
            for i in range(count):
                CronJob.objects.create(name=f'c{i}', callable='tests.tasks.add', cron_string='*/5 * * * *')

        def update() -> None:
            for row in rows:
                row.description = 'changed one by one'
                row.save()

        def delete() -> None:
            for row in rows:
                row.delete()

    elif with_app:

        def create() -> None:
            CronJob.objects.bulk_create(new_rows(count))

        def update() -> None:
            check(CronJob.objects.update(description='changed in bulk') == count, 'bulk update: rows touched')

        def delete() -> None:
            check(CronJob.objects.all().delete()[0] == count, 'bulk delete: rows deleted')

    else:

        def create() -> None:
            plain.bulk_create(new_rows(count))

        def update() -> None:
            check(plain.all().update(description='changed in bulk') == count, 'bulk update: rows touched')

        def delete() -> None:
            check(plain.all().delete()[0] == count, 'bulk delete: rows deleted')

    label = f'{mode}, {"with" if with_app else "without"} app'
    expected_templates = count if with_app else 0
    costs = {'create': measure(create)}
    check(plain.count() == count, f'{label}: {plain.count()} rows after create')
    templates = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    check(templates == expected_templates, f'{label}: {templates} templates after create')
    rows[:] = list(plain.order_by('pk'))
    costs['update'] = measure(update)
    check(plain.exclude(description='').count() == count, f'{label}: not every row updated')
    templates = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    check(templates == expected_templates, f'{label}: {templates} templates after update')
    costs['delete'] = measure(delete)
    check(plain.count() == 0, f'{label}: {plain.count()} rows after delete')
    templates = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    check(templates == 0, f'{label}: {templates} templates after delete')
    connection.flushdb()
    return costs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true', help='1,000 rows instead of 10,000')
    options = parser.parse_args(argv)
    count = 1_000 if options.quick else 10_000
    server = RedisServer().start()
    try:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        connection = redis.Redis.from_url(server.url)
        count_round_trips()
        results: dict[tuple[str, str], dict[bool, Cost]] = {}
        with db_connection.execute_wrapper(count_query):
            for mode in MODES:
                with_costs = run_mode(mode, True, count, connection)
                with without_app():
                    without_costs = run_mode(mode, False, count, connection)
                for operation in OPERATIONS:
                    results[operation, mode] = {True: with_costs[operation], False: without_costs[operation]}
        check(all(cost[False].round_trips == 0 for cost in results.values()), 'without the app, Redis was used')
        print(f'## Sync cost: create, update and delete {count:,} cron job rows through the ORM\n')
        print(
            '| operation | mode | with app s | without app s | overhead ratio | Redis round trips | SQL queries '
            '(with / without) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |'
        )
        for operation in OPERATIONS:
            for mode in MODES:
                ours, plain = results[operation, mode][True], results[operation, mode][False]
                print(
                    f'| {operation} | {mode} | {ours.seconds:.3f} | {plain.seconds:.3f} | '
                    f'{ours.seconds / plain.seconds:.1f} | {ours.round_trips:,} | '
                    f'{ours.queries:,} / {plain.queries:,} |'
                )
        print(
            '\nUpdate changes `description`, a definition field: each row is validated and synced. '
            'Without the app, no Redis round trip is made.'
        )
    finally:
        server.close()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
