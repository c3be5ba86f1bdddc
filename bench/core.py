"""Benchmark of ``django_rq_scheduled.Scheduler`` against rq-scheduler 0.14, side by side on a private redis-server.

Run from the repository root: ``PYTHONPATH=. python -m bench.core [--quick | --smoke] [--json FILE]``.

Measures (1) one-off throughput, with rq's built-in scheduler as a third peer, our loop's own move, and the
server-side limit (one Lua script per batch doing only the writes a move needs, no client planning) as a ceiling,
(2) round trips and server commands per moved job,
(3) interval and cron template throughput, (4) lateness of the real scheduler loops with their default options.
``--smoke`` is the smallest run that still checks every count (the test suite runs it).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
import rq_scheduler
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import utcformat, utcparse

from bench.common import (
    BenchmarkError,
    RoundTrips,
    alternate,
    check,
    nearest_rank,
    private_redis,
    run_command_line,
    spread,
    stop_process,
    stopwatch,
)
from django_rq_scheduled.scheduler import Scheduler
from tests import tasks

ROOT = Path(__file__).resolve().parent.parent
QUEUE_NAME = 'default'
QUEUE_KEY = f'rq:queue:{QUEUE_NAME}'
SCHEDULE_KEY = Scheduler.scheduled_jobs_key
RQ_SCHEDULE_KEY = f'rq:scheduled:{QUEUE_NAME}'  # rq's ScheduledJobRegistry for the queue
LOCK_KEY = Scheduler.scheduler_lock_key
INSTANCE_PATTERN = rq_scheduler.Scheduler.redis_scheduler_namespace_prefix + '*'
OURS, THEIRS, RQ, RAW = 'ours', 'rq-scheduler', 'rq built-in', 'server-side limit'
LOOP = 'ours (loop move)'  # move_due_jobs() of a leader: what manage.py rqscheduler runs each tick
SYSTEMS = (OURS, THEIRS)
WORKLOADS = ('one-off', 'interval', 'cron')
# rq's built-in scheduler and the server-side limit only move one-off jobs (rq has no repeating jobs).
SYSTEMS_BY_WORKLOAD = {'one-off': (OURS, THEIRS, RQ, RAW, LOOP), 'interval': SYSTEMS, 'cron': SYSTEMS}
# RQScheduler.enqueue_scheduled_jobs() moves at most this many jobs per registry and call
# (ScheduledJobRegistry.get_jobs_to_schedule's chunk_size); the worker calls it once per interval (1 s by default).
RQ_CHUNK = 1_000
RAW_BATCH = 500  # the server-side limit's batch: our default batch size
CRON = '* * * * *'
# Our pass re-reads the schedule per batch, so a pass that crosses a minute boundary legitimately enqueues the
# next cron occurrence too; starting it this far from a boundary (about 3x its expected length) keeps the count exact.
CRON_GUARD_S = 2.0
CRON_GUARD_S_PER_JOB = {'ours': 0.0005, 'rq-scheduler': 0.006}  # generous: a pass must end within its minute
RESTORE_CHUNK = 2_000

Snapshot = list[tuple[bytes, int, bytes]]
Writer = Callable[[redis.Redis, int, datetime], None]


@dataclass(frozen=True)
class Config:
    mode: str
    quick: bool
    jobs: int
    templates: int
    rounds: int
    trip_jobs: int
    late_jobs: int
    late_window: float
    budget: float
    their_lateness: bool = True  # also measure rq-scheduler's loops (each takes the whole window and more)


FULL = Config(mode='full', quick=False, jobs=20_000, templates=20_000, rounds=5, trip_jobs=2_000, late_jobs=2_000,
              late_window=60.0, budget=570.0)  # fmt: skip
QUICK = Config(mode='quick', quick=True, jobs=2_000, templates=2_000, rounds=2, trip_jobs=2_000, late_jobs=300,
               late_window=10.0, budget=55.0)  # fmt: skip
# The test suite's run: small but real counts, both rounds alternated, only our loop's lateness.
SMOKE = Config(mode='smoke', quick=True, jobs=1_000, templates=1_000, rounds=2, trip_jobs=1_000, late_jobs=100,
               late_window=3.0, budget=30.0, their_lateness=False)  # fmt: skip


# -- fixtures: written once through the public APIs, restored byte for byte before every pass -------------------


def take_snapshot(conn: redis.Redis) -> Snapshot:
    names = list(conn.scan_iter(count=1_000))
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.pttl(name)
            pipe.dump(name)
        replies = pipe.execute()
    pairs = zip(names, replies[::2], replies[1::2])
    return [(name, max(ttl, 0), payload) for name, ttl, payload in pairs if payload is not None]


def restore(conn: redis.Redis, snapshot: Snapshot) -> None:
    conn.flushdb()
    for start in range(0, len(snapshot), RESTORE_CHUNK):
        with conn.pipeline(transaction=False) as pipe:
            for name, ttl, payload in snapshot[start : start + RESTORE_CHUNK]:
                pipe.restore(name, ttl, payload)
            pipe.execute()


def make_all_due(conn: redis.Redis, when: datetime) -> None:
    members = conn.zrange(SCHEDULE_KEY, 0, -1)
    conn.zadd(SCHEDULE_KEY, dict.fromkeys(members, when.replace(tzinfo=timezone.utc).timestamp()), xx=True)


def write_one_offs(conn: redis.Redis, n: int, when: datetime) -> None:
    scheduler = Scheduler(connection=conn)
    for i in range(n):
        scheduler.enqueue_at(when, tasks.add, i, 1, job_id=f'one-off-{i}')


def write_rq_one_offs(conn: redis.Redis, n: int, when: datetime) -> None:
    """The same one-off jobs through rq's own API: Queue.enqueue_at() into its ScheduledJobRegistry."""
    queue = Queue(QUEUE_NAME, connection=conn)
    registry_key = ScheduledJobRegistry(QUEUE_NAME, connection=conn).key
    check(registry_key == RQ_SCHEDULE_KEY, f'{RQ}: its registry is {registry_key}, not {RQ_SCHEDULE_KEY}')
    when = when.replace(tzinfo=timezone.utc)  # rq reads a naive datetime as local time
    for i in range(n):
        queue.enqueue_at(when, tasks.add, i, 1, job_id=f'one-off-{i}')


