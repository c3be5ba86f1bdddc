"""Outages that lose Redis data: the database is the truth, and the running scheduler puts it back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from django_rq_scheduled import keys
from tests.processes import (
    ROOT,
    OutputReader,
    kill,
    migrated_database,
    process_env,
    queue_ids,
    scheduler_process,
    stop,
    wait_for,
)
from tests.redis_server import RedisServer, has_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECONCILE_INTERVAL = 2.0

CREATE_ROWS = """
import json
from datetime import datetime, timedelta, timezone
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
now = datetime.now(timezone.utc)
rows = [
    CronJob.objects.create(name='nightly', callable='tests.tasks.add', args=[1, 2], cron_string='0 3 * * *'),
    CronJob.objects.create(name='hourly', callable='tests.tasks.add', cron_string='7 * * * *', queue='high'),
    CronJob.objects.create(name='off', callable='tests.tasks.add', cron_string='* * * * *', enabled=False),
    RepeatableJob.objects.create(
        name='every-second', callable='tests.tasks.add', args=[2, 2], scheduled_time=now,
        interval=1, interval_unit='seconds',
    ),
    RepeatableJob.objects.create(
        name='daily', callable='tests.tasks.add', scheduled_time=now + timedelta(hours=1),
        interval=1, interval_unit='days', repeat=3,
    ),
    ScheduledJob.objects.create(name='later', callable='tests.tasks.add', scheduled_time=now + timedelta(hours=2)),
]
print(json.dumps([[row.template_id, row.enabled] for row in rows]))
"""


def scheduled_ids(connection: redis.Redis) -> set[str]:
    return {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}


def private_database(tmp_path: Path) -> str:
    """A copy of the migrated database: the rows of this test must not reach other tests' scheduler processes."""
    path = tmp_path / 'db.sqlite3'
    shutil.copyfile(migrated_database(), path)
    return str(path)


def create_rows(url: str, env: dict[str, str]) -> list[tuple[str, bool]]:
    command = [sys.executable, '-m', 'django', 'shell', '--settings', 'tests.settings', '-c', CREATE_ROWS]
    result = subprocess.run(
        command, cwd=ROOT, env=process_env(url, env), capture_output=True, text=True, timeout=60, check=True
    )
    return [(template_id, enabled) for template_id, enabled in json.loads(result.stdout.strip().splitlines()[-1])]


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to restart empty')
def test_redis_restarted_empty_gets_every_enabled_row_back_from_the_database(tmp_path):
    server = RedisServer().start()  # no AOF, no RDB: a restart loses everything
    connection = redis.Redis.from_url(server.url, socket_timeout=2)
    env = {'DRQS_TEST_DB': private_database(tmp_path), 'DRQS_TEST_RECONCILE_INTERVAL': str(RECONCILE_INTERVAL)}
    process = None
    try:
        rows = create_rows(server.url, env)
        enabled = {template_id for template_id, on in rows if on}
        disabled = {template_id for template_id, on in rows if not on}
        assert len(enabled) == 5 and len(disabled) == 1
        process = scheduler_process(server.url, '--interval', '0.2', '--lease-ttl', '2', name='restorer', env=env)
        output = OutputReader(process)
        wait_for(lambda: enabled <= scheduled_ids(connection), timeout=30)
        wait_for(lambda: any('_at_' in job_id for job_id in queue_ids(connection)), timeout=10)  # every-second runs
        assert not disabled & scheduled_ids(connection)
        before = queue_ids(connection)

        server.stop()
        server.wipe()
        time.sleep(1.0)  # down long enough for the loop to notice (redis-py retries a short blip by itself)
        server.start()
        restarted = time.monotonic()
        assert connection.dbsize() <= 3  # empty, but for what the scheduler wrote since (its lease, its registry)
        wait_for(lambda: enabled <= scheduled_ids(connection), timeout=2 * RECONCILE_INTERVAL + 2, step=0.01)
        restore = time.monotonic() - restarted
        assert process.poll() is None
        assert not disabled & scheduled_ids(connection)

        wait_for(lambda: any('_at_' in job_id for job_id in queue_ids(connection)), timeout=10)
        time.sleep(2.5)  # a few more runs of the every-second row, and at least one more reconciliation
        after = queue_ids(connection)
        duplicates = [job_id for job_id, n in Counter(before + after).items() if n > 1]
        assert duplicates == []
        assert enabled <= scheduled_ids(connection)
        assert process.poll() is None
        assert stop(process) == 0
        print(
            f'\n[figures] Redis restarted empty: {len(enabled)} templates restored in {restore * 1000:.0f} ms '
            f'(reconcile interval {RECONCILE_INTERVAL:.0f} s); runs before/after: {len(before)}/{len(after)}, '
            'duplicates: 0'
        )
    finally:
        if process is not None:
            kill(process)
        connection.connection_pool.disconnect()
        server.close()
    log = output.text
    assert 'Traceback' not in log, log
    print(f'[figures] the loop logged the outage: {"Redis is unavailable" in log}')
    print(log)
