"""Redis fixtures: fakeredis for unit tests, a private redis-server for integration tests; the processes' database
dropped after each test."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest
import redis
import time_machine
from django.core.signals import setting_changed
from django.dispatch import receiver

from tests.frozen import T0
from tests.processes_database import discard_processes_database
from tests.redis_server import start_server

ROOT = Path(__file__).resolve().parent.parent


@receiver(setting_changed)
def _reload_django_rq_queues(setting: str, **kwargs: object) -> None:
    """django-rq before 4.0 reads RQ_QUEUES once, at import: tests that point it elsewhere reload that module."""
    if setting != 'RQ_QUEUES':
        return
    import django_rq.settings

    if 'QUEUES' in vars(django_rq.settings):
        importlib.reload(django_rq.settings)


@pytest.fixture(autouse=True)
def _fresh_processes_database() -> Iterator[None]:
    """The processes a test starts share a fresh copy of the migrated database (tests/processes_database.py),
    dropped once the test is over: a module or session fixture must not start processes that outlive its test."""
    yield
    discard_processes_database()


@pytest.fixture(scope='session')
def redis_server(request: pytest.FixtureRequest) -> Iterator[object]:
    server = start_server()
    if server.worker_class:
        os.environ['DRQS_TEST_WORKER_CLASS'] = server.worker_class
    print(f'\n[django-rq-scheduled tests] integration Redis backend: {server.backend} at {server.url}')
    request.config.redis_backend = server.backend  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: object, settings: object) -> Iterator[str]:
    url = redis_server.url  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    if client.dbsize():
        left = sorted(client.scan_iter(count=100))[:20]
        pytest.fail(f'refusing to use {url}: the database is not empty (an earlier test left {left})')
    os.environ['DRQS_TEST_REDIS_URL'] = url
    settings.RQ_QUEUES = {name: {'URL': url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
    yield url
    client.flushdb()
    client.connection_pool.disconnect()


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.connection_pool.disconnect()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the commands sent to any Redis (a pipeline counts once): ``round_trips['n']``."""
    counter = {'n': 0}
    original = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: object, check_health: bool = True) -> None:
        counter['n'] += 1
        original(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.connection.Connection, 'send_packed_command', counting)
    return counter


@pytest.fixture
def clock() -> Iterator[object]:
    """Time frozen a minute before ``tests.frozen.T0``."""
    with time_machine.travel(T0 - timedelta(minutes=1), tick=False) as traveller:
        yield traveller


@pytest.fixture
def scheduler(fake_connection: fakeredis.FakeRedis, clock: object) -> object:
    """A scheduler on fakeredis, at the frozen instant of ``clock``."""
    from django_rq_scheduled import Scheduler

    return Scheduler(connection=fake_connection, name='test')


@pytest.fixture
def fake_connection() -> Iterator[fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.flushall()


def run_worker(url: str, *queues: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs a real RQ worker process in burst mode until the queues are empty."""
    command = [sys.executable, '-m', 'rq.cli', 'worker', '--burst', '--url', url, *(queues or ('default',))]
    if os.environ.get('DRQS_TEST_WORKER_CLASS'):
        command += ['--worker-class', os.environ['DRQS_TEST_WORKER_CLASS']]
    env = {**os.environ, 'DRQS_TEST_REDIS_URL': url, 'PYTHONPATH': str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=True)


@pytest.fixture
def leader(connection):
    """An in-process leader: moves what is due, then reads runs in as ``manage.py rqscheduler`` does each tick."""
    from django_rq_scheduled import Scheduler
    from django_rq_scheduled.feedback import DatabaseSync

    # Its ticks are far apart (workers run between them, slowly on a loaded machine): a lease that outlives them.
    scheduler = Scheduler(queue_name='default', lease_ttl=600)
    assert scheduler.acquire_lock()
    hook = DatabaseSync(reconcile_interval=3600, background=False)

    def tick() -> None:
        scheduler.move_due_jobs()
        hook(scheduler)

    tick.scheduler = scheduler  # type: ignore[attr-defined]
    tick.hook = hook  # type: ignore[attr-defined]
    return tick


@pytest.fixture
def planned(monkeypatch):
    """The members the planned path parsed (the fast path never parses)."""
    from django_rq_scheduled.core.moves import Planner

    seen: list = []
    original = Planner.parse

    def parse(self, member, score, raw):
        seen.append(member)
        return original(self, member, score, raw)

    monkeypatch.setattr(Planner, 'parse', parse)
    return seen


STALL = """
local function now() local t = redis.call('TIME'); return tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local until_ = now() + tonumber(ARGV[1])
while now() < until_ do end
"""
"""A script that keeps Redis busy for ARGV[1] seconds (``connection.eval(STALL, 0, seconds)``)."""


@contextlib.contextmanager
def short_socket_timeout(connection: redis.Redis, seconds: float) -> Iterator[None]:
    """The connections of ``connection`` time out after ``seconds`` in this block (new ones, made for it)."""
    pool = connection.connection_pool
    saved = dict(pool.connection_kwargs)
    pool.connection_kwargs.update(socket_timeout=seconds, orig_socket_timeout=seconds)  # redis-py 8 keeps both
    pool.reset()
    try:
        yield
    finally:
        pool.connection_kwargs.clear()
        pool.connection_kwargs.update(saved)
        pool.reset()