def write_our_intervals(conn: redis.Redis, n: int, when: datetime) -> None:
    scheduler = Scheduler(connection=conn)
    for i in range(n):
        scheduler.schedule(when, tasks.add, args=(i, 1), interval=60, id=f'ours-interval-{i}')


def write_their_intervals(conn: redis.Redis, n: int, when: datetime) -> None:
    scheduler = rq_scheduler.Scheduler(connection=conn)
    for i in range(n):
        scheduler.schedule(when, tasks.add, args=(i, 1), interval=60, id=f'theirs-interval-{i}')


def write_our_crons(conn: redis.Redis, n: int, when: datetime) -> None:
    scheduler = Scheduler(connection=conn)
    for i in range(n):
        scheduler.cron(CRON, tasks.add, args=(i, 1), id=f'ours-cron-{i}')
    make_all_due(conn, when)


def write_their_crons(conn: redis.Redis, n: int, when: datetime) -> None:
    scheduler = rq_scheduler.Scheduler(connection=conn)
    for i in range(n):
        scheduler.cron(CRON, tasks.add, args=(i, 1), id=f'theirs-cron-{i}')
    make_all_due(conn, when)


WRITERS: dict[str, dict[str, Writer]] = {
    'one-off': {
        OURS: write_one_offs,
        THEIRS: write_one_offs,
        RQ: write_rq_one_offs,
        RAW: write_one_offs,
        LOOP: write_one_offs,
    },
    'interval': {OURS: write_our_intervals, THEIRS: write_their_intervals},
    'cron': {OURS: write_our_crons, THEIRS: write_their_crons},
}


