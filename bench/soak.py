"""Soak: the long versions of the kill -9 and rival-leader tests of tests/test_faults.py, and a chaos soak, run by hand.

Run as ``PYTHONPATH=. python -m bench.soak crash [--cycles N]``, ``... plan [--cycles N] [--rows R]``,
``... rivals [--minutes M]`` or ``... chaos [--minutes M] [--seed S]`` from the repository root. Each starts its own
redis-server on a free loopback port and real ``rqscheduler`` processes, prints figures, kills every process it
started, and exits non-zero if any occurrence was lost or enqueued twice. ``plan`` kills the leader around the
instants at which many cron rows fire together, while it plans their runs ahead, sends them or reads the replies.
``chaos`` (bench/chaos.py) does everything at once: rows created and edited through the ORM while leaders are killed
or paused and Redis is killed, and checks every occurrence.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
warnings.filterwarnings('ignore', category=FutureWarning, module='rq_scheduler')

import django  # noqa: E402

django.setup()

import redis  # noqa: E402

from bench.chaos import Config as ChaosConfig  # noqa: E402
from bench.chaos import Soak  # noqa: E402
from bench.chaos import report as chaos_report  # noqa: E402
from bench.common import check, loop_database, stop_process  # noqa: E402
from bench.cron_lateness import MAKE_ROWS  # noqa: E402
from django_rq_scheduled import Scheduler  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from tests import tasks  # noqa: E402
from tests.processes import OutputReader, django_shell, kill, queue_ids, scheduler_process, wait_for  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

UTC = timezone.utc
QUEUE_KEY = 'rq:queue:default'


def lock_owner(connection: redis.Redis) -> str | None:
    value = connection.get(keys.LOCK_KEY)
    if not value:
        return None
    return keys.lease_holder(value.decode())


def due_backlog(connection: redis.Redis, templates: int) -> int:
    return connection.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', time.time()) - templates


def duplicates_of(ids: list[str]) -> list[str]:
    return sorted(job_id for job_id, n in Counter(ids).items() if n > 1)


def print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f'| {"figure".ljust(width)} | value |')
    print(f'| {"-" * width} | ----- |')
    for name, value in rows:
        print(f'| {name.ljust(width)} | {value} |')


# -- crash -------------------------------------------------------------------------------------------------------


CRON_EVERY_SECOND = '* * * * * *'  # croniter's six fields: seconds last
INTERVAL_S = 0.5


def schedule_templates(scheduler: Scheduler, count: int, repeat: int, start: datetime) -> dict[str, str]:
    """Half interval templates (every 0.5 s), half cron templates (every second); their ids by kind."""
    kinds = {}
    for i in range(count):
        if i % 2:
            template = f'cron-{i}'
            scheduler.cron(CRON_EVERY_SECOND, tasks.add, args=[1, 2], repeat=repeat, id=template)
        else:
            template = f'every-{i}'
            scheduler.schedule(start, tasks.add, args=[1, 2], interval=INTERVAL_S, repeat=repeat, id=template)
        kinds[template] = template.split('-')[0]
    return kinds


def top_up(scheduler: Scheduler, expected: list[str], count: int) -> None:
    now = datetime.now(UTC)
    for i in range(len(expected), len(expected) + count):
        job_id = f'job-{i}'
        scheduler.enqueue_at(now, tasks.add, 1, 2, job_id=job_id)
        expected.append(job_id)


def off_grid(fire_times_ms: list[int], kind: str, origin_ms: int) -> list[int]:
    """Fire times that are not slots of the template's schedule (a coalesced run still lands on a slot); an
    interval template's slots count from its first score (the API keeps whole milliseconds of its start)."""
    if kind == 'cron':
        return [ms for ms in fire_times_ms if ms % 1000]
    return [ms for ms in fire_times_ms if (ms - origin_ms) % round(INTERVAL_S * 1000)]


