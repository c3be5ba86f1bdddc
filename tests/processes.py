"""Starting real ``manage.py rqscheduler`` processes against the suite's Redis."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def own_database_env() -> dict[str, str]:
    """This process's environment without its PostgreSQL: the test database there belongs to this process's tests,
    so the processes it starts get a SQLite file of their own."""
    return {name: value for name, value in os.environ.items() if name != 'DRQS_TEST_POSTGRES_URL'}


@functools.cache
def migrated_database() -> str:
    """A migrated SQLite file shared by the scheduler processes of this test run (they sync run feedback)."""
    folder = tempfile.mkdtemp(prefix='drqs-db-')
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / 'db.sqlite3'
    env = {**own_database_env(), 'DRQS_TEST_DB': str(path), 'PYTHONPATH': str(ROOT)}
    command = [sys.executable, '-m', 'django', 'migrate', '--settings', 'tests.settings', '-v', '0']
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=120)
    return str(path)


def private_database(folder: Path) -> str:
    """A copy of the migrated database in ``folder``: the rows a test creates there reach no other test's
    scheduler processes."""
    path = folder / 'db.sqlite3'
    shutil.copyfile(migrated_database(), path)
    return str(path)


def process_env(url: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the suite's Django processes; ``env`` adds to it or overrides it (e.g. DRQS_TEST_DB)."""
    base = {**own_database_env(), 'DRQS_TEST_REDIS_URL': url, 'PYTHONPATH': str(ROOT)}
    if not (env and 'DRQS_TEST_DB' in env):
        base['DRQS_TEST_DB'] = migrated_database()
    return {**base, **(env or {})}


def scheduler_process(
    url: str, *options: str, name: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    command = [sys.executable, '-m', 'django', 'rqscheduler', '--settings', 'tests.settings', *options]
    if name:
        command += ['--name', name]
    env = process_env(url, env)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Callable[[], object], timeout: float = 15.0, step: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'condition not met within {timeout} s')
        time.sleep(step)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def queue_ids(connection: redis.Redis, queue: str = 'default') -> list[str]:
    """The job ids waiting in an RQ queue, in order."""
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


class OutputReader:
    """Drains a process's output in a thread (a full pipe would block it) and keeps the lines."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout or ():
            self.lines.append(line.rstrip())

    @property
    def text(self) -> str:
        self.thread.join(5)
        return '\n'.join(self.lines)
