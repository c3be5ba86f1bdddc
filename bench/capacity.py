"""Capacity of one Redis server: memory per schedule as the schedule grows, moves per second of one Redis core, and
enqueue lateness as more schedules fall due at the same instant. docs/capacity.rst extrapolates these figures to
10,000,000 schedules sharded by queue across Redis servers.

Run from the repository root: ``PYTHONPATH=. python -m bench.capacity [--quick | --smoke] [--json FILE]``. It
starts its own redis-server on a free loopback port, prints markdown tables, and checks every count it relies on.
``--smoke`` is the smallest run that still checks every count (the test suite runs it).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis

from bench import core, scale
from bench.common import (
    BenchmarkError,
    alternate,
    check,
    lateness_from_samples,
    loop_database,
    nearest_rank,
    private_redis,
    run_command_line,
    spread,
    stopwatch,
    watch_queue,
)
from django_rq_scheduled.scheduler import Scheduler
from tests import tasks

OURS, THEIRS = core.OURS, core.THEIRS
KINDS = ('one-off', 'interval', 'cron')
FIRE_KINDS = ('one-off', 'interval')
WRITE_CHUNK = 10_000


@dataclass(frozen=True)
class Config:
    mode: str
    quick: bool
    memory_sizes: tuple[int, ...]  # schedules of one kind in Redis at once
    move_jobs: int  # due jobs per measured pass of the Redis CPU per move
    rounds: int
    fire_sizes: tuple[int, ...]  # schedules due at the same instant
    tick_among: tuple[int, ...]  # future entries in the schedule while a tick moves 100 due jobs


FULL = Config(mode='full', quick=False, memory_sizes=(10_000, 100_000, 500_000), move_jobs=20_000, rounds=3,
              fire_sizes=(1_000, 5_000, 20_000, 50_000), tick_among=(10_000_000,))  # fmt: skip
QUICK = Config(mode='quick', quick=True, memory_sizes=(5_000, 20_000), move_jobs=5_000, rounds=2,
               fire_sizes=(1_000, 5_000), tick_among=(1_000_000,))  # fmt: skip
SMOKE = Config(mode='smoke', quick=True, memory_sizes=(300, 600), move_jobs=300, rounds=2,
               fire_sizes=(200,), tick_among=(10_000,))  # fmt: skip


# -- memory per schedule -----------------------------------------------------------------------------------------


def write_schedules(connection: redis.Redis, kind: str, count: int, when: datetime, prefix: str = 'cap') -> None:
    """``count`` schedules of one kind through the public API, as an application writes them."""
    scheduler = Scheduler(connection=connection)
    for i in range(count):
        job_id = f'{prefix}-{kind}-{i}'
        if kind == 'one-off':
            scheduler.enqueue_at(when, tasks.add, i, 1, job_id=job_id)
        elif kind == 'interval':
            scheduler.schedule(when, tasks.add, args=(i, 1), interval=3600, id=job_id)
        else:
            scheduler.cron('0 * * * *', tasks.add, args=(i, 1), id=job_id)


def used_memory(connection: redis.Redis) -> int:
    return int(connection.info('memory')['used_memory'])


def memory_per_schedule(connection: redis.Redis, kind: str, count: int) -> dict[str, float]:
    connection.flushdb()
    before = used_memory(connection)
    write_schedules(connection, kind, count, datetime.now(timezone.utc) + timedelta(days=1))
    written = connection.zcard(core.SCHEDULE_KEY)
    check(written == count, f'memory/{kind}: wrote {count} schedules, the schedule holds {written}')
    grown = used_memory(connection) - before
    connection.flushdb()
    return {'schedules': count, 'bytes': grown, 'bytes_per_schedule': grown / count}


def memory(connection: redis.Redis, config: Config) -> dict[str, list[dict[str, float]]]:
    return {kind: [memory_per_schedule(connection, kind, n) for n in config.memory_sizes] for kind in KINDS}


# -- moves per second of one Redis core -------------------------------------------------------------------------


def main_thread_cpu(connection: redis.Redis) -> float:
    """CPU seconds the server's main thread (the one that runs every command and script) has used."""
    info = connection.info('cpu')
    return float(info['used_cpu_user_main_thread']) + float(info['used_cpu_sys_main_thread'])