def crash(cycles: int, total: int, templates: int, seed: int) -> int:
    """``cycles`` kill -9s of a leader moving a backlog; ``total`` occurrences of one-offs, interval and cron runs."""
    rng = random.Random(seed)
    repeat = max(1, total // 10 // templates)  # about a tenth of the occurrences come from the templates
    one_offs = total - templates * repeat
    server = RedisServer().start()
    connection = redis.Redis.from_url(server.url)
    scheduler = Scheduler(connection=connection)
    process: subprocess.Popen | None = None
    expected: list[str] = []
    started = time.monotonic()
    interrupted = done = 0
    try:
        start = datetime.now(UTC) + timedelta(seconds=1)
        kinds = schedule_templates(scheduler, templates, repeat, start)
        origins = {t: round(float(connection.zscore(keys.SCHEDULED_JOBS_KEY, t) or 0) * 1000) for t in kinds}
        for done in range(1, cycles + 1):
            # The one-offs are spread over the cycles, and batches are small, so that the backlog of each cycle
            # takes a few milliseconds to move and the kill lands in the middle of it.
            top_up(scheduler, expected, (one_offs - len(expected)) // (cycles - done + 1))
            if due_backlog(connection, templates) <= 0:
                print(f'nothing due at cycle {done}: stopping early')
                break
            before = connection.llen(QUEUE_KEY)
            process = scheduler_process(server.url, '--batch-size', '2', '--interval', '0.1', '--lease-ttl', '0.5')
            wait_for(lambda before=before: connection.llen(QUEUE_KEY) > before, timeout=30, step=0.001)
            time.sleep(rng.uniform(0, 0.012))
            kill(process)
            process = None
            moved = connection.llen(QUEUE_KEY) - before
            interrupted += moved > 0 and due_backlog(connection, templates) > 0
            wait_for(lambda: not connection.exists(keys.LOCK_KEY), timeout=5)  # the dead leader's lease expires
            if done % 10 == 0 or done == cycles:
                print(f'cycle {done}/{cycles}: queue {connection.llen(QUEUE_KEY)}, landed mid-move {interrupted}')
        top_up(scheduler, expected, one_offs - len(expected))
        # Let the templates run out, then one clean burst pass moves whatever the last kill left behind.
        last_slot = start.timestamp() + repeat * max(INTERVAL_S, 1.0) + 1
        wait_for(lambda: time.time() > last_slot, timeout=last_slot - time.time() + 60, step=0.1)
        process = scheduler_process(server.url, '--burst')
        if process.wait(120) != 0:
            print(process.stdout.read() if process.stdout else '')
            raise RuntimeError('the final --burst pass failed')
        process = None
        ids = queue_ids(connection)
        still_scheduled = {member.decode() for member in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1)}
    finally:
        if process is not None:
            kill(process)
        connection.connection_pool.disconnect()
        server.close()
    expected_set = set(expected)
    one_off_ids = [job_id for job_id in ids if job_id in expected_set]
    occurrences = [job_id for job_id in ids if job_id not in expected_set]
    lost = sorted(expected_set - set(one_off_ids))
    duplicated = duplicates_of(ids)
    stray = [job_id for job_id in occurrences if job_id.split('_at_')[0] not in kinds]
    fire_times: dict[str, list[int]] = {template: [] for template in kinds}
    for job_id in occurrences:
        template, _, ms = job_id.partition('_at_')
        fire_times.setdefault(template, []).append(int(ms))
    too_many = {t: len(times) for t, times in fire_times.items() if len(times) > repeat}
    # A template leaves the schedule only with its last run: gone early means runs were lost.
    ended_early = {t: len(times) for t, times in fire_times.items() if t not in still_scheduled and len(times) < repeat}
    misplaced = {
        t: bad for t, times in fire_times.items() if t in kinds and (bad := off_grid(times, kinds[t], origins[t]))
    }
    print_table(
        [
            ('kill -9 cycles', done),
            ('kills landed mid-move', interrupted),
            ('one-offs scheduled', len(expected)),
            ('one-offs enqueued', len(one_off_ids)),
            (
                'templates x repeat',
                f'{templates} x {repeat} ({templates - templates // 2} interval, {templates // 2} cron)',
            ),
            ('template runs enqueued', len(occurrences)),
            ('templates finished', sum(t not in still_scheduled for t in kinds)),
            ('occurrences (one-offs + runs)', len(one_off_ids) + len(occurrences)),
            ('lost one-offs', len(lost)),
            ('templates ended before their repeat', len(ended_early)),
            ('duplicated ids', len(duplicated)),
            ('templates over their repeat', len(too_many)),
            ('runs off their schedule', sum(len(bad) for bad in misplaced.values())),
            ('unknown ids', len(stray)),
            ('seconds', f'{time.monotonic() - started:.0f}'),
        ]
    )
    problems = {
        'lost': lost,
        'ended early': ended_early,
        'duplicated': duplicated,
        'over repeat': too_many,
        'off schedule': misplaced,
        'unknown': stray,
    }
    for label, values in problems.items():
        if values:
            print(f'FAIL {label}: {list(values)[:20]}')
    if interrupted == 0:
        print('WARNING: no kill landed in the middle of a move')
    return 1 if any(problems.values()) else 0


# -- plan: kill -9 around the instant many rows fire at -------------------------------------------------------------


PLAN_PERIOD_S = 5


def plan(cycles: int, rows: int, seed: int) -> int:
    """``cycles`` kill -9s of the leader: about a third as it plans the runs of ``rows`` cron rows firing together,
    the others from 0.25 s before to 0.15 s after their instant (waiting with the plan, sending it, reading the
    replies, recording the runs)."""
    rng = random.Random(seed)
    started = time.monotonic()
    offsets: list[float] = []
    with loop_database():
        server = RedisServer().start()
        connection = redis.Redis.from_url(server.url)
        process: subprocess.Popen | None = None
        try:
            cron = f'* * * * * */{PLAN_PERIOD_S}'  # croniter's six fields: seconds last
            made = django_shell(server.url, MAKE_ROWS.format(cron=cron, count=rows))
            check(made == str(rows), f'{made} rows made, expected {rows}')
            for done in range(1, cycles + 1):
                wait_for(lambda: not connection.exists(keys.LOCK_KEY), timeout=10)  # the killed leader's lease ends
                process = scheduler_process(server.url, '--lease-ttl', '1')
                OutputReader(process)
                wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=30)  # it leads
                wait_for(lambda: connection.zcard(keys.SCHEDULED_JOBS_KEY) >= rows, timeout=120)  # rows synced
                if rng.random() < 0.3:  # as it plans the next instant's runs, right after taking the lead
                    time.sleep(rng.uniform(0, 0.5))
                else:
                    instant = (int((time.time() + 2.5) / PLAN_PERIOD_S) + 1) * PLAN_PERIOD_S  # after it has planned
                    offsets.append(rng.uniform(-0.25, 0.15))
                    time.sleep(max(0.0, instant + offsets[-1] - time.time()))
                kill(process)
                process = None
                if done % 10 == 0 or done == cycles:
                    print(f'cycle {done}/{cycles}: queue {connection.llen(QUEUE_KEY)}')
            process = scheduler_process(server.url, '--lease-ttl', '1')  # the last runs, without a kill
            OutputReader(process)
            time.sleep(2 * PLAN_PERIOD_S + 2)
            stop_process(process)
            process = None
            ids = queue_ids(connection)
            dead_letters = connection.hlen(keys.DEAD_LETTERS_KEY)
        finally:
            if process is not None:
                kill(process)
            connection.connection_pool.disconnect()
            server.close()
    fires = Counter(int(job_id.rsplit('_', 1)[1]) for job_id in ids)
    partial = {ms: count for ms, count in fires.items() if count != rows}
    off = [ms for ms in fires if ms % (PLAN_PERIOD_S * 1000)]
    duplicated = duplicates_of(ids)
    print_table(
        [
            ('kill -9 cycles', cycles),
            ('kills while planning (0 - 0.5 s after taking the lead)', cycles - len(offsets)),
            ('kills 0 - 0.25 s before the instant', sum(offset < 0 for offset in offsets)),
            ('kills 0 - 0.15 s after the instant', sum(offset >= 0 for offset in offsets)),
            ('rows firing together', rows),
            ('runs enqueued', len(ids)),
            ('fire times with runs', len(fires)),
            ('fire times with fewer or more runs than rows', len(partial)),
            ('duplicated ids', len(duplicated)),
            ('runs off the grid', len(off)),
            ('dead letters', dead_letters),
            ('seconds', f'{time.monotonic() - started:.0f}'),
        ]
    )
    problems = {'partial fire times': partial, 'duplicated': duplicated, 'off the grid': off}
    for label, values in problems.items():
        if values:
            print(f'FAIL {label}: {list(values)[:20]}')
    return 1 if any(problems.values()) or dead_letters or len(fires) < cycles // 2 else 0


