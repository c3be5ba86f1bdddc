"""The functions the sample schedules run. ``RQ_SCHEDULED['ALLOWED_CALLABLES']`` allows ``demo.tasks.*`` only."""

import random
import socket
import time

from rq import get_current_job

from .models import TaskRun


def _record(task: str, message: str) -> TaskRun:
    job = get_current_job()
    return TaskRun.objects.create(task=task, message=message, job_id=job.id if job else '')


def record_heartbeat(source: str = 'cron') -> str:
    """Writes a TaskRun row, so the admin shows that the schedule runs."""
    message = f'alive on {socket.gethostname()} ({source})'
    _record('record_heartbeat', message)
    return message


def flaky_sync() -> int:
    """Pretends to sync with a partner API that times out about one time in three: failed runs land in the
    queue's failed jobs (Django admin > Django RQ), and the next run is scheduled all the same."""
    if random.random() < 1 / 3:
        raise TimeoutError('partner API did not answer within 5 s (simulated)')
    synced = random.randint(1, 50)
    _record('flaky_sync', f'synced {synced} records')
    return synced


def slow_report(seconds: float = 3) -> str:
    """A report that takes a while: with ``overlap`` set to skip, a run is skipped while the previous one is busy."""
    time.sleep(seconds)
    message = f'report built in {seconds:g} s'
    _record('slow_report', message)
    return message
