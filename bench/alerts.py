"""What alerts cost the loop: the enqueue lateness of a real ``manage.py rqscheduler`` while every run fails and
every failure is an alert to a webhook that hangs (a server that accepts and never answers, with a heartbeat to it
too), against the same loop without alerts, and that loop again as a control (how far the p99s of two identical
systems differ on this machine); the three alternate round after round.

Each round: one-off schedule rows (ScheduledJob, a job that raises) due at random instants over the window, a real
``rq worker`` running them as they come, and the leader reading their failures in (``ALERT_AFTER_FAILURES`` = 1: one
alert per row). Lateness is each job's ``enqueued_at`` minus the time it was due.

Run from the repository root: ``PYTHONPATH=. python -m bench.alerts [--quick | --smoke] [--json FILE]``. It starts
its own redis-server on a free loopback port, prints markdown tables, and checks every count it relies on.
"""

from __future__ import annotations

import functools
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_DB = Path(tempfile.mkdtemp(prefix='drqs-bench-alerts-')) / 'db.sqlite3'
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = str(_DB)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.common import (  # noqa: E402
    alternate,
    check,
    nearest_rank,
    private_redis,
    run_command_line,
    spread,
    stop_process,
)
from bench.cron_lateness import enqueued_at, lateness_rows, rq_process  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from django_rq_scheduled.models import Run, ScheduledJob  # noqa: E402
from tests.http_servers import Hanging  # noqa: E402
from tests.processes import OutputReader, scheduler_process, wait_for  # noqa: E402

NO_ALERTS = 'no alerts'
CONTROL = 'no alerts, again (control)'
SYNC_MARGIN = 0.01
"""Seconds per row of the round allowed for writing the rows and syncing them to Redis before the first is due: a
job due before its template reached Redis would count the sync as the loop's lateness."""
HANGING = 'alerts to a hanging webhook'


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    window: float  # seconds over which each round's jobs are due
    jobs: int  # per round


FULL = Config(mode='full', rounds=5, window=12.0, jobs=600)
QUICK = Config(mode='quick', rounds=2, window=4.0, jobs=120)
SMOKE = Config(mode='smoke', rounds=1, window=2.0, jobs=30)


def alert_settings(url: str | None) -> list[dict[str, Any]]:
    if url is None:
        return []
    return [
        {'notifier': 'webhook', 'url': url, 'timeout': 5, 'retries': 3},
        {'notifier': 'heartbeat', 'url': url, 'every': 1},
    ]


def add_rows(config: Config, prefix: str) -> dict[str, float]:
    """The round's rows, due at random instants over the window once they are all in Redis; their template ids and
    due times."""
    start = time.time() + 2.0 + config.jobs * SYNC_MARGIN
    rng = random.Random(7)
    rows = [
        ScheduledJob(
            name=f'{prefix}{i}', callable='tests.tasks.fail', args=['alert me'],
            scheduled_time=datetime.fromtimestamp(start + rng.uniform(0, config.window), tz=timezone.utc),
        )
        for i in range(config.jobs)
    ]  # fmt: skip
    created = ScheduledJob.objects.bulk_create(rows)  # synced to Redis as the transaction commits
    check(time.time() < start, f'the rows took {time.time() - start:.1f} s too long to reach Redis')
    return {row.template_id: row.scheduled_time.timestamp() for row in created}