def due_time() -> datetime:
    """Naive UTC, whole seconds, 10 s ago: due for both systems (rq-scheduler compares whole seconds)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    return now - timedelta(seconds=10)


def schedule_key(system: str) -> str:
    return RQ_SCHEDULE_KEY if system == RQ else SCHEDULE_KEY


class Fixtures:
    """Snapshots of written schedules, one per (writer, size); one-offs are the same data for all systems but rq's
    built-in scheduler, which reads its own registry."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self._cache: dict[tuple[Writer, int], Snapshot] = {}

    def get(self, workload: str, system: str, n: int) -> Snapshot:
        writer = WRITERS[workload][system]
        if (writer, n) not in self._cache:
            self.conn.flushdb()
            writer(self.conn, n, due_time())
            written = self.conn.zcard(schedule_key(system))
            check(written == n, f'{workload}/{system}: wrote {n} entries, the schedule has {written}')
            self._cache[writer, n] = take_snapshot(self.conn)
        return self._cache[writer, n]


# -- one pass of each system ------------------------------------------------------------------------------------


def rq_mover(conn: redis.Redis, n: int) -> Callable[[], None]:
    """rq's built-in scheduler, set up as its worker does (lock taken, registries prepared, connected) outside the
    timing; one pass is as many enqueue_scheduled_jobs() calls as its chunk size needs to drain N due jobs (the worker
    itself makes one call per interval)."""
    scheduler = RQScheduler([QUEUE_NAME], connection=conn, logging_level=logging.WARNING)  # no log line per pass
    check(scheduler.acquire_locks() == {QUEUE_NAME}, f'{RQ}: could not take the scheduler lock')
    scheduler.prepare_registries()
    scheduler.connection.ping()  # it opens its own connection: the handshake is not part of the move
    calls = max(1, math.ceil(n / RQ_CHUNK))

    def move() -> None:
        for _ in range(calls):
            scheduler.enqueue_scheduled_jobs()

    return move


# The floor of a one-off move, server side: per batch one Lua call reads the due ids and, per job, does only the
# writes a move needs (the job's queue from its origin, the push, status and enqueued_at, the set of queues, the
# schedule entry): no client planning, no fencing, no checks. KEYS: schedule, set of queues.
# ARGV: now, batch size, enqueued_at, job key prefix, queue key prefix. Returns how many it moved.
SERVER_LIMIT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  local key = ARGV[4] .. id
  local queue = ARGV[5] .. redis.call('HGET', key, 'origin')
  redis.call('RPUSH', queue, id)
  redis.call('HSET', key, 'status', 'queued', 'enqueued_at', ARGV[3])
  redis.call('SADD', KEYS[2], queue)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""


def server_limit(conn: redis.Redis) -> Callable[[], None]:
    """One pass of the server-side limit: its script called batch after batch until a batch is not full."""
    script = conn.register_script(SERVER_LIMIT)
    script.sha = conn.script_load(SERVER_LIMIT)  # loaded outside the timing, as a running loop has it

    def move() -> None:
        now = time.time()
        enqueued_at = utcformat(datetime.fromtimestamp(now, timezone.utc))
        args = [repr(now), RAW_BATCH, enqueued_at, 'rq:job:', 'rq:queue:']
        while script(keys=[SCHEDULE_KEY, 'rq:queues'], args=args) == RAW_BATCH:
            pass

    return move


def loop_move(conn: redis.Redis) -> Callable[[], Any]:
    """Our loop's own move: a leader's move_due_jobs(), the lease taken outside the timing as the loop holds it."""
    scheduler = Scheduler(connection=conn)
    check(scheduler.acquire_lock(), f'{LOOP}: could not take the lease')
    return scheduler.move_due_jobs


