"""Django Tasks (the django-tasks backport's ``@task``) for tests/test_django_tasks.py, on the backends of
tests/settings.py's TASKS: ``default`` is django-tasks-rq's."""

from __future__ import annotations

import os

import redis
from django_tasks import task

CALLS_KEY = 'drqs-test:task-calls'


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def explode() -> None:
    raise ValueError('boom')


@task(queue_name='high')
def on_high() -> str:
    return 'high'


@task(backend='immediate')
def remember(value: str) -> str:
    """Runs at once, inside the bridge job: leaves a trace in the suite's Redis."""
    redis.Redis.from_url(os.environ['DRQS_TEST_REDIS_URL']).rpush(CALLS_KEY, value)
    return value


@task(backend='dummy')
def later(value: str) -> str:
    return value


alias = add  # the same task under another name


def plain(a: int, b: int) -> int:
    return a + b
