"""Jobs that the suite's RQ workers really execute; each leaves a trace in Redis that tests can read."""

from __future__ import annotations

import json
import os
import time

import redis

TRACE_KEY = 'drqs-test:trace'


def _connection() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get('DRQS_TEST_REDIS_URL', 'redis://127.0.0.1:6379/0'))


def record(label: str, *args: object) -> str:
    """Appends one line to the trace list: what ran and when."""
    _connection().rpush(TRACE_KEY, json.dumps({'label': label, 'args': list(args), 'at': time.time()}))
    return label


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    raise ValueError(message)


def user_callback(job: object, connection: object, result: object, *args: object, **kwargs: object) -> None:
    """An RQ success callback of the user's own, given through the Scheduler API."""
    record('user-callback', result)


def slow_traced(seconds: float) -> float:
    """Leaves its run's job id in the trace, then sleeps: a run executed twice shows twice."""
    from rq import get_current_job

    job = get_current_job()
    record('slow', job.id if job else None)
    time.sleep(seconds)
    return seconds


def slow_first(seconds: float) -> float:
    """Sleeps on its first call only (counted in Redis, across processes); later calls return at once."""
    if _connection().incr('drqs-test:slow-first') == 1:
        time.sleep(seconds)
    return seconds


ATTEMPTS_KEY = 'drqs-test:attempts'


def flaky(name: str, failures: int) -> int:
    """Fails its first ``failures`` attempts, then succeeds; each attempt leaves its number and start time."""
    connection = _connection()
    attempt = connection.incr(f'{ATTEMPTS_KEY}:{name}')
    connection.rpush(f'{ATTEMPTS_KEY}:{name}:started', time.time())
    fire_time = _current_fire_time()
    connection.rpush(f'{ATTEMPTS_KEY}:{name}:fire', fire_time.isoformat() if fire_time else '')
    if attempt <= failures:
        raise ValueError(f'attempt {attempt} of {name} fails')
    return attempt


def _current_fire_time():  # type: ignore[no-untyped-def]
    from django_rq_scheduled import current_fire_time

    return current_fire_time()


def record_fire_time(label: str) -> None:
    """Records what ``current_fire_time()`` says inside the job (a plain ``rq worker``: no Django settings)."""
    from django_rq_scheduled import current_fire_time

    fire_time = current_fire_time()
    record(label, fire_time.isoformat() if fire_time is not None else None)


def slow_at_first(name: str, seconds: float) -> int:
    """Its first attempt takes ``seconds`` (long enough to kill its worker), later ones return at once."""
    attempt = flaky(name, 0)
    if attempt == 1:
        time.sleep(seconds)
    return attempt
