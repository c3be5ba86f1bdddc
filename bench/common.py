"""What every benchmark script shares: its command line (``--quick``, ``--json FILE``), the machine it ran on, count
checks, rounds that alternate the systems, and the statistics of its tables."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import redis

from tests.processes_database import discard_processes_database, processes_database
from tests.redis_server import RedisServer

K = TypeVar('K')
T = TypeVar('T')
MODE_HELP = {
    'quick': 'small but real counts, at least 2 rounds alternated, under a minute',
    'smoke': "the test suite's run: the smallest that still checks every count",
}


class BenchmarkError(AssertionError):
    """A run whose counts are wrong: its timings mean nothing."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkError(message)


# -- the machine ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def redis_server_version() -> str:
    binary = shutil.which('redis-server') or 'redis-server'
    return subprocess.run([binary, '--version'], capture_output=True, text=True, check=True).stdout.strip()


def machine() -> dict[str, str]:
    return {
        'nproc': str(len(os.sched_getaffinity(0))),
        'cpu': cpu_model(),
        'python': platform.python_version(),
        'redis-server': redis_server_version(),
        'rq': metadata.version('rq'),
        'redis-py': metadata.version('redis'),
        'rq-scheduler': metadata.version('rq-scheduler'),
        'django': metadata.version('django'),
    }


def machine_lines(described: dict[str, str]) -> list[str]:
    return ['## Machine', '', *(f'- {name}: {value}' for name, value in described.items()), '']


# -- measuring --------------------------------------------------------------------------------------------------


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the run's own on a free loopback port, stopped at the end."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
        server.close()


@contextmanager
def stopwatch(phases: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds the block took to ``phases`` under ``name``."""
    start = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - start, 1)


@contextmanager
def loop_database() -> Iterator[None]:
    """The migrated SQLite file shared by the ``manage.py rqscheduler`` processes of a run (they record run
    feedback), removed at the end."""
    processes_database()
    try:
        yield
    finally:
        discard_processes_database()


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL if the process has not exited within 15 s; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


def alternate(rounds: int, measures: dict[K, Callable[[], T]]) -> dict[K, list[T]]:
    """Every measure once a round, in turn (A B A B ...): a drift of the machine falls on every system alike."""
    results: dict[K, list[T]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


class RoundTrips:
    """Redis round trips of this process: one per command or pipeline sent, whichever client sends it."""

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        send = redis.connection.Connection.send_packed_command

        def counting(self: redis.connection.Connection, command: Any, check_health: bool = True) -> None:
            cls.count += 1
            send(self, command, check_health)

        redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
        cls._installed = True


def watch_queue(
    connection: redis.Redis, queue_key: str, count: int, timeout: float, process: subprocess.Popen
) -> list[tuple[float, int]]:
    """(instant, length) samples of a queue, about a millisecond apart, until it holds ``count`` jobs.

    A job's ``enqueued_at`` is the instant its batch was read, before it was planned and applied, so it understates
    lateness under a burst; these samples show when a worker could first take each job."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while not samples or samples[-1][1] < count:
        check(process.poll() is None, f'the scheduler process exited ({process.returncode}) before {count} enqueued')
        check(time.monotonic() < deadline, f'timed out after {timeout:.0f} s waiting for {count} enqueued')
        samples.append((time.time(), connection.llen(queue_key)))
        time.sleep(0.0005)
    return samples


def lateness_from_samples(samples: list[tuple[float, int]], count: int, due: float) -> list[float]:
    """Each job's lateness (ms): from the due instant to the first sample that saw the queue hold it."""
    late: list[float] = []
    seen = 0
    for instant, length in samples:
        late += [(instant - due) * 1000] * (min(length, count) - seen)
        seen = max(seen, min(length, count))
    return late


# -- statistics -------------------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    """Median (min - max)."""
    return f'{statistics.median(values):{fmt}} ({min(values):{fmt}} - {max(values):{fmt}})'


def ratio_of_medians(values: list[float], others: list[float]) -> float:
    return statistics.median(values) / statistics.median(others)


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def same_or_range(counts: list[int]) -> str:
    """A count that every round repeats, or the range it took."""
    low, high = min(counts), max(counts)
    return f'{low:,}' if low == high else f'{low:,} - {high:,}'


def total_time(data: dict) -> str:
    timings = ''.join(f'; {name} {seconds:.1f} s' for name, seconds in data.get('phases_s', {}).items())
    return f'Total run time: {data["elapsed_s"]:.1f} s ({data["config"]["mode"]} run{timings})'


# -- the command line -------------------------------------------------------------------------------------------


def run_command_line(
    module: str,
    doc: str,
    configs: dict[str, Any],
    run: Callable[[Any], dict],
    report: Callable[[dict], str],
    argv: list[str] | None = None,
    *,
    parts: Sequence[str] = (),
) -> dict:
    """Runs the mode asked for (``full`` unless a flag names another of ``configs``), prints the report, and writes
    the results as JSON with ``--json FILE``: the machine, the config, what ``run`` returns, and the elapsed time.
    With ``parts``, ``--only PART`` runs one of them (the config's ``only`` field says which)."""
    summary = ' '.join(doc.split('\n\n')[0].split())
    parser = argparse.ArgumentParser(prog=f'python -m {module}', description=summary)
    modes = parser.add_mutually_exclusive_group()
    for mode in [name for name in configs if name != 'full']:
        modes.add_argument(f'--{mode}', dest='mode', action='store_const', const=mode, help=MODE_HELP[mode])
    parser.add_argument('--json', metavar='FILE', type=Path, help='also write the results as JSON to FILE')
    if parts:
        parser.add_argument('--only', choices=parts, help='run this part of the benchmark alone')
    args = parser.parse_args(argv)
    # rq-scheduler 0.14 calls crontab in a way its newer releases warn about on every cron template.
    warnings.filterwarnings('ignore', category=FutureWarning, module='rq_scheduler')
    config = configs[args.mode or 'full']
    if parts and args.only:
        config = replace(config, only=args.only)
    started = time.monotonic()
    data = {'machine': machine(), 'config': asdict(config), **run(config)}
    data['elapsed_s'] = round(time.monotonic() - started, 1)
    print('\n'.join([*machine_lines(data['machine']), report(data), '', total_time(data)]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + '\n')
    return data
