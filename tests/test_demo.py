"""``make demo`` end to end: scripts/demo.py starts Redis, the scheduler, a worker and the admin; scheduled jobs run;
it stops cleanly, with exit code 0, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.processes import wait_for
from tests.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / 'scripts' / 'demo.py'
RUN_FOR = 25


class Demo:
    """scripts/demo.py in a subprocess, on a free port and a SQLite file of its own; its output is collected."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.port = free_port()
        self.db = tmp_path / 'demo.sqlite3'
        command = [sys.executable, str(DEMO), '--port', str(self.port), '--run-for', str(RUN_FOR), *options]
        env = {**os.environ, 'DEMO_DB': str(self.db)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    @property
    def output(self) -> str:
        return ''.join(self.lines)

    def admin_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/admin/login/', timeout=2) as response:
                return response.status == 200 and b'id="login-form"' in response.read()
        except OSError:
            return False

    def query(self, sql: str) -> int:
        """One number from the demo's database, read-only; 0 while the table does not exist or is locked."""
        try:
            with sqlite3.connect(f'file:{self.db}?mode=ro', uri=True, timeout=5) as connection:
                return connection.execute(sql).fetchone()[0] or 0
        except sqlite3.OperationalError:
            return 0

    def task_runs(self) -> int:
        return self.query('SELECT COUNT(*) FROM demo_taskrun')

    def schedule_runs(self) -> int:
        tables = ('scheduledjob', 'repeatablejob', 'cronjob')
        return sum(self.query(f'SELECT SUM(run_count) FROM django_rq_scheduled_{table}') for table in tables)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f'the demo did not exit within {timeout} s:\n{self.output}')
        self.reader.join(5)
        return code

    def started_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r'\(pid (\d+)\)', self.output)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def leftovers(pids: set[int]) -> list[str]:
    """Live processes that are one of ``pids`` or in a session one of them leads (work horses and the like)."""
    found = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(text.split(' ', 1)[0])
        state, _ppid, pgrp, session = text.rsplit(')', 1)[1].split()[:4]
        if state != 'Z' and (pid in pids or int(pgrp) in pids or int(session) in pids):
            found.append(text[:80])
    return found


@pytest.fixture
def demo_factory(tmp_path):
    demos: list[Demo] = []

    def start(*options: str) -> Demo:
        demos.append(Demo(tmp_path, *options))
        return demos[-1]

    yield start
    for demo in demos:
        demo.stop()


def assert_clean_exit(demo: Demo, code: int, processes: int) -> None:
    assert code == 0, demo.output
    assert demo.lines[-1].rstrip().endswith('| stopped'), demo.output
    pids = demo.started_pids()
    assert len(pids) == processes, demo.output
    if Path('/proc/self/stat').exists():
        assert leftovers(pids) == [], demo.output


def test_demo_serves_the_admin_runs_jobs_and_stops_after_run_for(demo_factory):
    demo = demo_factory()
    wait_for(demo.admin_answers, timeout=RUN_FOR, step=0.2)
    wait_for(demo.task_runs, timeout=RUN_FOR, step=0.2)  # a task wrote its row: scheduler and worker both work
    code = demo.wait(RUN_FOR + 15)
    assert demo.schedule_runs() > 0, demo.output  # the scheduler's run feedback reached the rows
    assert 'login: admin / admin' in demo.output
    fake = "fakeredis's TcpFakeServer" in demo.output  # no redis-server installed here
    assert_clean_exit(demo, code, processes=3 if fake else 4)  # redis-server, scheduler, worker, web


def test_demo_on_fakeredis_stops_on_sigterm(demo_factory):
    demo = demo_factory('--fakeredis')
    wait_for(demo.admin_answers, timeout=RUN_FOR, step=0.2)
    wait_for(demo.task_runs, timeout=RUN_FOR, step=0.2)
    demo.process.send_signal(signal.SIGTERM)
    code = demo.wait(20)
    assert "fakeredis's TcpFakeServer" in demo.output
    assert '| stopping (SIGTERM)' in demo.output
    assert_clean_exit(demo, code, processes=3)  # scheduler, worker, web
