"""Real processes, real faults: kill -9 mid-batch, two leaders, a Redis restart. Nothing lost, nothing twice."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from rq_scheduler import Scheduler as RQScheduler

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.processes import django_shell, kill, queue_ids, scheduler_process, stop, wait_for
from tests.processes_database import run_feedback
from tests.redis_server import RedisServer, has_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc


def schedule_one_offs(scheduler, count, when, prefix='job'):
    ids = [f'{prefix}-{i}' for i in range(count)]
    for job_id in ids:
        scheduler.enqueue_at(when, tasks.add, 1, 2, job_id=job_id)
    return ids


def lock_owner(connection):
    value = connection.get(keys.LOCK_KEY)
    if not value:
        return None
    return keys.lease_holder(value.decode()) or 'rq-scheduler'  # its lock holds a bare timestamp


def test_kill_9_at_random_points_of_large_batches_loses_and_duplicates_nothing(connection, redis_url):
    scheduler = Scheduler(connection=connection)
    expected = schedule_one_offs(scheduler, 3000, datetime.now(UTC))
    start = datetime.now(UTC) - timedelta(seconds=30)
    templates = [f'every-{i}' for i in range(20)]
    for template in templates:
        scheduler.schedule(start, tasks.add, args=[1, 2], interval=0.5, id=template)
    rng = random.Random(1234)
    interrupted = cycles = 0
    for cycles in range(1, 41):
        remaining = connection.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', time.time()) - len(templates)
        if remaining <= 0 and interrupted < 3:  # a loaded machine was slow to kill: more jobs, more kills
            expected += schedule_one_offs(scheduler, 3000, datetime.now(UTC), prefix=f'more-{cycles}')
        elif remaining <= 0:
            break
        before = connection.llen('rq:queue:default')
        process = scheduler_process(redis_url, '--batch-size', '5', '--interval', '0.1', '--lease-ttl', '0.5')
        wait_for(lambda before=before: connection.llen('rq:queue:default') > before, timeout=30, step=0.001)
        time.sleep(rng.uniform(0, 0.02))
        kill(process)
        moved = connection.llen('rq:queue:default') - before
        interrupted += moved > 0 and connection.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', time.time()) > len(templates)
        wait_for(lambda: not connection.exists(keys.LOCK_KEY), timeout=5)  # the dead leader's lease expires
    process = scheduler_process(redis_url, '--burst')
    assert process.wait(60) == 0
    ids = queue_ids(connection)
    duplicates = [job_id for job_id, n in Counter(ids).items() if n > 1]
    assert duplicates == []
    assert set(expected) <= set(ids)
    assert all(template in scheduler for template in templates)  # periodic templates never lost
    print(f'\n[figures] kill -9 cycles: {cycles}, landed mid-move: {interrupted}, jobs: {len(ids)}, duplicates: 0')
    assert interrupted >= 3, f'only {interrupted} kills landed in the middle of the move'


FEEDBACK_ROWS = """
import json
from datetime import datetime, timedelta, timezone
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
now = datetime.now(timezone.utc)
rows = [
    RepeatableJob.objects.create(
        name='every-second', callable='tests.tasks.add', scheduled_time=now, interval=1, interval_unit='seconds'
    ),
    CronJob.objects.create(name='cron-every-second', callable='tests.tasks.add', cron_string='* * * * * *'),
    ScheduledJob.objects.create(name='once', callable='tests.tasks.add', scheduled_time=now + timedelta(seconds=3)),
]
print(json.dumps([row.template_id for row in rows]))
"""


def runs_of(template: str, ids: list[str]) -> int:
    """How many times a row's template reached the queue: a one-off under its own id, a periodic one as
    ``<template>_at_<fire time>``."""
    return sum(job_id == template or job_id.startswith(f'{template}_at_') for job_id in ids)


def test_run_feedback_of_leaders_killed_9_while_writing_it_reaches_each_row_once(connection, redis_url):
    """The leader writes run feedback into the rows right after a move; kill -9 lands there, or just before. The
    records wait in Redis until a successor writes them: in the end each row counts the runs the queue holds."""
    templates = json.loads(django_shell(redis_url, FEEDBACK_ROWS))
    rng = random.Random(4321)
    left_unwritten = 0
    for _ in range(5):
        before = connection.llen('rq:queue:default')
        process = scheduler_process(redis_url, '--interval', '0.1', '--lease-ttl', '0.5')
        wait_for(lambda before=before: connection.llen('rq:queue:default') > before, timeout=30, step=0.001)
        time.sleep(rng.uniform(0, 0.03))
        kill(process)
        left_unwritten += connection.llen(keys.RUNS_KEY) > 0
        wait_for(lambda: not connection.exists(keys.LOCK_KEY), timeout=5)
    process = scheduler_process(redis_url, '--burst')  # moves what fell due meanwhile, then writes all feedback
    assert process.wait(60) == 0
    assert connection.llen(keys.RUNS_KEY) == 0
    ids = queue_ids(connection)
    assert [job_id for job_id, n in Counter(ids).items() if n > 1] == []
    runs = {template: runs_of(template, ids) for template in templates}
    assert runs[templates[-1]] == 1 and min(runs.values()) >= 1
    assert run_feedback() == {template: (count, True) for template, count in runs.items()}
    print(f'\n[figures] kill -9 right after a move: {left_unwritten} of 5 left run records unwritten; runs {runs}')
    assert left_unwritten >= 1, 'no kill landed before the feedback was written'


def test_two_leaders_never_both_move_and_a_standby_takes_over(connection, redis_url):
    options = ('--interval', '0.1', '--lease-ttl', '1')
    processes = {name: scheduler_process(redis_url, *options, name=name) for name in ('alpha', 'beta')}
    try:
        leader = wait_for(lambda: lock_owner(connection), timeout=20)
        standby = ({'alpha', 'beta'} - {leader}).pop()
        wait_for(lambda: connection.zscore(keys.INSTANCES_KEY, standby), timeout=20)
        scheduler = Scheduler(connection=connection)
        now = datetime.now(UTC)
        expected = []
        for i in range(300):
            expected += schedule_one_offs(scheduler, 1, now + timedelta(milliseconds=10 * i), prefix=f'spread{i}')
        scheduler.schedule(now, tasks.add, interval=0.2, id='ticker')
        time.sleep(1.0)
        killed_at = time.monotonic()
        kill(processes[leader])
        wait_for(lambda: lock_owner(connection) == standby, timeout=10, step=0.01)
        takeover = time.monotonic() - killed_at
        wait_for(lambda: set(expected) <= set(queue_ids(connection)), timeout=20)
        time.sleep(0.5)
        ids = queue_ids(connection)
        assert [job_id for job_id, n in Counter(ids).items() if n > 1] == []
        print(f'\n[figures] takeover after kill -9 of the leader: {takeover * 1000:.0f} ms (lease 1 s)')
        assert takeover < 1 + 0.5 + 1  # lease + a standby poll + margin
        ticks = [job_id for job_id in ids if job_id.startswith('ticker_at_')]
        assert len(ticks) >= 8
    finally:
        for process in processes.values():
            kill(process)


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to restart')
def test_redis_restart_is_survived(tmp_path):
    server = RedisServer(appendonly=True).start()
    url = server.url
    connection = redis.Redis.from_url(url)
    process = scheduler_process(url, '--interval', '0.2', '--lease-ttl', '2', name='survivor')
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=20)
        scheduler = Scheduler(connection=connection)
        first = schedule_one_offs(scheduler, 50, datetime.now(UTC) + timedelta(milliseconds=300), prefix='before')
        wait_for(lambda: set(first) <= set(queue_ids(connection)), timeout=10)
        server.stop()
        time.sleep(2)
        assert process.poll() is None
        server.start()
        second = schedule_one_offs(scheduler, 50, datetime.now(UTC) + timedelta(milliseconds=300), prefix='after')
        wait_for(lambda: set(second) <= set(queue_ids(connection)), timeout=30)
        ids = queue_ids(connection)
        assert sorted(ids) == sorted(first + second)
        assert process.poll() is None
        assert stop(process) == 0
    finally:
        kill(process)
        connection.connection_pool.disconnect()
        server.close()
    output = process.stdout.read() if process.stdout else ''
    assert 'Redis is unavailable' in output


def test_a_restarted_process_reuses_its_name_after_a_kill_9(connection, redis_url):
    first = scheduler_process(redis_url, '--interval', '0.1', '--lease-ttl', '0.5', name='fixed-name')
    try:
        wait_for(lambda: lock_owner(connection) == 'fixed-name', timeout=20)
        kill(first)
        second = scheduler_process(redis_url, '--interval', '0.1', '--lease-ttl', '0.5', name='fixed-name')
        scheduler = Scheduler(connection=connection)
        scheduler.enqueue_at(datetime.now(UTC), tasks.add, job_id='after-restart')
        wait_for(lambda: queue_ids(connection) == ['after-restart'], timeout=40)
        assert second.poll() is None
        assert stop(second) == 0
    finally:
        kill(first)
        kill(second)


def test_a_leader_paused_longer_than_its_lease_is_fenced_when_it_wakes(connection, redis_url):
    import signal as signals

    options = ('--interval', '0.1', '--lease-ttl', '1')
    first = scheduler_process(redis_url, *options, name='paused')
    second = None
    try:
        wait_for(lambda: lock_owner(connection) == 'paused', timeout=20)
        second = scheduler_process(redis_url, *options, name='awake')
        wait_for(lambda: connection.zscore(keys.INSTANCES_KEY, 'awake'), timeout=20)
        first.send_signal(signals.SIGSTOP)  # e.g. a long GC pause or a frozen VM
        wait_for(lambda: lock_owner(connection) == 'awake', timeout=10)
        scheduler = Scheduler(connection=connection)
        now = datetime.now(UTC)
        expected = []
        for i in range(100):
            expected += schedule_one_offs(scheduler, 1, now + timedelta(milliseconds=20 * i), prefix=f'p{i}')
        first.send_signal(signals.SIGCONT)  # it wakes up believing it still leads
        wait_for(lambda: set(expected) <= set(queue_ids(connection)), timeout=20)
        time.sleep(1)
        ids = queue_ids(connection)
        assert [job_id for job_id, n in Counter(ids).items() if n > 1] == []
        assert lock_owner(connection) == 'awake'
    finally:
        kill(first)
        if second:
            kill(second)


class CommandLog:
    """Every command Redis executes, from MONITOR, in the order Redis ran them (Lua's own calls included)."""

    STOP = 'drqs-stop-monitor'

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.commands: list[dict] = []
        self.thread = threading.Thread(target=self._record, daemon=True)

    def __enter__(self) -> CommandLog:
        self.monitor = self.client.monitor().__enter__()
        self.thread.start()
        return self

    def _record(self) -> None:
        for command in self.monitor.listen():
            if command['command'] == f'ECHO {self.STOP}':
                return
            self.commands.append(command)

    def __exit__(self, *exc_info: object) -> None:
        self.client.echo(self.STOP)
        self.thread.join(30)
        self.monitor.__exit__(*exc_info)
        self.client.connection_pool.disconnect()


def rq_scheduler_passes(commands: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """rq-scheduler's client address, and the spans of its passes: its ZRANGEBYSCORE to its DEL of the lock."""
    client = next(
        (c['client_address'], c['client_port'])
        for c in commands
        if c['command'].startswith(f'SET {keys.LOCK_KEY} ') and ' EX ' in c['command']
    )
    passes, start = [], None
    for index, c in enumerate(commands):
        if (c['client_address'], c['client_port']) != client:
            continue
        if c['command'].startswith(f'ZRANGEBYSCORE {keys.SCHEDULED_JOBS_KEY} '):
            start = index
        elif c['command'] == f'DEL {keys.LOCK_KEY}' and start is not None:
            passes.append((start, index))
            start = None
    return client, passes


def queue_pushes(commands: list[dict]) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(commands) if c['command'].startswith(('RPUSH rq:queue:', 'LPUSH rq:queue:'))]


def test_an_rq_scheduler_process_alongside_ours_never_moves_jobs_at_the_same_time(connection, redis_url):
    """rq-scheduler takes the shared lock per pass; ours holds it between passes. Their moves never interleave."""
    rqscheduler = str(Path(sys.executable).with_name('rqscheduler'))
    options = ('--interval', '0.2', '--lease-ttl', '2')
    ours = scheduler_process(redis_url, *options, name='ours-1')
    theirs = ours_again = None
    try:
        wait_for(lambda: lock_owner(connection) == 'ours-1', timeout=20)
        with CommandLog(redis_url) as log:
            theirs = subprocess.Popen(
                [rqscheduler, '--url', redis_url, '-i', '1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            now = datetime.now(UTC)
            ids = [f'ours-{i}' for i in range(1500)] + [f'theirs-{i}' for i in range(1500)]
            rq_scheduler = RQScheduler(connection=connection)
            for i in range(1500):
                due = now + timedelta(seconds=1 + 11 * i / 1500)
                Scheduler(connection=connection).enqueue_at(due, tasks.add, i, 1, job_id=f'ours-{i}')
                rq_scheduler.enqueue_at(due.replace(tzinfo=None), tasks.add, i, 2, job_id=f'theirs-{i}')
            Scheduler(connection=connection).schedule(now, tasks.add, interval=0.5, id='ticker')
            time.sleep(3)
            assert stop(ours) == 0  # releases the lease: rq-scheduler's next pass takes the lock
            time.sleep(4)
            ours_again = scheduler_process(redis_url, *options, name='ours-2')
            wait_for(lambda: lock_owner(connection) == 'ours-2', timeout=20)
            wait_for(lambda: set(ids) <= set(queue_ids(connection)), timeout=30)
            time.sleep(1)
            assert theirs.poll() is None and ours_again.poll() is None
            stop(ours_again)
            stop(theirs)
        queued = [job_id for job_id in queue_ids(connection) if job_id != 'ticker']
        assert [job_id for job_id, n in Counter(queued).items() if n > 1] == []
        assert set(ids) <= set(queued)

        client, passes = rq_scheduler_passes(log.commands)
        pushes = queue_pushes(log.commands)
        theirs_pushed = [i for i, c in pushes if (c['client_address'], c['client_port']) == client]
        ours_pushed = [i for i, c in pushes if c['client_type'] == 'lua']
        assert theirs_pushed and ours_pushed, 'both systems must have moved jobs for the test to mean anything'
        assert len(theirs_pushed) + len(ours_pushed) == len(pushes)
        inside_their_passes = [i for i in ours_pushed if any(start < i < end for start, end in passes)]
        assert inside_their_passes == []
        print(
            f'\n[figures] rq-scheduler 0.14 (-i 1) next to ours: {len(passes)} rq-scheduler passes moved '
            f'{len(theirs_pushed)} jobs, ours moved {len(ours_pushed)}; none of ours inside one of their passes; '
            f'{len(queued)} jobs, 0 duplicates'
        )
    finally:
        for process in (ours, theirs, ours_again):
            if process is not None:
                kill(process)