def cpu_pass(connection: redis.Redis, fixtures: core.Fixtures, kind: str, system: str, n: int) -> dict[str, float]:
    core.restore(connection, fixtures.get(kind, system, n))
    move = core.mover(system, connection, n)
    core.clear_of_minute_boundary(connection, kind, system)
    cpu, started = main_thread_cpu(connection), time.perf_counter()
    move()
    seconds, cpu_seconds = time.perf_counter() - started, main_thread_cpu(connection) - cpu
    core.check_moved(connection, kind, system, n)
    check(cpu_seconds > 0, f'{kind}/{system}: the server reported no CPU for a pass of {n} moves')
    return {'seconds': seconds, 'redis_cpu_s': cpu_seconds}


def redis_cpu(connection: redis.Redis, config: Config) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Per kind, each system's passes over the same due jobs, alternated: wall time and the server's CPU time."""
    fixtures = core.Fixtures(connection)
    return {
        kind: alternate(
            config.rounds,
            {
                system: functools.partial(cpu_pass, connection, fixtures, kind, system, config.move_jobs)
                for system in (OURS, THEIRS)
            },
        )
        for kind in KINDS
    }


# -- lateness of simultaneous fire times ------------------------------------------------------------------------


def due_together(connection: redis.Redis, kind: str, count: int, lead: float) -> float:
    """``count`` schedules written for tomorrow, then all made due at one instant ``lead`` seconds ahead by one
    command (as ``bench.core`` makes its fixtures due); returns the instant."""
    write_schedules(connection, kind, count, datetime.now(timezone.utc) + timedelta(days=1), prefix='fire')
    due = round(time.time() + lead, 3)
    core.make_all_due(connection, datetime.fromtimestamp(due, timezone.utc))
    return due


def fire_together(connection: redis.Redis, url: str, kind: str, count: int, log_path: Path) -> dict[str, Any]:
    connection.flushdb()
    loop = core.loops(url, core.SMOKE)[0]  # manage.py rqscheduler with its defaults
    try:
        with core.running(loop.command, url, log_path) as process:
            core.wait_until(lambda: loop.ready(connection), 30.0, process, 'the loop was ready')
            due = due_together(connection, kind, count, lead=3.0)
            samples = watch_queue(connection, core.QUEUE_KEY, count, 60.0 + count / 1_000, process)
    except BenchmarkError:
        print(f'--- {loop.label} log ---\n{log_path.read_text()[-4000:]}')
        raise
    check(all(length == 0 for instant, length in samples if instant < due), f'fire/{kind}: enqueued before due')
    queued = connection.lrange(core.QUEUE_KEY, 0, -1)
    check(
        len(queued) == len(set(queued)) == count, f'fire/{kind}: {len(queued)} jobs queued, expected {count} once each'
    )
    late = lateness_from_samples(samples, count, due)
    connection.flushdb()
    return {
        'schedules': count,
        'p50_ms': statistics.median(late),
        'p99_ms': nearest_rank(late, 0.99),
        'max_ms': max(late),
        'samples': len(samples),
    }


def fire_times(connection: redis.Redis, url: str, config: Config) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in FIRE_KINDS}
    with tempfile.TemporaryDirectory(prefix='drqs-capacity-') as log_dir:
        for count in config.fire_sizes:
            for kind in FIRE_KINDS:
                log_path = Path(log_dir) / f'{kind}-{count}.log'
                results[kind].append(fire_together(connection, url, kind, count, log_path))
    return results


# -- a tick among many schedules -------------------------------------------------------------------------------


def ticks_among(connection: redis.Redis, config: Config) -> dict[str, dict[str, list[dict]]]:
    """``bench.scale``'s tick cost (a pass moving 100 due jobs, each system alternated) among more entries."""
    tick_config = replace(scale.QUICK, due=100, rounds=max(config.rounds, 3))
    results = {str(others): scale.tick_cost(connection, others, tick_config) for others in config.tick_among}
    connection.flushdb()
    return results


