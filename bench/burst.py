"""The burst: N one-off ``ScheduledJob`` rows created by one ``bulk_create``, all due at one instant, moved by a
real ``manage.py rqscheduler`` process and run by real ``rq worker --burst`` processes.

(1) ``bulk_create`` of N rows with the app (validation, and the sync of every row to Redis after commit) against
the same ``bulk_create`` of the same rows without it (a plain ``django.db.models.QuerySet``: no validation, no
sync), the two alternating round after round; Redis memory per row after the sync. (2) One burst: the rows are
created due a few seconds ahead (the lead is measured in (1)), then: the time from the due instant to the last
job's ``enqueued_at``; the time from that last enqueue until every row's feedback (``has_run``) and every run's
record (a ``Run`` row) is in the database; then the workers run the jobs, and the time from their exit until
every ``Run`` row holds its outcome and the rows' summaries are up to date.

Run from the repository root: ``PYTHONPATH=. python -m bench.burst [--quick | --smoke] [--json FILE]``. It starts
its own redis-server on a free loopback port, uses a SQLite file of its own (shared with the loop it starts), and
checks every count it relies on.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

_DB = Path(tempfile.mkdtemp(prefix='drqs-bench-burst-')) / 'db.sqlite3'
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = str(_DB)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from rq.utils import utcparse  # noqa: E402

from bench.common import (  # noqa: E402
    RoundTrips,
    alternate,
    check,
    private_redis,
    ratio_of_medians,
    run_command_line,
    same_or_range,
    spread,
    stop_process,
)
from django_rq_scheduled.core import keys  # noqa: E402
from django_rq_scheduled.models import ScheduledJob  # noqa: E402
from django_rq_scheduled.runs import FINISHED, Run  # noqa: E402
from tests.processes import OutputReader, scheduler_process, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WITH, WITHOUT = 'with app', 'without app'
CALLABLE = 'tests.tasks.noop'
QUEUE_KEY = 'rq:queue:default'


@dataclass(frozen=True)
class Config:
    mode: str
    rows: int
    rounds: int
    workers: int
    timeout: float  # seconds any one wait may take before the run fails


FULL = Config(mode='full', rows=200_000, rounds=2, workers=2, timeout=900.0)
QUICK = Config(mode='quick', rows=20_000, rounds=2, workers=2, timeout=300.0)
SMOKE = Config(mode='smoke', rows=500, rounds=2, workers=1, timeout=120.0)


def new_rows(count: int, due: datetime, prefix: str) -> list[ScheduledJob]:
    return [ScheduledJob(name=f'{prefix}{i}', callable=CALLABLE, scheduled_time=due) for i in range(count)]


def clear(connection: redis.Redis) -> None:
    Run.objects.all().delete()
    QuerySet(ScheduledJob).all().delete()
    connection.flushdb()


# -- (1) bulk_create with and without the app -----------------------------------------------------------------------


def bulk_create_pass(connection: redis.Redis, rows: int, with_app: bool) -> dict[str, Any]:
    """One bulk_create of ``rows`` rows due in an hour (no loop runs meanwhile); counts what it wrote."""
    clear(connection)
    memory = connection.info('memory')['used_memory']
    objs = new_rows(rows, datetime.now(timezone.utc) + timedelta(hours=1), 'b')
    queryset = ScheduledJob.objects.all() if with_app else QuerySet(ScheduledJob)
    trips = RoundTrips.count
    started = time.perf_counter()
    queryset.bulk_create(objs)
    seconds = time.perf_counter() - started
    trips = RoundTrips.count - trips
    templates = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    made = QuerySet(ScheduledJob).count()
    check(made == rows, f'bulk_create {with_app=}: {made} rows for {rows}')
    check(templates == (rows if with_app else 0), f'bulk_create {with_app=}: {templates} templates for {rows} rows')
    check(with_app or trips == 0, f'bulk_create without the app: {trips} Redis round trips')
    used = connection.info('memory')['used_memory'] - memory
    return {'seconds': seconds, 'round_trips': trips, 'templates': templates, 'redis_bytes_per_row': used / rows}


# -- (2) the burst ------------------------------------------------------------------------------------------------


def enqueue_times(connection: redis.Redis) -> list[float]:
    ids = [member.decode() for member in connection.lrange(QUEUE_KEY, 0, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job_key(job_id), 'enqueued_at')
        stamps = pipe.execute()
    check(all(stamps), 'a queued job has no enqueued_at')
    return [utcparse(stamp.decode()).timestamp() for stamp in stamps]


def waited(condition: Callable[[], object], timeout: float, step: float = 0.1) -> float:
    """The wall-clock time at which ``condition`` first held (polled every ``step`` s)."""
    wait_for(condition, timeout=timeout, step=step)
    return time.time()


def moves_recorded(rows: int) -> bool:
    """Every row's move feedback and every run's record (queued or later) in the database."""
    return QuerySet(ScheduledJob).filter(has_run=True).count() == rows and Run.objects.count() == rows


def outcomes_recorded(rows: int) -> bool:
    """Every run's outcome, and every row's summary of it, in the database."""
    return (
        Run.objects.filter(status=FINISHED).count() == rows
        and QuerySet(ScheduledJob).filter(success_count=1).count() == rows
    )


def run_workers(url: str, count: int, timeout: float) -> None:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('DJANGO_SETTINGS_MODULE', None)  # plain rq workers, without Django
    command = [sys.executable, '-m', 'rq.cli', 'worker', '--url', url, '--burst', '--quiet']
    command += ['--worker-class', 'rq.worker.SimpleWorker', 'default']
    workers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    for worker in workers:
        check(worker.wait(timeout) == 0, 'an rq worker failed')


def run_jobs(url: str, config: Config) -> dict[str, float]:
    """The workers run every job; then the time until every outcome is in the database."""
    connection = redis.Redis.from_url(url)
    started = time.time()
    run_workers(url, config.workers, config.timeout)
    done = time.time()
    outcomes = waited(lambda: outcomes_recorded(config.rows), config.timeout)
    queued = connection.llen(QUEUE_KEY)
    check(queued == 0, f'{queued} jobs left in the queue after the workers')
    connection.connection_pool.disconnect()
    return {'workers_s': done - started, 'outcomes_after_workers_s': outcomes - done}


def burst(url: str, connection: redis.Redis, config: Config, lead: float) -> dict[str, Any]:
    clear(connection)
    loop = scheduler_process(url, env={'DRQS_TEST_DB': str(_DB)})
    OutputReader(loop)  # drains its output: a full pipe would block the loop
    try:
        wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=60)
        due = datetime.now(timezone.utc) + timedelta(seconds=lead)
        started = time.perf_counter()
        ScheduledJob.objects.bulk_create(new_rows(config.rows, due, 'r'))
        created = time.perf_counter() - started
        check(time.time() < due.timestamp(), f'bulk_create took {created:.1f} s, past the due time ({lead:.1f} s)')
        wait_for(lambda: connection.llen(QUEUE_KEY) == config.rows, timeout=lead + config.timeout, step=0.05)
        stamps = enqueue_times(connection)
        last_enqueue = max(stamps)
        recorded = waited(lambda: moves_recorded(config.rows), config.timeout)
        jobs = run_jobs(url, config) if config.workers else {}
    finally:
        stop_process(loop)
    return {
        **jobs,
        'bulk_create_s': created,
        'lead_s': lead,
        'first_enqueue_after_due_s': min(stamps) - due.timestamp(),
        'last_enqueue_after_due_s': last_enqueue - due.timestamp(),
        'moves_per_s': config.rows / max(last_enqueue - due.timestamp(), 0.001),
        'move_feedback_after_last_enqueue_s': recorded - last_enqueue,
        'jobs': len(stamps),
    }


def run(config: Config) -> dict:
    with private_redis() as server:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        connection = redis.Redis.from_url(server.url)
        RoundTrips.install()
        measures = {
            system: functools.partial(bulk_create_pass, connection, config.rows, system == WITH)
            for system in (WITH, WITHOUT)
        }
        creates = alternate(config.rounds, measures)
        slowest = max(result['seconds'] for result in creates[WITH])
        result = burst(server.url, connection, config, lead=slowest * 1.5 + 3.0)
        clear(connection)
        connection.connection_pool.disconnect()
    return {'bulk_create': creates, 'burst': result}


def report(data: dict) -> str:
    config, creates, result = data['config'], data['bulk_create'], data['burst']
    seconds = {system: [run['seconds'] for run in runs] for system, runs in creates.items()}
    trips = same_or_range([run['round_trips'] for run in creates[WITH]])
    memory = same_or_range([round(run['redis_bytes_per_row']) for run in creates[WITH]])
    rows = config['rows']
    lines = [
        f'## bulk_create of {rows:,} one-off rows (median (min - max) of {config["rounds"]} rounds, alternated)',
        '',
        '| system | seconds | rows/s | Redis round trips |',
        '| --- | ---: | ---: | ---: |',
        f'| {WITH} | {spread(seconds[WITH], ",.2f")} | {rows / min(seconds[WITH]):,.0f} | {trips} |',
        f'| {WITHOUT} | {spread(seconds[WITHOUT], ",.2f")} | {rows / min(seconds[WITHOUT]):,.0f} | 0 |',
        '',
        f'Ratio of medians (with / without): {ratio_of_medians(seconds[WITH], seconds[WITHOUT]):.2f}. '
        f'Redis memory per row after the sync: {memory} B.',
        '',
        f'## The burst: {rows:,} rows due at one instant, one loop, {config["workers"]} SimpleWorker(s)',
        '',
        '| measure | value |',
        '| --- | ---: |',
        f'| bulk_create (the due time {result["lead_s"]:.1f} s after its start) | {result["bulk_create_s"]:.2f} s |',
        f'| first job enqueued, after the due time | {result["first_enqueue_after_due_s"]:.3f} s |',
        f'| last job enqueued, after the due time | {result["last_enqueue_after_due_s"]:.3f} s |',
        f'| moves per second | {result["moves_per_s"]:,.0f} |',
        f"| every row's move feedback and run record, after the last enqueue | "
        f'{result["move_feedback_after_last_enqueue_s"]:.2f} s |',
    ]
    if 'workers_s' in result:
        lines += [
            f'| workers running every job | {result["workers_s"]:.1f} s |',
            f'| every outcome recorded, after the workers exited | {result["outcomes_after_workers_s"]:.2f} s |',
        ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.burst', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report)