# -- rivals ------------------------------------------------------------------------------------------------------


class Producer(threading.Thread):
    """Schedules one-off jobs at a steady rate, each due ``ahead`` seconds later."""

    def __init__(self, url: str, rate: float, ahead: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate, self.ahead = url, rate, ahead
        self.ids: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        connection = redis.Redis.from_url(self.url)
        scheduler = Scheduler(connection=connection)
        period = 1 / self.rate
        next_at = time.monotonic()
        try:
            while not self.halt.is_set():
                job_id = f'steady-{len(self.ids)}'
                scheduler.enqueue_at(datetime.now(UTC) + timedelta(seconds=self.ahead), tasks.add, 1, 2, job_id=job_id)
                self.ids.append(job_id)
                next_at += period
                self.halt.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            connection.connection_pool.disconnect()


def rivals(minutes: float, kill_every: float, rate: float, ahead: float) -> int:
    """Three rival schedulers for ``minutes``; the leader is killed -9 every ``kill_every`` s and replaced."""
    options = ('--lease-ttl', '2', '--interval', '0.2')
    server = RedisServer().start()
    connection = redis.Redis.from_url(server.url)
    processes: dict[str, subprocess.Popen] = {}
    producer = Producer(server.url, rate, ahead)
    takeovers: list[float] = []
    generation = 0
    started = time.monotonic()
    try:
        for generation in range(3):
            name = f'rival-{generation}'
            processes[name] = scheduler_process(server.url, *options, name=name)
        wait_for(lambda: lock_owner(connection), timeout=30)
        producer.start()
        deadline = started + minutes * 60
        next_kill = time.monotonic() + kill_every
        while time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f'{name} exited with {process.returncode} without being killed')
            if time.monotonic() < next_kill or time.monotonic() + 10 > deadline:
                continue
            leader = lock_owner(connection)
            if leader not in processes:
                raise RuntimeError(f'the lease is held by {leader!r}, not by a running rival')
            killed_at = time.monotonic()
            kill(processes.pop(leader))
            generation += 1
            replacement = f'rival-{generation}'
            processes[replacement] = scheduler_process(server.url, *options, name=replacement)
            new_leader = wait_for(
                lambda leader=leader: (owner := lock_owner(connection)) and owner != leader and owner, timeout=20
            )
            takeovers.append(time.monotonic() - killed_at)
            print(f'{time.monotonic() - started:6.1f} s: killed {leader}, {new_leader} took over '
                  f'in {takeovers[-1] * 1000:.0f} ms')  # fmt: skip
            next_kill = killed_at + kill_every
        producer.halt.set()
        producer.join(10)
        if producer.error:
            raise RuntimeError('the producer failed') from producer.error
        expected = set(producer.ids)
        with contextlib.suppress(AssertionError):  # counted as lost below
            wait_for(lambda: expected <= set(queue_ids(connection)), timeout=ahead + 30, step=0.1)
        time.sleep(1)  # a late duplicate would show up here
        ids = queue_ids(connection)
    finally:
        producer.halt.set()
        for process in processes.values():
            kill(process)
        connection.connection_pool.disconnect()
        server.close()
    lost = sorted(expected - set(ids))
    duplicated = duplicates_of(ids)
    stray = sorted(set(ids) - expected)
    print_table(
        [
            ('minutes', minutes),
            ('leaders killed -9', len(takeovers)),
            ('takeover p50 (ms)', f'{statistics.median(takeovers) * 1000:.0f}' if takeovers else '-'),
            ('takeover max (ms)', f'{max(takeovers) * 1000:.0f}' if takeovers else '-'),
            ('lease ttl (s)', 2),
            ('jobs scheduled', len(expected)),
            ('jobs enqueued', len(ids)),
            ('lost', len(lost)),
            ('duplicated', len(duplicated)),
            ('unknown ids', len(stray)),
        ]
    )
    for label, values in (('lost', lost), ('duplicated', duplicated), ('unknown', stray)):
        if values:
            print(f'FAIL {label}: {values[:20]}')
    if not takeovers:
        print('FAIL: no leader was killed (run for longer than --kill-every)')
    return 1 if lost or duplicated or stray or not takeovers else 0


