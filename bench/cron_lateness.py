"""Lateness against rq's own schedulers: cron runs (ours vs ``rq cron``) and one-off jobs (ours vs a worker's
built-in scheduler, ``rq worker --with-scheduler``), the systems alternating round after round; and the top of the
minute: N cron rows all on ``* * * * *``, firing together, moved by a real ``manage.py rqscheduler``.

Cron: both run ``* * * * * */2`` (every 2 seconds, croniter's seconds-last form). One-off: jobs due at random
instants. Lateness is each run's ``enqueued_at`` minus the time it was due. Top of the minute: the rows are made
without the app (a plain ``bulk_create`` in the loop's database), the loop's first reconciliation writes their
templates, and every run of the next minute's boundary is measured (its fire time is in its id).

Run from the repository root: ``PYTHONPATH=. python -m bench.cron_lateness [--quick] [--json FILE]``. It starts its
own redis-server on a free loopback port, prints markdown tables, and checks every count it relies on.
"""

from __future__ import annotations

import functools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')

import django

django.setup()

import redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.registry import ScheduledJobRegistry  # noqa: E402
from rq.utils import utcparse  # noqa: E402

from bench.common import (  # noqa: E402
    alternate,
    check,
    lateness_from_samples,
    loop_database,
    nearest_rank,
    private_redis,
    run_command_line,
    spread,
    stop_process,
    watch_queue,
)
from django_rq_scheduled import Scheduler  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from tests import tasks  # noqa: E402
from tests.processes import OutputReader, django_shell, queue_ids, scheduler_process, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CRON = '* * * * * */2'
PERIOD = 2.0
ONE_OFFS_PER_SECOND = 5
OURS = 'ours: manage.py rqscheduler (defaults)'
RQ_CRON = 'rq cron'
RQ_BUILTIN = "rq's built-in scheduler (rq worker --with-scheduler)"
RQ_CRON_SCHEDULERS_KEY = 'rq:cron_schedulers'
RQ_SCHEDULER_LOCK_KEY = 'rq:scheduler-lock:default'


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    window: float  # seconds each system runs in each round
    minute_rows: tuple[int, ...] = ()  # cron rows firing together at the top of a minute, one measurement each
    minute_cron: str = '* * * * *'  # their cron string (the smoke test's fires every 10 s: no minute's wait)


FULL = Config(mode='full', rounds=5, window=12.0, minute_rows=(5_000, 50_000))
QUICK = Config(mode='quick', rounds=2, window=4.0, minute_rows=(1_000,))
SMOKE = Config(mode='smoke', rounds=2, window=4.0, minute_rows=(100,), minute_cron='* * * * * */10')


@contextmanager
def rq_process(*arguments: str) -> Iterator[subprocess.Popen]:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    command = [sys.executable, '-m', 'rq.cli', *arguments]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        stop_process(process)


@contextmanager
def our_loop(url: str) -> Iterator[subprocess.Popen]:
    process = scheduler_process(url)
    OutputReader(process)  # drains its output: a full pipe would block the loop
    try:
        yield process
    finally:
        stop_process(process)


def enqueued_at(connection: redis.Redis, job_ids: list[str]) -> list[float | None]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job_key(job_id), 'enqueued_at')
        stamps = pipe.execute()
    return [utcparse(stamp.decode()).timestamp() if stamp else None for stamp in stamps]


# -- cron runs --------------------------------------------------------------------------------------------------


def cron_round(connection: redis.Redis, fire_time: Callable[[str, float], float], window: float, who: str) -> dict:
    """The lateness of every run in the queue; checks there is one run per fire time, as many as the window holds."""
    ids = queue_ids(connection)
    stamps = enqueued_at(connection, ids)
    check(all(stamps), f'{who}: a run in the queue has no enqueued_at')
    fires = [fire_time(job_id, stamp) for job_id, stamp in zip(ids, stamps)]
    counts = {'runs': len(ids), 'fire_times': len(set(fires)), 'expected': round(window / PERIOD)}
    check(counts['runs'] == counts['fire_times'], f'{who}: {counts["runs"]} runs for {counts["fire_times"]} fire times')
    check(abs(counts['runs'] - counts['expected']) <= 1, f'{who}: {counts["runs"]} runs, expected {counts}')
    return {'lateness_ms': [(stamp - fire) * 1000 for stamp, fire in zip(stamps, fires)], 'counts': counts}


def ours_cron(connection: redis.Redis, url: str, window: float) -> dict:
    connection.flushdb()
    with our_loop(url):
        wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=30)
        Scheduler(connection=connection).cron(CRON, tasks.add, args=[1, 2], id='every2', timezone='UTC')
        time.sleep(window)
    # Each run's id carries the fire time it was for: every2_at_<epoch ms>.
    return cron_round(connection, lambda job_id, _: int(job_id.rsplit('_', 1)[1]) / 1000, window, OURS)


