"""Scale: tick cost with many future entries, memory per template, and the loop's RSS over many occurrences.

Run as ``PYTHONPATH=. python -m bench.scale [--quick]`` from the repository root. It starts its own redis-server
on a free loopback port, prints markdown tables, and checks every count it relies on.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
warnings.filterwarnings('ignore', category=FutureWarning, module='rq_scheduler')

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from rq_scheduler import Scheduler as RQScheduler  # noqa: E402

from django_rq_scheduled import Scheduler, keys  # noqa: E402
from tests import tasks  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

UTC = timezone.utc


class CountError(RuntimeError):
    """A benchmark whose counts are wrong measures nothing."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CountError(message)


def add_future_entries(connection: redis.Redis, count: int) -> None:
    """Future schedule entries (their hashes are never read by a tick, so none are written)."""
    future = time.time() + 86_400
    with connection.pipeline(transaction=False) as pipe:
        for start in range(0, count, 10_000):
            pipe.zadd(
                keys.SCHEDULED_JOBS_KEY, {f'future-{i}': future + i for i in range(start, min(count, start + 10_000))}
            )
            pipe.execute()


def tick_cost(connection: redis.Redis, future: int, due: int, rounds: int) -> dict[str, float]:
    """Median ms of one pass that moves ``due`` jobs with ``future`` other entries in the schedule."""
    connection.flushdb()
    add_future_entries(connection, future)
    ours, theirs = Scheduler(connection=connection), RQScheduler(connection=connection)
    past = datetime.now(UTC) - timedelta(seconds=10)
    timings: dict[str, list[float]] = {'ours': [], 'rq-scheduler': []}
    for _ in range(rounds):
        for name, mover in (('ours', ours.enqueue_jobs), ('rq-scheduler', theirs.enqueue_jobs)):
            ids = [f'due-{name}-{i}' for i in range(due)]
            for job_id in ids:
                ours.enqueue_at(past, tasks.add, 1, 2, job_id=job_id)
            connection.delete('rq:queue:default')
            started = time.perf_counter()
            mover()
            timings[name].append((time.perf_counter() - started) * 1000)
            check(connection.llen('rq:queue:default') == due, f'{name}: moved {connection.llen("rq:queue:default")}')
            check(connection.zcard(keys.SCHEDULED_JOBS_KEY) == future, f'{name}: schedule size changed')
            connection.delete(*[keys.job_key(job_id) for job_id in ids])
    return {name: statistics.median(values) for name, values in timings.items()}


def memory_per_template(connection: redis.Redis, count: int) -> dict[str, float]:
    """Bytes of Redis memory per cron template: ours vs rq-scheduler's (job hash + schedule entry)."""
    results = {}
    for name, make in (
        ('ours', lambda i: Scheduler(connection=connection).cron('*/5 * * * *', tasks.add, args=[i], id=f'c{i}')),
        (
            'rq-scheduler',
            lambda i: RQScheduler(connection=connection).cron('*/5 * * * *', tasks.add, args=[i], id=f'c{i}'),
        ),
    ):
        connection.flushdb()
        before = connection.info('memory')['used_memory']
        for i in range(count):
            make(i)
        check(connection.zcard(keys.SCHEDULED_JOBS_KEY) == count, f'{name}: {count} templates expected')
        results[name] = (connection.info('memory')['used_memory'] - before) / count
    return results


def rss_over_occurrences(connection: redis.Redis, total: int, batch: int) -> list[tuple[int, float]]:
    """The loop's max RSS (MiB) after every ``batch`` occurrences moved, up to ``total``: it should not grow."""
    connection.flushdb()
    scheduler = Scheduler(connection=connection)
    past = datetime.now(UTC) - timedelta(seconds=10)
    samples = []
    moved = 0
    while moved < total:
        ids = [f'o{moved + i}' for i in range(batch)]
        for job_id in ids:
            scheduler.enqueue_at(past, tasks.add, 1, 2, job_id=job_id)
        check(len(scheduler.enqueue_jobs()) == batch, 'a batch did not move whole')
        moved += batch
        connection.flushdb()
        gc.collect()
        samples.append((moved, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return samples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true', help='smaller sizes, about a minute')
    options = parser.parse_args(argv)
    sizes = [1_000, 10_000] if options.quick else [1_000, 100_000, 1_000_000]
    total, batch = (20_000, 5_000) if options.quick else (200_000, 20_000)
    server = RedisServer().start()
    try:
        connection = redis.Redis.from_url(server.url)
        print('## Tick cost: one pass moving 100 due jobs, with N other entries in the schedule (median ms)\n')
        print('| entries | ours ms | rq-scheduler ms |\n| ---: | ---: | ---: |')
        for size in sizes:
            cost = tick_cost(connection, size, 100, rounds=3)
            print(f'| {size:,} | {cost["ours"]:.2f} | {cost["rq-scheduler"]:.2f} |')
        memory = memory_per_template(connection, 2_000 if options.quick else 10_000)
        print('\n## Redis memory per cron template (job hash + schedule entry)\n')
        print('| system | bytes per template |\n| --- | ---: |')
        for name, value in memory.items():
            print(f'| {name} | {value:,.0f} |')
        samples = rss_over_occurrences(connection, total, batch)
        print(f"\n## The loop's max RSS while moving {total:,} one-off occurrences\n")
        print('| moved | max RSS MiB |\n| ---: | ---: |')
        for moved, rss in samples:
            print(f'| {moved:,} | {rss:.1f} |')
        growth = samples[-1][1] - samples[len(samples) // 2][1]
        print(f'\nGrowth over the second half: {growth:.1f} MiB')
    finally:
        server.close()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
