"""Starting real ``manage.py rqscheduler`` processes against the suite's Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import redis

from tests.processes_database import DATABASE_VARIABLES, database_env, processes_database, without_database

ROOT = Path(__file__).resolve().parent.parent


def process_env(url: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the suite's Django processes, on the running test's processes' database
    (tests/processes_database.py); ``env`` adds to it or overrides it (e.g. a DRQS_TEST_DB of its own)."""
    # PYTHONFAULTHANDLER: a process that will not stop shows every thread's stack when aborted (``stop``).
    base = {
        **without_database(os.environ),
        'DRQS_TEST_REDIS_URL': url,
        'PYTHONPATH': str(ROOT),
        'PYTHONFAULTHANDLER': '1',
    }
    if not (env and set(DATABASE_VARIABLES) & set(env)):
        base |= database_env(processes_database())
    return {**base, **(env or {})}


def scheduler_process(
    url: str, *options: str, name: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    command = [sys.executable, '-m', 'django', 'rqscheduler', '--settings', 'tests.settings', *options]
    if name:
        command += ['--name', name]
    env = process_env(url, env)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def django_shell(url: str, code: str, env: dict[str, str] | None = None) -> str:
    """Runs ``code`` in ``manage.py shell`` on the processes' database; returns the last line it printed."""
    command = [sys.executable, '-m', 'django', 'shell', '--settings', 'tests.settings', '-c', code]
    done = subprocess.run(command, cwd=ROOT, env=process_env(url, env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f'manage.py shell failed ({done.returncode}):\n{done.stdout}\n{done.stderr}'
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''


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
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f'{process.args} did not stop within {timeout} s:\n{threads_of(process)}') from None


def threads_of(process: subprocess.Popen) -> str:
    """Aborts a stuck process; returns the end of its output, where its fault handler printed every thread's stack."""
    process.send_signal(signal.SIGABRT)
    process.wait(10)
    reader = _readers.get(process)
    if reader is not None:
        lines = reader.text.splitlines()
    else:
        lines = (process.stdout.read() if process.stdout else '').splitlines()
    return '\n'.join(lines[-150:])


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def queue_ids(connection: redis.Redis, queue: str = 'default') -> list[str]:
    """The job ids waiting in an RQ queue, in order."""
    return [member.decode() for member in connection.lrange(f'rq:queue:{queue}', 0, -1)]


_readers: weakref.WeakKeyDictionary[subprocess.Popen, OutputReader] = weakref.WeakKeyDictionary()


class OutputReader:
    """Drains a process's output in a thread (a full pipe would block it) and keeps the lines."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        _readers[process] = self
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout or ():
            self.lines.append(line.rstrip())

    @property
    def text(self) -> str:
        self.thread.join(5)
        return '\n'.join(self.lines)