def a_round(connection: redis.Redis, url: str, config: Config, hanging: Hanging | None, who: str) -> dict:
    connection.flushdb()
    Run.objects.all().delete()
    ScheduledJob.objects.all()._raw_delete(ScheduledJob.objects.db)  # Redis is flushed already
    held_before = len(hanging.held) if hanging else 0
    env = {'DRQS_TEST_DB': str(_DB), 'DRQS_TEST_ALERTS': json.dumps(alert_settings(hanging and hanging.url)),
           'DRQS_TEST_ALERT_AFTER_FAILURES': '1'}  # fmt: skip
    loop = scheduler_process(url, env=env)
    output = OutputReader(loop)  # drains its output: a full pipe would block the loop
    try:
        wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=30)
        with rq_process('worker', '--url', url, '--worker-class', 'rq.worker.SimpleWorker', 'default'):
            due = add_rows(config, prefix=who[:2])
            wait_for(lambda: all(enqueued_at(connection, list(due))), timeout=config.window + 30, step=0.1)
            failed = lambda: Run.objects.filter(status='failed').count()  # noqa: E731
            wait_for(lambda: failed() == len(due), timeout=60, step=0.2)  # every failure read in (and alerted)
    finally:
        code = stop_process(loop)
    check(code == 0, f'{who}: rqscheduler exited with {code}:\n{output.text[-2000:]}')
    stamps = enqueued_at(connection, list(due))
    counts = {'due': len(due), 'enqueued': sum(1 for s in stamps if s), 'failed_runs': failed()}
    counts['webhook_connections'] = len(hanging.held) - held_before if hanging else 0
    check(counts['enqueued'] == counts['due'] == counts['failed_runs'], f'{who}: {counts}')
    check(hanging is None or counts['webhook_connections'] > 0, f'{who}: no alert reached the webhook: {counts}')
    lateness = [(stamp - when) * 1000 for stamp, when in zip(stamps, due.values())]
    return {'lateness_ms': lateness, 'counts': counts}


def run(config: Config) -> dict:
    hanging = Hanging()
    try:
        with private_redis() as server:
            settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
            call_command('migrate', verbosity=0)
            connection = redis.Redis.from_url(server.url)
            measures = {
                NO_ALERTS: functools.partial(a_round, connection, server.url, config, None, NO_ALERTS),
                HANGING: functools.partial(a_round, connection, server.url, config, hanging, HANGING),
                CONTROL: functools.partial(a_round, connection, server.url, config, None, CONTROL),
            }
            results = alternate(config.rounds, measures)
            connection.connection_pool.disconnect()
    finally:
        hanging.close()
    p99 = {name: [nearest_rank(r['lateness_ms'], 0.99) for r in rounds] for name, rounds in results.items()}
    pooled = {
        name: nearest_rank([ms for r in rounds for ms in r['lateness_ms']], 0.99) for name, rounds in results.items()
    }
    return {
        'lateness': results,
        'p99_ms': p99,
        'p99_ratio': pooled[HANGING] / pooled[NO_ALERTS] if pooled[NO_ALERTS] else None,
        'p99_ratio_per_round': [h / n if n else None for h, n in zip(p99[HANGING], p99[NO_ALERTS])],
        # The same loop twice: how far two p99s of identical systems differ on this machine.
        'control_p99_ratio': pooled[CONTROL] / pooled[NO_ALERTS] if pooled[NO_ALERTS] else None,
        'control_p99_ratio_per_round': [c / n if n else None for c, n in zip(p99[CONTROL], p99[NO_ALERTS])],
    }


def report(data: dict) -> str:
    config = data['config']
    ratios = [ratio for ratio in data['p99_ratio_per_round'] if ratio is not None]
    controls = [ratio for ratio in data['control_p99_ratio_per_round'] if ratio is not None]
    lines = [
        f'## Enqueue lateness with and without alerts ({config["jobs"]} failing one-off jobs due over '
        f'{config["window"]:.0f} s per round, {config["rounds"]} rounds, alternating)',
        '',
        *lateness_rows(data['lateness']),
        '',
        f'p99 with alerts to a hanging webhook / p99 without alerts: {data["p99_ratio"]:.2f} pooled'
        + (f', {spread(ratios, ".2f")} per round' if ratios else '')
        + f'; the control (the same loop without alerts, again) / p99 without alerts: {data["control_p99_ratio"]:.2f}'
        + (f' pooled, {spread(controls, ".2f")} per round' if controls else ' pooled')
        + ', the noise of two identical systems. Every run fails and each failure is an alert '
        '(ALERT_AFTER_FAILURES = 1); the webhook accepts the connection and never answers (timeout 5 s, 3 retries), '
        'and a heartbeat every second goes to it too.',
        '',
        'Median lateness per round, ms: '
        + '; '.join(
            f'{name} {spread([statistics.median(r["lateness_ms"]) for r in rounds], ",.1f")}'
            for name, rounds in data['lateness'].items()
        ),
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.alerts', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report)
