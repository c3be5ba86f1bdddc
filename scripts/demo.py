#!/usr/bin/env python
"""``make demo``: the example project's admin, one scheduler and one worker, on a Redis of their own.

Migrates the SQLite database, creates the admin user (admin / admin) and the sample schedules when they are
missing, starts a redis-server on a free loopback port (or, when none is installed, fakeredis's TCP server inside
this process), then ``manage.py rqscheduler``, ``manage.py rqworker default high`` and ``manage.py runserver``.
Ctrl-C or SIGTERM stops them all.

Environment: ``DEMO_PORT`` (web port; default 8000, or a free one when 8000 is taken) and ``DEMO_DB`` (the SQLite
file; default ``example_project/db.sqlite3``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / 'example_project'
LOGIN = ('admin', 'admin')  # created by `manage.py demo_setup`
DEFAULT_PORT = 8000
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

_print_lock = threading.Lock()
_stop_requested: list[str] = []
_relays: list[threading.Thread] = []


def say(message: str, prefix: str = 'demo') -> None:
    with _print_lock:
        print(f'{prefix:<9} | {message}', flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--port', type=int, default=os.environ.get('DEMO_PORT'), help='web port (env DEMO_PORT)')
    parser.add_argument('--run-for', type=float, metavar='SECONDS', help='stop everything after SECONDS')
    parser.add_argument(
        '--fakeredis', action='store_true', help="use fakeredis's TCP server even if redis-server exists"
    )
    return parser.parse_args(argv)


# -- ports and Redis --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as runserver does: TIME_WAIT is no obstacle
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
        return True


def choose_web_port(requested: int | None) -> int:
    if requested:
        return requested
    return DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()


@contextmanager
def private_redis(use_fake: bool) -> Iterator[tuple[str, str, bool]]:
    """Yields (url, description, is_fake) of a Redis that lives as long as the demo."""
    port = free_port()
    url = f'redis://127.0.0.1:{port}/0'
    binary = shutil.which('redis-server')
    if binary and not use_fake:
        with tempfile.TemporaryDirectory(prefix='drqs-demo-redis-') as workdir:
            command = [binary, '--port', str(port), '--bind', '127.0.0.1', '--dir', workdir, '--save', '']
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_for_redis(port, process)
                yield url, f'{binary} (pid {process.pid}) at {url}', False
            finally:
                stop_processes({'redis': process})
        return
    try:
        from fake_redis_server import start_fake_server
    except ImportError:
        sys.exit('The demo needs a redis-server binary, or fakeredis (pip install "fakeredis[lua]").')
    server = start_fake_server(port)
    try:
        reason = 'as asked' if use_fake else 'no redis-server installed'
        yield url, f"fakeredis's TcpFakeServer in this process ({reason}) at {url}", True
    finally:
        server.shutdown()
        server.server_close()


def wait_for_redis(port: int, process: subprocess.Popen) -> None:
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'redis-server did not start on port {port}') from None
            time.sleep(0.05)
        finally:
            client.connection_pool.disconnect()


# -- the project's processes ------------------------------------------------------------------------------------


def child_env(redis_url: str) -> dict[str, str]:
    paths = [str(ROOT), os.environ.get('PYTHONPATH', '')]  # this checkout's app, whatever the venv holds
    return {
        **os.environ,
        'DJANGO_SETTINGS_MODULE': 'example_project.settings',
        'DEMO_REDIS_URL': redis_url,
        'PYTHONPATH': os.pathsep.join(path for path in paths if path),
        'PYTHONUNBUFFERED': '1',
    }


def manage(*args: str) -> list[str]:
    return [sys.executable, 'manage.py', *args]


def prepare_database(env: dict[str, str]) -> None:
    """Migrations, the admin user, the sample schedules: each step's output is shown with a prefix."""
    for command in (manage('migrate', '--noinput', '-v', '1'), manage('demo_setup')):
        if _stop_requested:
            return
        process = start_process('setup', command, env)
        if process.wait() != 0:
            raise SystemExit(f'{" ".join(command[1:])} failed (exit code {process.returncode})')


