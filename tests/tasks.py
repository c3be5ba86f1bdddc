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
