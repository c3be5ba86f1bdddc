"""A Sentinel failover under a running scheduler: kill -9 the primary while one-off jobs keep coming due."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.processes import OutputReader, kill, queue_ids, scheduler_process, stop, wait_for
from tests.redis_server import RedisServer, free_port, has_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc
MASTER = 'mymaster'
SENTINEL_BINARY = shutil.which('redis-sentinel')

if not (SENTINEL_BINARY and has_redis_server()) and not os.environ.get('CI'):
    pytest.skip('needs redis-server and redis-sentinel binaries', allow_module_level=True)


class SentinelProcess:
    """One redis-sentinel on a free loopback port, with its (rewritable) config file in a temporary directory."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix='drqs-sentinel-')
        self.config = Path(self.dir) / 'sentinel.conf'
        self.config.write_text(
            f'port {self.port}\n'
            'bind 127.0.0.1\n'
            f'dir {self.dir}\n'
            f'sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n'
            f'sentinel down-after-milliseconds {MASTER} 1000\n'
            f'sentinel failover-timeout {MASTER} 3000\n'
            f'sentinel parallel-syncs {MASTER} 1\n'
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> SentinelProcess:
        command = [SENTINEL_BINARY or 'redis-sentinel', str(self.config)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)

    def master(self) -> dict:
        try:
            return self.client().sentinel_master(MASTER)
        except redis.RedisError:
            return {}

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def sentinels_agree(sentinels: list[SentinelProcess], port: int) -> bool:
    """Every sentinel names ``port`` the primary, knows a replica and the two other sentinels."""
    for sentinel in sentinels:
        master = sentinel.master()
        if not master or master.get('port') != port or 's_down' in str(master.get('flags')):
            return False
        if master.get('num-slaves', 0) < 1 or master.get('num-other-sentinels', 0) < 2:
            return False
    return True


def role(port: int) -> str | None:
    try:
        client = redis.Redis(port=port, socket_timeout=0.5)
        try:
            return client.role()[0].decode()
        finally:
            client.connection_pool.disconnect()
    except redis.RedisError:
        return None


def discovered_port(sentinel: Sentinel) -> int | None:
    try:
        return sentinel.discover_master(MASTER)[1]
    except redis.ConnectionError:  # MasterNotFoundError while the sentinels agree on the failover
        return None


def test_the_scheduler_follows_a_sentinel_failover():
    if not (SENTINEL_BINARY and has_redis_server()):
        pytest.fail('CI must install redis-server and redis-sentinel')
    primary = RedisServer().start()
    replica = RedisServer(extra_args=('--replicaof', '127.0.0.1', str(primary.port))).start()
    sentinels = [SentinelProcess(primary.port).start() for _ in range(3)]
    env = {'DRQS_TEST_SENTINELS': ','.join(f'127.0.0.1:{sentinel.port}' for sentinel in sentinels)}
    process = None
    client_sentinel = Sentinel([('127.0.0.1', s.port) for s in sentinels], socket_timeout=1)
    connection = client_sentinel.master_for(MASTER, socket_timeout=1)
    new_primary = redis.Redis(port=replica.port, socket_timeout=1)
    try:
        wait_for(lambda: sentinels_agree(sentinels, primary.port), timeout=30, step=0.1)
        process = scheduler_process(primary.url, '--interval', '0.2', '--lease-ttl', '2', name='follower', env=env)
        output = OutputReader(process)
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        scheduler = Scheduler(connection=connection)

        scheduled: list[tuple[str, float]] = []  # (job id, monotonic time the schedule call returned)
        refused = 0
        killed_at = promoted_at = first_new_at = None
        replicated: set[str] = set()
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 12:
            now = time.monotonic()
            if killed_at is None and now - started > 3:
                primary.kill()  # kill -9: no goodbye, whatever was not yet replicated is gone
                killed_at = time.monotonic()
                replicated = set(queue_ids(new_primary))  # the replica gets nothing more from here on
            failing_over = killed_at is not None and promoted_at is None
            if failing_over and role(replica.port) == 'master' and discovered_port(client_sentinel) == replica.port:
                promoted_at = time.monotonic()
            if promoted_at is not None and first_new_at is None and set(queue_ids(new_primary)) - replicated:
                first_new_at = time.monotonic()
            job_id = f'stream-{i}'
            i += 1
            try:
                scheduler.enqueue_at(datetime.now(UTC) + timedelta(milliseconds=300), tasks.add, 1, 2, job_id=job_id)
                scheduled.append((job_id, time.monotonic()))
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                refused += 1
            time.sleep(0.05)
        assert killed_at is not None
        assert promoted_at is not None, 'the sentinels did not promote the replica within the run'
        assert process.poll() is None, output.text

        after = [job_id for job_id, at in scheduled if at > promoted_at]
        before = [job_id for job_id, at in scheduled if at < killed_at]
        assert after, 'nothing was scheduled after the failover'
        try:
            wait_for(lambda: set(after) <= set(queue_ids(new_primary)), timeout=30, step=0.1)
        except AssertionError:
            missing = sorted(set(after) - set(queue_ids(new_primary)))
            pytest.fail(
                f'{len(missing)} jobs scheduled after the failover never reached the queue: {missing[:10]}\n'
                f'{output.text}'
            )
        if first_new_at is None:
            wait_for(lambda: set(queue_ids(new_primary)) - replicated, timeout=30, step=0.01)
            first_new_at = time.monotonic()
        ids = queue_ids(new_primary)
        duplicates = [job_id for job_id, n in Counter(ids).items() if n > 1]
        pending = {member.decode() for member in new_primary.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}
        lost = [job_id for job_id in before if job_id not in ids and job_id not in pending]
        during = [job_id for job_id, at in scheduled if killed_at <= at <= promoted_at]
        assert duplicates == [], duplicates
        assert process.poll() is None, output.text
        assert stop(process) == 0
        log = output.text
        print(
            f'\n[figures] sentinel failover: promoted {(promoted_at - killed_at) * 1000:.0f} ms after kill -9; '
            f'first job enqueued on the new primary {(first_new_at - killed_at) * 1000:.0f} ms after kill -9; '
            f'scheduled before/during/after: {len(before)}/{len(during)}/{len(after)} '
            f'(refused during the failover: {refused}); before the kill and lost: {len(lost)}; duplicates: 0'
        )
        print('[scheduler log]\n' + log)
    finally:
        if process is not None:
            kill(process)
        connection.connection_pool.disconnect()
        new_primary.connection_pool.disconnect()
        for sentinel in sentinels:
            sentinel.close()
        replica.close()
        primary.close()