def start_process(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Starts ``command`` in its own session (Ctrl-C reaches only this script) and relays its output."""
    process = subprocess.Popen(
        command,
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    relay = threading.Thread(target=relay_output, args=(name, process), name=f'relay-{name}', daemon=True)
    relay.start()
    _relays.append(relay)
    return process


def relay_output(name: str, process: subprocess.Popen) -> None:
    for line in process.stdout:  # type: ignore[union-attr]
        say(line.rstrip(), prefix=name)


def start_services(env: dict[str, str], port: int, fake_redis: bool) -> dict[str, subprocess.Popen]:
    # On fakeredis, a worker class that copes with that server's CLIENT INFO reply (see scripts/fake_redis_server.py).
    worker_class = ['--worker-class', 'scripts.fake_redis_server.FakeRedisWorker'] if fake_redis else []
    services = {
        'scheduler': manage('rqscheduler'),
        'worker': manage('rqworker', *worker_class, 'default', 'high'),
        'web': manage('runserver', '--noreload', f'127.0.0.1:{port}'),
    }
    processes = {}
    for name, command in services.items():
        processes[name] = start_process(name, command, env)
        say(f'started {name} (pid {processes[name].pid}): {" ".join(command[1:])}')
    return processes


def stop_processes(processes: dict[str, subprocess.Popen]) -> None:
    """SIGTERM to each process, a grace period, then SIGKILL to whatever is left in their process groups."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, process in processes.items():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f'{name} did not stop within {STOP_TIMEOUT:g} s: killing it')
        kill_group(process)
        process.wait()
    for relay in _relays:
        relay.join(timeout=2)  # the last lines of output before "stopped"


def kill_group(process: subprocess.Popen) -> None:
    """Kills what remains of the process's group (e.g. a worker's work horse); the group is the one it leads."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# -- supervising ------------------------------------------------------------------------------------------------


def request_stop(signum: int, frame: object) -> None:
    _stop_requested.append(signal.Signals(signum).name)


def wait_for_admin(url: str, processes: dict[str, subprocess.Popen], deadline: float) -> bool:
    """True once the admin's login page answers; False if a stop was asked for first."""
    while not _stop_requested:
        exit_if_one_died(processes)
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f'{url} did not answer within {STARTUP_TIMEOUT:g} s')
        time.sleep(0.1)
    return False


def exit_if_one_died(processes: dict[str, subprocess.Popen]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            raise SystemExit(f'{name} exited unexpectedly (exit code {process.returncode}); stopping the demo')


def supervise(processes: dict[str, subprocess.Popen], stop_at: float | None) -> None:
    while not _stop_requested:
        exit_if_one_died(processes)
        if stop_at is not None and time.monotonic() >= stop_at:
            _stop_requested.append('--run-for')
            break
        time.sleep(0.2)


def print_banner(admin_url: str, redis_description: str, database: str) -> None:
    lines = [
        f'Admin:  {admin_url}   login: {LOGIN[0]} / {LOGIN[1]}',
        f'Redis:  {redis_description}',
        f'SQLite: {database}',
        'Schedules: Admin > RQ scheduled jobs;  runs: Admin > Demo task runs;  queues: Admin > Django RQ.',
        'Ctrl-C stops the scheduler, the worker, the web server and Redis.',
    ]
    rule = '=' * max(len(line) for line in lines)
    say(rule)
    for line in lines:
        say(line)
    say(rule)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stop_at = started + args.run_for if args.run_for else None
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if os.environ.get('DEMO_DB'):
        os.environ['DEMO_DB'] = str(Path(os.environ['DEMO_DB']).resolve())
    database = os.environ.get('DEMO_DB') or str(PROJECT / 'db.sqlite3')
    port = choose_web_port(args.port)
    admin_url = f'http://127.0.0.1:{port}/admin/'
    with ExitStack() as stack:
        redis_url, redis_description, fake_redis = stack.enter_context(private_redis(args.fakeredis))
        say(f'Redis: {redis_description}')
        env = child_env(redis_url)
        prepare_database(env)
        processes = start_services(env, port, fake_redis) if not _stop_requested else {}
        stack.callback(stop_processes, processes)
        if processes and wait_for_admin(admin_url + 'login/', processes, started + STARTUP_TIMEOUT):
            say(f'admin answering after {time.monotonic() - started:.1f} s')
            print_banner(admin_url, redis_description, database)
            supervise(processes, stop_at)
        say(f'stopping ({_stop_requested[0] if _stop_requested else "start-up interrupted"})')
    say('stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
