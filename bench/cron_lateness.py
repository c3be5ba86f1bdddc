"""Lateness against rq's own schedulers: cron runs (ours vs ``rq cron``) and one-off jobs (ours vs a worker's
built-in scheduler, ``rq worker --with-scheduler``).

Cron: both run ``* * * * * */2`` (every 2 seconds, croniter's seconds-last form). One-off: jobs due at random
instants. Lateness is each run's ``enqueued_at`` minus the time it was due.
Run as ``PYTHONPATH=. python -m bench.cron_lateness [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')

import django

django.setup()

import redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.utils import utcparse  # noqa: E402

from django_rq_scheduled import Scheduler  # noqa: E402
from tests import tasks  # noqa: E402
from tests.processes import kill, scheduler_process, stop, wait_for  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CRON = '* * * * * */2'
PERIOD = 2.0


class CountError(RuntimeError):
    """A benchmark whose counts are wrong measures nothing."""


def enqueued_times(connection: redis.Redis) -> list[tuple[str, float]]:
    ids = [member.decode() for member in connection.lrange('rq:queue:default', 0, -1)]
    times = []
    for job_id in ids:
        raw = connection.hget(f'rq:job:{job_id}', 'enqueued_at')
        if raw:
            times.append((job_id, utcparse(raw.decode()).timestamp()))
    return times


def ours(connection: redis.Redis, url: str, seconds: float) -> list[float]:
    process = scheduler_process(url)
    try:
        wait_for(lambda: connection.get('rq:scheduler_lock'), timeout=30)
        Scheduler(connection=connection).cron(CRON, tasks.add, args=[1, 2], id='every2', timezone='UTC')
        time.sleep(seconds)
    finally:
        stop(process)
    # Each run's id carries the fire time it was for: every2_at_<epoch ms>.
    return [enqueued - int(job_id.rsplit('_', 1)[1]) / 1000 for job_id, enqueued in enqueued_times(connection)]


def rq_cron(connection: redis.Redis, url: str, seconds: float) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / 'cron_config.py'
        config.write_text(
            textwrap.dedent(f"""
                from rq import cron
                from tests import tasks

                cron.register(tasks.add, 'default', args=(1, 2), cron={CRON!r})
            """)
        )
        env = {**os.environ, 'PYTHONPATH': str(ROOT)}
        command = [sys.executable, '-m', 'rq.cli', 'cron', '--url', url, str(config)]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(seconds)
        finally:
            kill(process)
    # rq cron records no fire time: each run was for the 2-second boundary at or before its enqueue time.
    return [enqueued - (enqueued // PERIOD) * PERIOD for _, enqueued in enqueued_times(connection)]


def due_times(count: int, seconds: float) -> list[float]:
    start = time.time() + 1.0
    rng = random.Random(7)
    return sorted(start + rng.uniform(0, seconds) for _ in range(count))


def job_latenesses(connection: redis.Redis, due: dict[str, float]) -> list[float]:
    latenesses = []
    for job_id, when in due.items():
        raw = connection.hget(f'rq:job:{job_id}', 'enqueued_at')
        if raw:
            latenesses.append(utcparse(raw.decode()).timestamp() - when)
    return latenesses


def ours_one_off(connection: redis.Redis, url: str, seconds: float) -> list[float]:
    process = scheduler_process(url)
    try:
        wait_for(lambda: connection.get('rq:scheduler_lock'), timeout=30)
        scheduler = Scheduler(connection=connection)
        due = {f'o{i}': when for i, when in enumerate(due_times(int(seconds * 5), seconds))}
        for job_id, when in due.items():
            scheduler.enqueue_at(datetime.fromtimestamp(when, tz=timezone.utc), tasks.add, 1, 2, job_id=job_id)
        time.sleep(seconds + 2)
    finally:
        stop(process)
    return job_latenesses(connection, due)


def rq_builtin_one_off(connection: redis.Redis, url: str, seconds: float) -> list[float]:
    """rq's own scheduler runs inside a worker; jobs go to ``rq:scheduled:default`` through ``Queue.enqueue_at``."""
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    command = [sys.executable, '-m', 'rq.cli', 'worker', '--with-scheduler', '--url', url, 'default']
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: connection.exists('rq:scheduler-lock:default'), timeout=30)
        queue = Queue('default', connection=connection)
        due = {f'b{i}': when for i, when in enumerate(due_times(int(seconds * 5), seconds))}
        for job_id, when in due.items():
            queue.enqueue_at(datetime.fromtimestamp(when, tz=timezone.utc), tasks.add, 1, 2, job_id=job_id)
        time.sleep(seconds + 3)
    finally:
        kill(process)
    return job_latenesses(connection, due)


def summary(latenesses: list[float], expected_runs: int) -> str:
    if len(latenesses) < expected_runs // 2:
        raise CountError(f'only {len(latenesses)} runs, expected about {expected_runs}')
    ms = sorted(value * 1000 for value in latenesses)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f'{len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.1f}'


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true', help='10 seconds each instead of 60')
    seconds = 10.0 if parser.parse_args(argv).quick else 60.0
    expected = int(seconds / PERIOD)
    one_offs = int(seconds * 5)
    tables = [
        (
            f'Lateness of cron runs ({CRON!r}, {seconds:.0f} s each)',
            [('ours: manage.py rqscheduler (defaults)', ours), ('rq cron', rq_cron)],
            expected,
        ),
        (
            f'Lateness of one-off jobs ({one_offs} due at random over {seconds:.0f} s)',
            [
                ('ours: manage.py rqscheduler (defaults)', ours_one_off),
                ("rq's built-in scheduler (rq worker --with-scheduler)", rq_builtin_one_off),
            ],
            one_offs,
        ),
    ]
    for title, runners, runs in tables:
        rows = []
        for name, runner in runners:
            server = RedisServer().start()
            try:
                latenesses = runner(redis.Redis.from_url(server.url), server.url, seconds)
                rows.append(f'| {name} | {summary(latenesses, runs)} |')
            finally:
                server.close()
        print(f'## {title}' + chr(10))
        print('| loop | runs | p50 ms | p99 ms | max ms |' + chr(10) + '| --- | ---: | ---: | ---: | ---: |')
        print(chr(10).join(rows) + chr(10))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