def mover(system: str, conn: redis.Redis, n: int) -> Callable[[], Any]:
    if system == OURS:
        return Scheduler(connection=conn).enqueue_jobs
    if system == THEIRS:
        return rq_scheduler.Scheduler(connection=conn).enqueue_jobs
    if system == RQ:
        return rq_mover(conn, n)
    if system == RAW:
        return server_limit(conn)
    if system == LOOP:
        return loop_move(conn)
    raise ValueError(system)


def check_moved(conn: redis.Redis, workload: str, system: str, n: int, key: str = SCHEDULE_KEY) -> dict[str, int]:
    """Checks the pass moved every due job exactly once; returns the counts it checked."""
    ids = conn.lrange(QUEUE_KEY, 0, -1)
    counts = {
        'scheduled': n,
        'moved': len(ids),
        'distinct': len(set(ids)),
        'left': conn.zcard(key),
        'expected_left': 0 if workload == 'one-off' else n,
        'still_due': conn.zcount(key, '-inf', time.time()),
    }
    where = f'{workload}/{system}'
    check(counts['moved'] == n, f'{where}: {QUEUE_KEY} has {counts["moved"]} ids, expected {n}')
    check(counts['distinct'] == n, f'{where}: {QUEUE_KEY} has {n - counts["distinct"]} duplicate ids')
    check(
        counts['left'] == counts['expected_left'],
        f'{where}: {counts["left"]} entries left in the schedule, expected {counts["expected_left"]}',
    )
    check(counts['still_due'] == 0, f'{where}: {counts["still_due"]} entries still due after the pass')
    return counts


def wait_clear_of_minute_boundary(margin: float) -> None:
    into_minute = time.time() % 60
    if into_minute > 60 - margin:
        time.sleep(60 - into_minute + 0.2)


def clear_of_minute_boundary(conn: redis.Redis, workload: str, system: str) -> None:
    """Cron templates every minute: a pass crossing a minute boundary would find them due again."""
    if workload == 'cron':
        per_job = CRON_GUARD_S_PER_JOB[system]
        wait_clear_of_minute_boundary(CRON_GUARD_S + per_job * conn.zcard(schedule_key(system)))


def timed_pass(conn: redis.Redis, workload: str, system: str, snapshot: Snapshot) -> float:
    restore(conn, snapshot)
    move = mover(system, conn, conn.zcard(schedule_key(system)))
    clear_of_minute_boundary(conn, workload, system)
    start = time.perf_counter()
    move()
    return time.perf_counter() - start


def measured_pass(conn: redis.Redis, fixtures: Fixtures, workload: str, system: str, n: int) -> tuple[float, dict]:
    seconds = timed_pass(conn, workload, system, fixtures.get(workload, system, n))
    return seconds, check_moved(conn, workload, system, n, schedule_key(system))


def throughput(
    conn: redis.Redis, fixtures: Fixtures, workload: str, n: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[dict[str, int]]]]:
    """Seconds per pass, alternating the systems round after round on identical data, and each pass's counts."""
    measures = {
        system: functools.partial(measured_pass, conn, fixtures, workload, system, n)
        for system in SYSTEMS_BY_WORKLOAD[workload]
    }
    passes = alternate(rounds, measures)
    seconds = {system: [s for s, _ in results] for system, results in passes.items()}
    counts = {system: [c for _, c in results] for system, results in passes.items()}
    return seconds, counts


# -- round trips and server commands ----------------------------------------------------------------------------


def server_calls(conn: redis.Redis) -> dict[str, int]:
    """Commands Redis executed since CONFIG RESETSTAT, those run inside Lua scripts included."""
    calls = {name.removeprefix('cmdstat_'): stats['calls'] for name, stats in conn.info('commandstats').items()}
    return {name: count for name, count in calls.items() if not name.startswith(('config', 'info'))}


