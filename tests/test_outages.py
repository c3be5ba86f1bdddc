"""Outages that lose Redis data: the database is the truth, and the running scheduler puts it back."""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.processes import (
    ROOT,
    OutputReader,
    kill,
    private_database,
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


def occurrence_fire_times(ids: list[str], template: str) -> list[int]:
    return [int(job_id.rsplit('_at_', 1)[1]) for job_id in ids if job_id.startswith(f'{template}_at_')]


def assert_each_job_once(ids: list[str], expected: list[str]) -> None:
    duplicates = [job_id for job_id, n in Counter(ids).items() if n > 1]
    assert duplicates == []
    missing = set(expected) - set(ids)
    assert not missing, f'{len(missing)} jobs never reached the queue, e.g. {sorted(missing)[:5]}'


def schedule_soon(connection: redis.Redis, prefix: str, count: int, within: float) -> list[str]:
    """One-off jobs due at even steps over the next ``within`` seconds (some fall due while Redis is down)."""
    scheduler = Scheduler(connection=connection)
    start = datetime.now(timezone.utc)
    ids = [f'{prefix}-{i}' for i in range(count)]
    for i, job_id in enumerate(ids):
        scheduler.enqueue_at(start + timedelta(seconds=within * i / count), tasks.add, i, 1, job_id=job_id)
    return ids


def start_ticker(connection: redis.Redis, interval: float) -> None:
    Scheduler(connection=connection).schedule(datetime.now(timezone.utc), tasks.add, interval=interval, id='ticker')


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to restart')
def test_redis_stopped_and_restarted_20_times_loses_and_duplicates_nothing():
    server = RedisServer(appendonly=True).start()  # appendfsync always: what Redis acknowledged survives a kill -9
    connection = redis.Redis.from_url(server.url, socket_timeout=2)
    rng = random.Random(20)
    process = scheduler_process(server.url, '--interval', '0.2', '--lease-ttl', '2', name='restarts')
    output = OutputReader(process)
    expected: list[str] = []
    recoveries: list[float] = []
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        start_ticker(connection, 0.25)
        for cycle in range(20):
            expected += schedule_soon(connection, f'c{cycle}', 25, within=0.6)
            time.sleep(rng.uniform(0, 0.3))
            connection.connection_pool.disconnect()
            server.kill() if cycle % 2 else server.stop()  # a crash or a clean shutdown, in turn
            time.sleep(rng.uniform(0.2, 1.0))
            assert process.poll() is None, f'the scheduler exited while Redis was down (cycle {cycle})'
            server.start()
            restarted = time.monotonic()
            wait_for(lambda expected=expected: set(expected) <= set(queue_ids(connection)), timeout=30, step=0.01)
            recoveries.append(time.monotonic() - restarted)
        time.sleep(1.0)  # the ticker runs on after the last restart
        ids = queue_ids(connection)
        assert_each_job_once(ids, expected)
        fire_times = occurrence_fire_times(ids, 'ticker')
        assert len(fire_times) == len(set(fire_times)) > 20
        assert process.poll() is None
        assert stop(process) == 0
    finally:
        kill(process)
        connection.connection_pool.disconnect()
        server.close()
    log = output.text
    assert 'Redis is unavailable' in log
    assert 'Traceback' not in log, log
    recoveries.sort()
    print(
        f'\n[figures] Redis stopped or killed and restarted 20 times: {len(expected)} one-off jobs and '
        f'{len(fire_times)} ticker runs enqueued once each; due jobs all in the queue '
        f'{statistics.median(recoveries) * 1000:.0f} ms (median) / {recoveries[-1] * 1000:.0f} ms (max) '
        'after Redis came back'
    )


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to pause')
def test_redis_paused_longer_than_the_lease_duplicates_nothing_and_the_loop_goes_on():
    server = RedisServer().start()
    connection = redis.Redis.from_url(server.url, socket_timeout=10)
    options = ('--interval', '0.2', '--lease-ttl', '1')
    processes = [scheduler_process(server.url, *options, name=name) for name in ('left', 'right')]
    outputs = [OutputReader(process) for process in processes]
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        wait_for(lambda: connection.zcard(keys.INSTANCES_KEY) == 2, timeout=20)
        start_ticker(connection, 0.2)
        expected = schedule_soon(connection, 'paused', 300, within=6.0)
        time.sleep(1.0)
        connection.connection_pool.disconnect()
        server.process.send_signal(signal.SIGSTOP)  # connections stay open; every command just hangs
        time.sleep(3.0)  # three lease lifetimes
        server.process.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        before = len(queue_ids(connection))
        wait_for(lambda: len(queue_ids(connection)) > before, timeout=10, step=0.005)
        first_after = time.monotonic() - resumed
        wait_for(lambda: set(expected) <= set(queue_ids(connection)), timeout=20)
        time.sleep(1.0)
        ids = queue_ids(connection)
        assert_each_job_once(ids, expected)
        fire_times = occurrence_fire_times(ids, 'ticker')
        assert len(fire_times) == len(set(fire_times))
        assert all(process.poll() is None for process in processes)
        assert connection.get(keys.LOCK_KEY)
        assert [stop(process) for process in processes] == [0, 0]
    finally:
        for process in processes:
            kill(process)
        connection.connection_pool.disconnect()
        server.close()
    log = '\n'.join(output.text for output in outputs)
    assert 'Traceback' not in log, log
    print(
        f'\n[figures] Redis paused (SIGSTOP) 3 s with a 1 s lease and two schedulers: {len(expected)} jobs once each, '
        f'{len(fire_times)} ticker runs, no duplicate; first job {first_after * 1000:.0f} ms after SIGCONT'
    )


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to pause')
def test_a_redis_that_stops_answering_times_out_and_the_loop_recovers():
    """Redis frozen past the socket timeout (5 s): a partition that never closes the connection, not an outage."""
    server = RedisServer().start()
    connection = redis.Redis.from_url(server.url, socket_timeout=15)
    process = scheduler_process(server.url, '--interval', '0.2', '--lease-ttl', '1', name='frozen')
    output = OutputReader(process)
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        start_ticker(connection, 0.2)
        expected = schedule_soon(connection, 'frozen', 100, within=10.0)
        time.sleep(1.0)
        connection.connection_pool.disconnect()
        server.process.send_signal(signal.SIGSTOP)
        wait_for(lambda: 'Timeout' in '\n'.join(output.lines), timeout=12)
        assert process.poll() is None
        server.process.send_signal(signal.SIGCONT)
        wait_for(lambda: set(expected) <= set(queue_ids(connection)), timeout=30)
        ids = queue_ids(connection)
        assert_each_job_once(ids, expected)
        fire_times = occurrence_fire_times(ids, 'ticker')
        assert len(fire_times) == len(set(fire_times))
        assert stop(process) == 0
    finally:
        kill(process)
        connection.connection_pool.disconnect()
        server.close()
    log = output.text
    assert 'Redis is unavailable' in log and 'Traceback' not in log, log