def rq_cron(connection: redis.Redis, url: str, window: float) -> dict:
    connection.flushdb()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / 'cron_config.py'
        config.write_text(
            textwrap.dedent(f"""
                from rq import cron
                from tests import tasks

                cron.register(tasks.add, 'default', args=(1, 2), cron={CRON!r})
            """)
        )
        with rq_process('cron', '--url', url, str(config)):
            wait_for(lambda: connection.zcard(RQ_CRON_SCHEDULERS_KEY), timeout=30)
            time.sleep(window)
    # rq cron records no fire time: each run was for the 2-second boundary at or before its enqueue time.
    return cron_round(connection, lambda _, stamp: stamp // PERIOD * PERIOD, window, RQ_CRON)


# -- one-off jobs -----------------------------------------------------------------------------------------------


def due_times(prefix: str, window: float) -> dict[str, float]:
    """Jobs due at random instants over the window, starting a second from now."""
    start = time.time() + 1.0
    rng = random.Random(7)
    return {f'{prefix}{i}': start + rng.uniform(0, window) for i in range(round(window * ONE_OFFS_PER_SECOND))}


def one_off_round(connection: redis.Redis, due: dict[str, float], schedule_key: str, window: float, who: str) -> dict:
    """Waits until every job was enqueued (a worker may have run it since), then checks none is left scheduled."""
    wait_for(lambda: all(enqueued_at(connection, list(due))), timeout=window + 15, step=0.1)
    stamps = enqueued_at(connection, list(due))
    counts = {'due': len(due), 'enqueued': sum(1 for stamp in stamps if stamp), 'left': connection.zcard(schedule_key)}
    check(counts['enqueued'] == counts['due'] and counts['left'] == 0, f'{who}: {counts}')
    return {'lateness_ms': [(stamp - when) * 1000 for stamp, when in zip(stamps, due.values())], 'counts': counts}


def ours_one_off(connection: redis.Redis, url: str, window: float) -> dict:
    connection.flushdb()
    with our_loop(url):
        wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=30)
        scheduler = Scheduler(connection=connection)
        due = due_times('o', window)
        for job_id, when in due.items():
            scheduler.enqueue_at(datetime.fromtimestamp(when, tz=timezone.utc), tasks.add, 1, 2, job_id=job_id)
        result = one_off_round(connection, due, keys.SCHEDULED_JOBS_KEY, window, OURS)
    queued = queue_ids(connection)
    check(len(queued) == len(set(queued)) == len(due), f'{OURS}: {len(queued)} ids queued for {len(due)} jobs')
    return result


def rq_builtin_one_off(connection: redis.Redis, url: str, window: float) -> dict:
    """rq's own scheduler runs inside a worker (which also runs the jobs); ``Queue.enqueue_at`` writes them to
    ``rq:scheduled:default``, scored in whole seconds."""
    connection.flushdb()
    with rq_process('worker', '--with-scheduler', '--url', url, 'default'):
        wait_for(lambda: connection.exists(RQ_SCHEDULER_LOCK_KEY), timeout=30)
        queue = Queue('default', connection=connection)
        due = due_times('b', window)
        for job_id, when in due.items():
            queue.enqueue_at(datetime.fromtimestamp(when, tz=timezone.utc), tasks.add, 1, 2, job_id=job_id)
        registry = ScheduledJobRegistry('default', connection=connection).key
        return one_off_round(connection, due, registry, window, RQ_BUILTIN)


# -- the top of the minute ------------------------------------------------------------------------------------------

MAKE_ROWS = """
from django.db.models import QuerySet
from django_rq_scheduled.models import CronJob
CronJob._base_manager.all()._raw_delete('default')
rows = [CronJob(name=f'minute{{i}}', callable='tests.tasks.add', args=[1, 2], cron_string={cron!r}, timezone='UTC')
        for i in range({count})]
QuerySet(CronJob).bulk_create(rows, batch_size=2_000)
print(CronJob._base_manager.count())
"""


def settled_boundary(connection: redis.Redis) -> float:
    """The one minute boundary every template waits for, at least a second away. Runs of an earlier boundary (the
    loop's first reconciliation of many rows crossed a minute) are dropped from the queue before it."""
    while True:
        first = connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, 0, withscores=True)
        last = connection.zrange(keys.SCHEDULED_JOBS_KEY, -1, -1, withscores=True)
        if first[0][1] == last[0][1] and last[0][1] - time.time() > 1:
            connection.delete('rq:queue:default')
            return float(last[0][1])
        time.sleep(0.2)