def count_trips(conn: redis.Redis, workload: str, system: str, snapshot: Snapshot) -> dict:
    restore(conn, snapshot)
    n = conn.zcard(schedule_key(system))
    move = mover(system, conn, n)
    clear_of_minute_boundary(conn, workload, system)
    conn.config_resetstat()
    sends_before = RoundTrips.count
    move()
    sends = RoundTrips.count - sends_before
    calls = server_calls(conn)
    counts = check_moved(conn, workload, system, n, schedule_key(system))
    per_job = {name: count / n for name, count in sorted(calls.items(), key=lambda item: -item[1])}
    return {
        'jobs': n,
        'round_trips_per_job': sends / n,
        'commands_per_job': sum(calls.values()) / n,
        'by_command': per_job,
        'counts': counts,
    }


def round_trips(conn: redis.Redis, fixtures: Fixtures, n: int) -> dict[str, dict[str, dict]]:
    RoundTrips.install()
    return {
        workload: {system: count_trips(conn, workload, system, fixtures.get(workload, system, n))
                   for system in SYSTEMS_BY_WORKLOAD[workload]}
        for workload in WORKLOADS
    }  # fmt: skip


# -- lateness of the real loops ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    label: str
    command: list[str]
    ready: Callable[[redis.Redis], bool]
    slack: float  # how long after the last due time every job may take to arrive
    expected: float  # seconds the measurement takes beyond the window, for the time budget


def holds_lock(conn: redis.Redis) -> bool:
    return bool(conn.exists(LOCK_KEY))


def registered(conn: redis.Redis) -> bool:
    return next(conn.scan_iter(match=INSTANCE_PATTERN, count=100), None) is not None


def loops(url: str, config: Config) -> list[Loop]:
    rqscheduler = str(Path(sys.executable).with_name('rqscheduler'))
    ours = [sys.executable, '-m', 'django', 'rqscheduler', '--settings', 'tests.settings']
    found = [Loop('ours: manage.py rqscheduler (defaults)', ours, holds_lock, 15.0, 5.0)]
    if config.their_lateness:
        found.append(
            Loop('rq-scheduler: rqscheduler -i 1', [rqscheduler, '--url', url, '-i', '1'], registered, 15.0, 5.0)
        )
    if not config.quick:
        found.append(
            Loop('rq-scheduler: rqscheduler (default -i 60)', [rqscheduler, '--url', url], registered, 75.0, 65.0)
        )
    return found


@contextmanager
def running(command: list[str], url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, 'DRQS_TEST_REDIS_URL': url, 'PYTHONPATH': str(ROOT)}
    with log_path.open('w') as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop_process(process)