# -- report -----------------------------------------------------------------------------------------------------


def memory_rows(results: dict[str, list[dict[str, float]]]) -> list[str]:
    rows = ['| kind | schedules | bytes per schedule | schedules per GiB |', '| --- | ---: | ---: | ---: |']
    for kind, samples in results.items():
        for sample in samples:
            per = sample['bytes_per_schedule']
            rows.append(f'| {kind} | {sample["schedules"]:,} | {per:,.0f} | {2**30 / per:,.0f} |')
    return rows


def per_second(passes: list[dict[str, float]], n: int, field: str) -> list[float]:
    return [n / p[field] for p in passes]


def cpu_rows(results: dict[str, dict[str, list[dict[str, float]]]], n: int) -> list[str]:
    rows = [
        '| kind | system | moves/s (wall) | moves per Redis core-second | Redis CPU µs per move |',
        '| --- | --- | ---: | ---: | ---: |',
    ]
    for kind, systems in results.items():
        for system, passes in systems.items():
            wall, core_rate = per_second(passes, n, 'seconds'), per_second(passes, n, 'redis_cpu_s')
            micros = spread([1e6 / rate for rate in core_rate], '.1f')
            rows.append(f'| {kind} | {system} | {spread(wall, ",.0f")} | {spread(core_rate, ",.0f")} | {micros} |')
    return rows


def fire_rows(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = ['| kind | due at once | p50 ms | p99 ms | max ms |', '| --- | ---: | ---: | ---: | ---: |']
    for kind, samples in results.items():
        for s in samples:
            rows.append(f'| {kind} | {s["schedules"]:,} | {s["p50_ms"]:.0f} | {s["p99_ms"]:.0f} | {s["max_ms"]:.0f} |')
    return rows


def report(data: dict) -> str:
    config = data['config']
    return '\n'.join(
        [
            '## Redis memory per schedule written through the API, as the schedule grows (used_memory delta / count)',
            '',
            *memory_rows(data['memory']),
            '',
            f'## Moves per second of one Redis core: passes over {config["move_jobs"]:,} due jobs, '
            f"median (min - max) of {config['rounds']} alternated rounds; Redis CPU is its main thread's",
            '',
            *cpu_rows(data['redis_cpu'], config['move_jobs']),
            '',
            '## Enqueue lateness when N schedules fall due at the same instant (manage.py rqscheduler, defaults): '
            'from the due instant until the queue holds the job, seen by polling its length every ~1 ms',
            '',
            *fire_rows(data['fire_times']),
            '',
            '## A tick moving 100 due jobs among N future entries (ms), median (min - max), alternated rounds',
            '',
            *scale.tick_rows(data['ticks_among']),
        ]
    )


def run(config: Config) -> dict:
    phases: dict[str, float] = {}
    data: dict[str, Any] = {'phases_s': phases}
    with loop_database(), private_redis() as server:
        connection = redis.Redis.from_url(server.url)
        with stopwatch(phases, 'memory'):
            data['memory'] = memory(connection, config)
        with stopwatch(phases, 'redis cpu'):
            data['redis_cpu'] = redis_cpu(connection, config)
        with stopwatch(phases, 'ticks among many'):
            data['ticks_among'] = ticks_among(connection, config)
        with stopwatch(phases, 'simultaneous fire times'):
            data['fire_times'] = fire_times(connection, server.url, config)
        connection.connection_pool.disconnect()
    return data


if __name__ == '__main__':
    run_command_line('bench.capacity', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report)