def top_of_minute(connection: redis.Redis, url: str, count: int, cron: str = '* * * * *') -> dict:
    """``count`` cron rows on ``cron`` (``* * * * *``): the lateness of each run of the first minute boundary after
    the loop wrote their templates; checks there is exactly one run per row, all for that boundary."""
    connection.flushdb()
    made = django_shell(url, MAKE_ROWS.format(cron=cron, count=count))
    check(made == str(count), f'top of the minute: {made} rows made, expected {count}')
    with our_loop(url) as process:
        wait_for(lambda: connection.zcard(keys.SCHEDULED_JOBS_KEY) >= count, timeout=300, step=0.1)
        boundary = settled_boundary(connection)
        samples = watch_queue(connection, 'rq:queue:default', count, boundary - time.time() + 120, process)
    ids = [job_id for job_id in queue_ids(connection) if job_id.endswith(f'_at_{round(boundary * 1000)}')]
    stamps = enqueued_at(connection, ids)
    fires = {int(job_id.rsplit('_', 1)[1]) / 1000 for job_id in ids}
    counts = {'rows': count, 'runs': len(ids), 'distinct': len(set(ids)), 'fire_times': len(fires)}
    check(counts['runs'] == counts['distinct'] == count and fires == {boundary}, f'top of the minute: {counts}')
    check(all(stamps), 'top of the minute: a run has no enqueued_at')
    return {
        'lateness_ms': lateness_from_samples(samples, count, boundary),
        'stamped_lateness_ms': [(stamp - boundary) * 1000 for stamp in stamps if stamp],
        'counts': counts,
    }


# -- the run and its report --------------------------------------------------------------------------------------

SCENARIOS: dict[str, dict[str, Callable[[redis.Redis, str, float], dict]]] = {
    'cron': {OURS: ours_cron, RQ_CRON: rq_cron},
    'one-off': {OURS: ours_one_off, RQ_BUILTIN: rq_builtin_one_off},
}


def run(config: Config) -> dict:
    results: dict[str, Any] = {}
    with loop_database(), private_redis() as server:
        connection = redis.Redis.from_url(server.url)
        for scenario, systems in SCENARIOS.items():
            measures = {
                name: functools.partial(measure, connection, server.url, config.window)
                for name, measure in systems.items()
            }
            results[scenario] = alternate(config.rounds, measures)
        results['minute_cron'] = config.minute_cron
        results['top_of_minute'] = {
            str(n): top_of_minute(connection, server.url, n, config.minute_cron) for n in config.minute_rows
        }
        connection.connection_pool.disconnect()
    return results


def lateness_rows(rounds_by_system: dict[str, list[dict]]) -> list[str]:
    rows = [
        '| loop | rounds | runs | p50 ms | p99 ms | max ms | min ms | p50 of each round, ms | max of each round, ms |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for name, rounds in rounds_by_system.items():
        pooled = [ms for r in rounds for ms in r['lateness_ms']]
        medians = [statistics.median(r['lateness_ms']) for r in rounds]
        maxima = [max(r['lateness_ms']) for r in rounds]
        rows.append(
            f'| {name} | {len(rounds)} | {len(pooled)} | {statistics.median(pooled):,.1f} | '
            f'{nearest_rank(pooled, 0.99):,.1f} | {max(pooled):,.1f} | {min(pooled):,.1f} | '
            f'{spread(medians, ",.1f")} | {spread(maxima, ",.1f")} |'
        )
    return rows


def report(data: dict) -> str:
    config = data['config']
    rounds = f'{config["rounds"]} rounds of {config["window"]:.0f} s per loop, the loops alternating'
    one_offs = round(config['window'] * ONE_OFFS_PER_SECOND)
    lines = [
        f'## Lateness of cron runs ({CRON!r}; {rounds})',
        '',
        *lateness_rows(data['cron']),
        '',
        f'## Lateness of one-off jobs ({one_offs} due at random in each round; {rounds})',
        '',
        *lateness_rows(data['one-off']),
        '',
        f'## Top of the minute: N cron rows on {data.get("minute_cron", "* * * * *")!r} firing together (ours, one '
        'boundary each): from the '
        "boundary until the queue holds the run (its length polled every ~1 ms); stamped: by the runs' enqueued_at",
        '',
        '| rows | runs | p50 ms | p99 ms | max ms | min ms | stamped p50 ms | stamped p99 ms |',
        '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
        *(
            f'| {int(n):,} | {len(r["lateness_ms"]):,} | {statistics.median(r["lateness_ms"]):,.1f} | '
            f'{nearest_rank(r["lateness_ms"], 0.99):,.1f} | {max(r["lateness_ms"]):,.1f} | '
            f'{min(r["lateness_ms"]):,.1f} | {statistics.median(r["stamped_lateness_ms"]):,.1f} | '
            f'{nearest_rank(r["stamped_lateness_ms"], 0.99):,.1f} |'
            for n, r in data.get('top_of_minute', {}).items()
        ),
        '',
        "p50, p99, max and min pool every round's runs. A negative lateness is a run enqueued before its due "
        "time: rq's built-in scheduler keeps due times in whole seconds (up to a second early), ours in "
        'milliseconds (up to half a millisecond early).',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.cron_lateness', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report)