def wait_until(condition: Callable[[], bool], timeout: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        check(process.poll() is None, f'the scheduler process exited ({process.returncode}) before {what}')
        check(time.monotonic() < deadline, f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.05)


def schedule_spread(conn: redis.Redis, m: int, window: float) -> tuple[dict[str, float], int]:
    """M jobs due at uniform random instants in [now + 1 s, now + 1 s + window], written earliest first."""
    scheduler = Scheduler(connection=conn)
    rng = random.Random(20_000)
    start = time.time() + 1
    dues = sorted(round(start + rng.uniform(0, window), 3) for _ in range(m))
    by_id: dict[str, float] = {}
    written_late = 0
    for i, due in enumerate(dues):
        job_id = f'late-{i}'
        scheduler.enqueue_at(datetime.fromtimestamp(due, timezone.utc), tasks.add, i, 1, job_id=job_id)
        by_id[job_id] = due
        written_late += time.time() > due
    return by_id, written_late


def lateness_ms(conn: redis.Redis, dues: dict[str, float]) -> list[float]:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in dues:
            pipe.hget(f'rq:job:{job_id}', 'enqueued_at')
        stamps = pipe.execute()
    check(all(stamps), 'a job in the queue has no enqueued_at')
    return [(utcparse(stamp.decode()).timestamp() - due) * 1000 for stamp, due in zip(stamps, dues.values())]


def measure_lateness(conn: redis.Redis, url: str, loop: Loop, m: int, window: float, log_path: Path) -> dict:
    conn.flushdb()
    try:
        with running(loop.command, url, log_path) as process:
            wait_until(lambda: loop.ready(conn), 30.0, process, 'the loop was ready')
            dues, written_late = schedule_spread(conn, m, window)
            timeout = max(dues.values()) - time.time() + loop.slack
            wait_until(lambda: conn.llen(QUEUE_KEY) >= m, timeout, process, f'{m} jobs were enqueued')
    except BenchmarkError:
        sys.stderr.write(f'--- {loop.label} log ---\n{log_path.read_text()[-4000:]}\n')
        raise
    counts = check_moved(conn, 'one-off', loop.label, m)
    late = lateness_ms(conn, dues)
    conn.flushdb()
    return {
        'jobs': m,
        'window_s': window,
        'written_after_due': written_late,
        'p50_ms': statistics.median(late),
        'p99_ms': nearest_rank(late, 0.99),
        'max_ms': max(late),
        'min_ms': min(late),
        'counts': counts,
    }


def lateness(conn: redis.Redis, url: str, config: Config, started: float) -> dict[str, dict]:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix='drqs-bench-') as log_dir:
        for index, loop in enumerate(loops(url, config)):
            needed = config.late_window + loop.expected
            # Our loop is what the bench is for: only the rivals' loops give way to the time budget.
            if index and time.monotonic() - started + needed > config.budget:
                results[loop.label] = {'skipped': f'needs ~{needed:.0f} s, beyond the time budget'}
                continue
            log_path = Path(log_dir) / f'loop-{index}.log'
            results[loop.label] = measure_lateness(conn, url, loop, config.late_jobs, config.late_window, log_path)
    if not config.their_lateness:
        results['rq-scheduler: rqscheduler -i 1'] = {'skipped': f'--{config.mode} leaves it out'}
    if config.quick:
        results['rq-scheduler: rqscheduler (default -i 60)'] = {
            'skipped': f'needs > 60 s; --{config.mode} leaves it out'
        }
    return results


# -- report -----------------------------------------------------------------------------------------------------


PEERS = (THEIRS, RQ)


def ratios(rates: dict[str, list[float]], top: str, bottom: str, scale: float = 1.0) -> list[float] | None:
    """Per-round ratios of two systems' rates (round k of each ran under the same conditions), if both ran."""
    if top not in rates or bottom not in rates:
        return None
    return [scale * a / b for a, b in zip(rates[top], rates[bottom])]


def throughput_rows(results: dict[str, dict[str, list[float]]], sizes: dict[str, int]) -> list[str]:
    """Jobs/s per system; ratios are per round (the systems alternate, so round k of each shares the conditions)."""
    systems = (OURS, LOOP, *PEERS, RAW)
    header = [
        *(f'{system} jobs/s' for system in systems), *(f'ours / {peer}' for peer in PEERS),
        f'ours % of {RAW}', f'loop move % of {RAW}',
    ]  # fmt: skip
    rows = [f'| workload | jobs | {" | ".join(header)} |', f'| --- | ---: |{" ---: |" * len(header)}']
    for workload, seconds in results.items():
        n = sizes[workload]
        rates = {system: [n / s for s in values] for system, values in seconds.items()}
        cells = [spread(rates[system], ',.0f') if system in rates else 'n/a' for system in systems]
        for peer in PEERS:
            found = ratios(rates, OURS, peer)
            cells.append(f'{spread(found, ".1f")}x' if found else 'n/a')
        for system in (OURS, LOOP):
            found = ratios(rates, system, RAW, 100)
            cells.append(f'{spread(found, ".0f")} %' if found else 'n/a')
        rows.append(f'| {workload} | {n:,} | {" | ".join(cells)} |')
    return rows


