"""The pause with real processes: two ``rqscheduler`` processes, ``manage.py schedules pause | resume`` and a real
worker. Nothing of a paused queue is enqueued while the other queue runs, the pause outlives the leader (killed),
and on resume each schedule runs once for the slots of the pause (catch-up ``latest``), a one-off once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import pytest
from rq.job import Job

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from tests import tasks
from tests.conftest import run_worker
from tests.processes import (
    ROOT,
    OutputReader,
    django_shell,
    kill,
    process_env,
    queue_ids,
    scheduler_process,
    stop,
    wait_for,
)
from tests.test_faults import lock_owner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc

ROWS = """
import json
from datetime import datetime, timedelta, timezone
from django_rq_scheduled.models import RepeatableJob, ScheduledJob
now = datetime.now(timezone.utc)
rows = [
    RepeatableJob.objects.create(
        name='high-tick', callable='tests.tasks.add', args=[1, 2], queue='high', scheduled_time=now, interval=1,
        interval_unit='seconds',
    ),
    RepeatableJob.objects.create(
        name='default-tick', callable='tests.tasks.add', args=[1, 2], scheduled_time=now, interval=1,
        interval_unit='seconds',
    ),
    ScheduledJob.objects.create(
        name='high-once', callable='tests.tasks.add', args=[1, 2], queue='high',
        scheduled_time=now + timedelta(seconds=%(once_in)s),
    ),
]
print(json.dumps([row.template_id for row in rows]))
"""


def schedules(url: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, '-m', 'django', 'schedules', *arguments, '--settings', 'tests.settings']
    return subprocess.run(command, cwd=ROOT, env=process_env(url), capture_output=True, text=True, timeout=60)


def fire_ms(job_id: str) -> int:
    return int(job_id.rpartition('_at_')[2])


def test_a_paused_queue_moves_nothing_through_a_change_of_leader_and_catches_up_once(connection, redis_url):
    options = ('--interval', '0.1', '--lease-ttl', '1')
    processes = {name: scheduler_process(redis_url, *options, name=name) for name in ('alpha', 'beta')}
    try:
        leader = wait_for(lambda: lock_owner(connection), timeout=20)
        high_tick, default_tick, once = json.loads(django_shell(redis_url, ROWS % {'once_in': 4}))
        wait_for(lambda: any(j.startswith(high_tick) for j in queue_ids(connection, 'high')), timeout=20)

        done = schedules(redis_url, 'pause', '--queue', 'high', '--reason', 'maintenance')
        assert done.returncode == 0 and 'queue high paused.' in done.stdout, done.stderr
        paused_at = time.time()
        high_before = queue_ids(connection, 'high')
        default_before = len(queue_ids(connection))
        wait_for(lambda: len(queue_ids(connection)) >= default_before + 2, timeout=10)  # the other queue runs

        kill(processes[leader])  # the leader goes; the pause lives in Redis
        standby = ({'alpha', 'beta'} - {leader}).pop()
        wait_for(lambda: lock_owner(connection) == standby, timeout=10)
        default_then = len(queue_ids(connection))
        wait_for(lambda: len(queue_ids(connection)) >= default_then + 2, timeout=10)
        once_due = connection.zscore(keys.SCHEDULED_JOBS_KEY, once)
        time.sleep(max(0.0, once_due + 1 - time.time()))  # the one-off falls due during the pause
        assert queue_ids(connection, 'high') == high_before  # nothing of the paused queue, under either leader
        assert connection.zscore(keys.SCHEDULED_JOBS_KEY, once) == once_due  # still scheduled, due
        assert len(queue_ids(connection)) > default_then  # while the other queue runs

        time.sleep(max(0.0, paused_at + 4.5 - time.time()))  # four slots or more of high-tick inside the pause
        resumed_at = time.time()
        done = schedules(redis_url, 'resume', '--queue', 'high')
        assert done.returncode == 0 and 'queue high resumed.' in done.stdout, done.stderr
        wait_for(lambda: once in queue_ids(connection, 'high'), timeout=10)
        wait_for(lambda: len(queue_ids(connection, 'high')) >= len(high_before) + 3, timeout=10)
    finally:
        for process in processes.values():
            stop(process)  # the killed one has ended: stop() only waits for it
    high = queue_ids(connection, 'high')
    assert [job_id for job_id, n in Counter(high + queue_ids(connection)).items() if n > 1] == []
    assert high.count(once) == 1
    # Catch-up 'latest': the slots of the pause (four or more) ran once, as the latest of them when resumed (the
    # command returns a Django start-up after it resumed); none of the earlier ones ran.
    caught_up = [fire_ms(j) for j in high[len(high_before) :] if j.startswith(f'{high_tick}_at_')]
    assert resumed_at - paused_at > 4
    assert caught_up[0] > (resumed_at - 1) * 1000, (caught_up, paused_at, resumed_at)
    assert caught_up == sorted(set(caught_up))
    assert not any(j.startswith(high_tick) for j in queue_ids(connection)) and default_tick

    run_worker(redis_url, 'high')
    assert Job.fetch(once, connection=connection).get_status() == 'finished'


def script_calls(connection) -> int:
    stats = connection.info('commandstats')
    return sum(stats.get(f'cmdstat_{name}', {}).get('calls', 0) for name in ('evalsha', 'eval'))


@pytest.mark.parametrize('scope', [['--queue', 'high'], []], ids=['one queue', 'everything'])
def test_due_entries_of_a_paused_queue_do_not_make_the_loop_spin(connection, redis_url, scope):
    scheduler = Scheduler(connection=connection)
    for n in range(3):
        scheduler.enqueue_at(datetime.now(UTC), tasks.add, n, job_id=f'held-{n}', queue_name='high')
    assert schedules(redis_url, 'pause', *scope).returncode == 0
    process = scheduler_process(redis_url, '--interval', '0.5', name='solo')
    output = OutputReader(process)
    try:
        wait_for(lambda: lock_owner(connection) == 'solo', timeout=20)
        connection.config_resetstat()
        time.sleep(2)
        calls = script_calls(connection)  # a loop that woke for the paused entries would call thousands of times
        assert calls < 100, calls
        assert queue_ids(connection, 'high') == []
        assert schedules(redis_url, 'resume').returncode == 0
        wait_for(lambda: len(queue_ids(connection, 'high')) == 3, timeout=10)
    finally:
        stop(process)
    if not scope:  # said once each, not at every tick
        assert output.text.count('Scheduling is paused on this Redis server') == 1
        assert output.text.count('Scheduling runs again') == 1