# -- chaos -------------------------------------------------------------------------------------------------------


def chaos(config: ChaosConfig, logs: str | None, recheck: str | None) -> int:
    """Everything at once (bench/chaos.py), then every occurrence checked (bench/chaos_check.py).

    With ``recheck``, only the report again, from the folder of an earlier run.
    """
    folder = Path(recheck or logs or tempfile.mkdtemp(prefix='drqs-chaos-'))
    if not recheck:
        folder.mkdir(parents=True, exist_ok=True)
        Soak(config, folder).run()
    figures, evidence, violations = chaos_report(folder)
    print_table(figures)
    print('\n'.join(evidence))
    if violations or logs or recheck:
        print(f"\nThe run's folder (logs, MONITOR output, AOF, timeline; --recheck reads it): {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m bench.soak', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    crash_parser = commands.add_parser('crash', help='kill -9 the leader at random moments of a backlog move')
    crash_parser.add_argument('--cycles', type=int, default=200)
    crash_parser.add_argument('--total', type=int, default=10_000, help='occurrences: one-offs + templates')
    crash_parser.add_argument('--templates', type=int, default=20)
    crash_parser.add_argument('--seed', type=int, default=1234)
    rivals_parser = commands.add_parser('rivals', help='three rival schedulers, the leader killed -9 periodically')
    rivals_parser.add_argument('--minutes', type=float, default=10)
    rivals_parser.add_argument('--kill-every', type=float, default=30, help='seconds between two kills')
    rivals_parser.add_argument('--rate', type=float, default=20, help='one-off jobs scheduled per second')
    rivals_parser.add_argument('--ahead', type=float, default=0.2, help='seconds between scheduling and due time')
    plan_parser = commands.add_parser('plan', help='kill -9 the leader around instants many cron rows fire at')
    plan_parser.add_argument('--cycles', type=int, default=50)
    plan_parser.add_argument('--rows', type=int, default=1_000, help='cron rows firing together every 5 s')
    plan_parser.add_argument('--seed', type=int, default=7)
    chaos_parser = commands.add_parser('chaos', help='faults, user edits and every kind of row at once; all checked')
    chaos_parser.add_argument('--minutes', type=float, default=10, help='length of the load phase')
    chaos_parser.add_argument('--seed', type=int, default=1, help='draws the rows, the edits and the faults')
    chaos_parser.add_argument('--rate', type=float, default=5, help='one-off rows falling due per second')
    chaos_parser.add_argument('--fault-every', type=float, default=6, help='mean seconds between two faults')
    chaos_parser.add_argument('--reconcile-interval', type=float, default=3, help='of the rqscheduler processes (s)')
    chaos_parser.add_argument('--logs', metavar='DIR', help='keep the logs here (default: a temporary folder, '
                              'kept only when a violation was found)')  # fmt: skip
    chaos_parser.add_argument('--recheck', metavar='DIR', help='no run: the report again, from the folder of a run')
    args = parser.parse_args(argv)
    if args.command == 'chaos':
        if args.minutes < 0.5 or min(args.rate, args.fault_every, args.reconcile_interval) <= 0:
            parser.error('need --minutes >= 0.5 and a positive --rate, --fault-every and --reconcile-interval')
        config = ChaosConfig(
            minutes=args.minutes,
            seed=args.seed,
            rate=args.rate,
            fault_every=args.fault_every,
            reconcile_interval=args.reconcile_interval,
        )
        return chaos(config, args.logs, args.recheck)
    if args.command == 'plan':
        if args.cycles < 1 or args.rows < 1:
            parser.error('need --cycles >= 1 and --rows >= 1')
        return plan(args.cycles, args.rows, args.seed)
    if args.command == 'crash':
        if args.cycles < 1 or args.templates < 2 or args.total < args.templates * 10:
            parser.error('need --cycles >= 1, --templates >= 2 and --total >= 10 x --templates')
        return crash(args.cycles, args.total, args.templates, args.seed)
    if args.minutes <= 0 or args.kill_every <= 0 or args.rate <= 0:
        parser.error('--minutes, --kill-every and --rate must be positive')
    return rivals(args.minutes, args.kill_every, args.rate, args.ahead)


if __name__ == '__main__':
    sys.exit(main())