def top_commands(by_command: dict[str, float], count: int = 5) -> str:
    return ', '.join(f'{name} {value:.2f}' for name, value in list(by_command.items())[:count])


def trip_rows(results: dict[str, dict[str, dict]]) -> list[str]:
    rows = [
        '| workload | jobs | system | round trips/job | server commands/job | top commands/job (incl. inside Lua) |',
        '| --- | ---: | --- | ---: | ---: | --- |',
    ]
    for workload, systems in results.items():
        for system, r in systems.items():
            rows.append(
                f'| {workload} | {r["jobs"]:,} | {system} | {r["round_trips_per_job"]:.3f} | '
                f'{r["commands_per_job"]:.2f} | {top_commands(r["by_command"])} |'
            )
    return rows


def lateness_rows(results: dict[str, dict]) -> list[str]:
    rows = [
        '| loop | jobs | window | p50 ms | p99 ms | max ms | min ms | written after due |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for label, r in results.items():
        if 'skipped' in r:
            rows.append(f'| {label} | skipped: {r["skipped"]} | | | | | | |')
            continue
        rows.append(
            f'| {label} | {r["jobs"]:,} | {r["window_s"]:.0f} s | {r["p50_ms"]:,.1f} | {r["p99_ms"]:,.1f} | '
            f'{r["max_ms"]:,.1f} | {r["min_ms"]:,.1f} | {r["written_after_due"]} |'
        )
    return rows


def report(data: dict) -> str:
    config = data['config']
    lines = [f'## Throughput: one enqueue_jobs() pass, median (min - max) of {config["rounds"]} rounds', '']
    lines += [*throughput_rows(data['throughput'], data['sizes']), '']
    lines += [
        f'{RQ}: RQScheduler.enqueue_scheduled_jobs() called until the N due jobs are drained ({RQ_CHUNK:,} per call; '
        'its worker makes one call per interval, 1 s by default). '
        f'{RAW}: one Lua call per batch of {RAW_BATCH}: ZRANGEBYSCORE of the due ids, then per job HGET origin, RPUSH, '
        'HSET status/enqueued_at, SADD rq:queues, ZREM; no client planning, no fencing, no checks. '
        f'ours and rq-scheduler: Scheduler.enqueue_jobs() (it takes and releases the lease; it returns the jobs). '
        f'{LOOP}: move_due_jobs() of a leader, as manage.py rqscheduler runs it.',
        '',
    ]
    lines += ['## Round trips and server commands per moved job', '']
    lines += [*trip_rows(data['round_trips']), '']
    lines += ['## Lateness of the real loops (enqueued_at - scheduled time)', '']
    lines += lateness_rows(data['lateness'])
    return '\n'.join(lines)


# -- main -------------------------------------------------------------------------------------------------------


def run(config: Config) -> dict:
    started = time.monotonic()
    phases: dict[str, float] = {}
    data: dict[str, Any] = {'phases_s': phases}
    with private_redis() as server:
        conn = redis.Redis.from_url(server.url)
        fixtures = Fixtures(conn)
        sizes = {'one-off': config.jobs, 'interval': config.templates, 'cron': config.templates}
        data['sizes'] = sizes
        data['throughput'], data['counts'] = {}, {}
        for workload in WORKLOADS:
            with stopwatch(phases, f'throughput {workload} (incl. writing fixtures)'):
                seconds, counts = throughput(conn, fixtures, workload, sizes[workload], config.rounds)
            data['throughput'][workload], data['counts'][workload] = seconds, counts
        with stopwatch(phases, 'round trips'):
            data['round_trips'] = round_trips(conn, fixtures, config.trip_jobs)
        with stopwatch(phases, 'lateness'):
            data['lateness'] = lateness(conn, server.url, config, started)
        conn.connection_pool.disconnect()
    return data


if __name__ == '__main__':
    run_command_line('bench.core', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report)
