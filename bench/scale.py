"""Scale: tick cost with many other entries in the schedule, Redis memory per template (of the API) and per
database-backed row (one-off, interval, cron), and the scheduler loop's memory over many occurrences.

Run from the repository root: ``PYTHONPATH=. python -m bench.scale [--quick] [--json FILE]``. It starts its own
redis-server on a free loopback port, prints markdown tables, and checks every count it relies on.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')

import django

django.setup()

import redis  # noqa: E402
import rq_scheduler  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db.models import QuerySet  # noqa: E402

from bench.common import (  # noqa: E402
    alternate,
    check,
    loop_database,
    private_redis,
    ratio_of_medians,
    run_command_line,
    spread,
    stop_process,
    stopwatch,
)
from django_rq_scheduled import Scheduler, sync  # noqa: E402
from django_rq_scheduled.core import keys  # noqa: E402
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduleBase, ScheduledJob  # noqa: E402
from tests import tasks  # noqa: E402
from tests.processes import OutputReader, scheduler_process, wait_for  # noqa: E402

QUEUE_KEY = 'rq:queue:default'
OURS, THEIRS = 'ours', 'rq-scheduler'
CRON = '*/5 * * * *'


@dataclass(frozen=True)
class Config:
    mode: str
    sizes: tuple[int, ...]  # other entries in the schedule while a tick moves the due jobs
    due: int
    rounds: int
    templates: int
    rows: int  # database rows of each kind whose Redis memory is measured
    occurrences: int
    batch: int  # occurrences between two memory samples


FULL = Config(mode='full', sizes=(1_000, 100_000, 1_000_000), due=100, rounds=7, templates=10_000,
              rows=20_000, occurrences=1_000_000, batch=50_000)  # fmt: skip
QUICK = Config(mode='quick', sizes=(1_000, 10_000), due=100, rounds=3, templates=2_000, rows=2_000, occurrences=20_000,
               batch=5_000)  # fmt: skip


def past() -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=10)


def write_due(connection: redis.Redis, ids: list[str]) -> None:
    scheduler, when = Scheduler(connection=connection), past()
    for job_id in ids:
        scheduler.enqueue_at(when, tasks.add, 1, 2, job_id=job_id)


def delete_moved(connection: redis.Redis, ids: list[str]) -> None:
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(QUEUE_KEY)
        for start in range(0, len(ids), 10_000):
            pipe.unlink(*(keys.job_key(job_id) for job_id in ids[start : start + 10_000]))
        pipe.execute()


def check_moved(connection: redis.Redis, ids: list[str], others: int, who: str) -> dict[str, int]:
    queued = connection.lrange(QUEUE_KEY, 0, -1)
    counts = {'due': len(ids), 'moved': len(queued), 'distinct': len(set(queued))}
    counts['entries_left'] = connection.zcard(keys.SCHEDULED_JOBS_KEY)
    check(counts['moved'] == counts['distinct'] == len(ids), f'{who}: moved {counts}, expected {len(ids)} once each')
    check(counts['entries_left'] == others, f'{who}: {counts["entries_left"]} entries left, expected {others}')
    return counts


# -- tick cost --------------------------------------------------------------------------------------------------


def add_future_entries(connection: redis.Redis, count: int) -> None:
    """Future schedule entries (a tick never reads their hashes, so none are written)."""
    future = time.time() + 86_400
    for start in range(0, count, 10_000):
        stop_at = min(count, start + 10_000)
        connection.zadd(keys.SCHEDULED_JOBS_KEY, {f'future-{i}': future + i for i in range(start, stop_at)})


def tick_pass(connection: redis.Redis, move: Callable[[], Any], due: int, others: int, who: str) -> dict:
    ids = [f'due-{i}' for i in range(due)]
    write_due(connection, ids)
    started = time.perf_counter()
    move()
    ms = (time.perf_counter() - started) * 1000
    counts = check_moved(connection, ids, others, who)
    delete_moved(connection, ids)
    return {'ms': ms, **counts}


def tick_cost(connection: redis.Redis, others: int, config: Config) -> dict[str, list[dict]]:
    """Each system's pass over ``config.due`` due jobs among ``others`` future entries, alternated round by round
    after one untimed pass each (it loads the Lua scripts and warms the connection)."""
    connection.flushdb()
    add_future_entries(connection, others)
    movers = {OURS: Scheduler(connection=connection), THEIRS: rq_scheduler.Scheduler(connection=connection)}
    measures = {
        name: functools.partial(tick_pass, connection, mover.enqueue_jobs, config.due, others, f'{name}, {others:,}')
        for name, mover in movers.items()
    }
    for measure in measures.values():
        measure()
    return alternate(config.rounds, measures)


# -- memory per template ----------------------------------------------------------------------------------------


def memory_per_template(connection: redis.Redis, count: int) -> dict[str, float]:
    """Bytes of Redis memory per cron template, job hash and schedule entry (deterministic: measured once)."""
    schedulers = {OURS: Scheduler(connection=connection), THEIRS: rq_scheduler.Scheduler(connection=connection)}
    results = {}
    for name, scheduler in schedulers.items():
        connection.flushdb()
        before = connection.info('memory')['used_memory']
        for i in range(count):
            scheduler.cron(CRON, tasks.add, args=[i], id=f'c{i}')
        written = connection.zcard(keys.SCHEDULED_JOBS_KEY)
        check(written == count, f'{name}: {written} templates, expected {count}')
        results[name] = (connection.info('memory')['used_memory'] - before) / count
    return results


# -- memory per database row -------------------------------------------------------------------------------------

ROW_KINDS = ('one-off', 'interval', 'cron')


def new_rows(kind: str, count: int) -> list[ScheduleBase]:
    """``count`` unsaved rows of one kind, due tomorrow, calling a small function with two arguments."""
    later = datetime.now(timezone.utc) + timedelta(days=1)
    common = {'callable': 'tests.tasks.add', 'args': [1, 2]}
    if kind == 'one-off':
        return [ScheduledJob(name=f'o{i}', scheduled_time=later, **common) for i in range(count)]
    if kind == 'interval':
        return [
            RepeatableJob(name=f'i{i}', scheduled_time=later, interval=60, interval_unit='seconds', **common)
            for i in range(count)
        ]
    return [CronJob(name=f'c{i}', cron_string=CRON, **common) for i in range(count)]


def memory_per_row(connection: redis.Redis, url: str, count: int) -> dict[str, dict[str, float]]:
    """Bytes of Redis memory per database row of each kind: ``INFO used_memory`` before and after reconciliation
    writes ``count`` rows (their template hashes, schedule entries and versions-hash entries), and the share of the
    template hash itself (``MEMORY USAGE`` of a sample of them). The rows are made without the app (a plain
    ``bulk_create``), so only reconciliation writes Redis (deterministic: measured once)."""
    call_command('migrate', verbosity=0)
    settings.RQ_QUEUES = {'default': {'URL': url}}
    results = {}
    for kind, model in zip(ROW_KINDS, (ScheduledJob, RepeatableJob, CronJob)):
        model._base_manager.all()._raw_delete(model._base_manager.db)  # type: ignore[attr-defined]
        rows = QuerySet(model).bulk_create(new_rows(kind, count))
        connection.flushdb()
        before = connection.info('memory')['used_memory']
        report = sync.reconcile()
        after = connection.info('memory')['used_memory']
        check(len(report.written) == count, f'{kind}: reconciliation wrote {len(report.written)}, expected {count}')
        check(connection.zcard(keys.SCHEDULED_JOBS_KEY) == count, f'{kind}: {count} schedule entries expected')
        sample = [keys.job_key(row.template_id) for row in rows[:: max(1, count // 100)]]
        hashes = [connection.memory_usage(key, samples=0) or 0 for key in sample]
        results[kind] = {
            'bytes_per_row': (after - before) / count,
            'template_hash_bytes': sum(hashes) / len(hashes),
            'template_fields': connection.hlen(sample[0]),
            'template_encoding': connection.object('encoding', sample[0]).decode(),
        }
        model._base_manager.all()._raw_delete(model._base_manager.db)  # type: ignore[attr-defined]
    connection.flushdb()
    return results


# -- the loop's memory ------------------------------------------------------------------------------------------


def memory_mib(pid: int) -> tuple[float, float]:
    """A process's resident set and its peak so far (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(':', 1) for line in Path(f'/proc/{pid}/status').read_text().splitlines())
    return int(fields['VmRSS'].split()[0]) / 1024, int(fields['VmHWM'].split()[0]) / 1024


def loop_memory(connection: redis.Redis, url: str, config: Config) -> list[dict]:
    """A real ``manage.py rqscheduler`` moves ``config.occurrences`` one-off jobs, written ``config.batch`` at a time;
    its memory is sampled once each batch is moved (and deleted): it should not grow."""
    connection.flushdb()
    process = scheduler_process(url)
    output = OutputReader(process)
    samples = []
    try:
        wait_for(lambda: connection.exists(keys.LOCK_KEY), timeout=30)
        for start in range(0, config.occurrences, config.batch):
            ids = [f'o{i}' for i in range(start, start + config.batch)]
            write_due(connection, ids)
            wait_for(lambda: connection.llen(QUEUE_KEY) >= config.batch, timeout=120)
            counts = check_moved(connection, ids, 0, f'the loop, occurrences {start:,} on')
            delete_moved(connection, ids)
            rss, peak = memory_mib(process.pid)
            samples.append({'moved': start + len(ids), 'rss_mib': rss, 'peak_mib': peak, 'counts': counts})
    finally:
        code = stop_process(process)
    check(code == 0, f'the loop exited with {code}:\n{output.text[-3000:]}')
    return samples


# -- the run and its report --------------------------------------------------------------------------------------


def run(config: Config) -> dict:
    phases: dict[str, float] = {}
    results: dict[str, Any] = {'phases_s': phases}
    with loop_database(), private_redis() as server:
        connection = redis.Redis.from_url(server.url)
        with stopwatch(phases, 'tick cost'):
            results['tick_cost'] = {str(n): tick_cost(connection, n, config) for n in config.sizes}
        with stopwatch(phases, 'memory per template'):
            results['memory_per_template'] = memory_per_template(connection, config.templates)
        with stopwatch(phases, 'memory per row'):
            results['memory_per_row'] = memory_per_row(connection, server.url, config.rows)
        with stopwatch(phases, 'loop memory'):
            results['loop_memory'] = loop_memory(connection, server.url, config)
        connection.connection_pool.disconnect()
    return results


def tick_rows(results: dict[str, dict[str, list[dict]]]) -> list[str]:
    rows = [
        f'| other entries | {OURS} ms | {THEIRS} ms | {THEIRS} / {OURS} (medians) |',
        '| ---: | ---: | ---: | ---: |',
    ]
    for others, passes in results.items():
        ms = {name: [p['ms'] for p in values] for name, values in passes.items()}
        ratio = ratio_of_medians(ms[THEIRS], ms[OURS])
        rows.append(f'| {int(others):,} | {spread(ms[OURS], ".2f")} | {spread(ms[THEIRS], ".2f")} | {ratio:.1f}x |')
    return rows


def growth_mib(samples: list[dict]) -> float:
    """Resident memory gained over the second half of the occurrences."""
    return samples[-1]['rss_mib'] - samples[(len(samples) - 1) // 2]['rss_mib']


def report(data: dict) -> str:
    config = data['config']
    lines = [
        f'## Tick cost: one pass moving {config["due"]} due jobs among N other entries, '
        f'median (min - max) of {config["rounds"]} alternated rounds',
        '',
        *tick_rows(data['tick_cost']),
        '',
        f'## Redis memory per cron template, job hash and schedule entry ({config["templates"]:,} templates; '
        'one measurement, it is deterministic)',
        '',
        '| system | bytes per template |',
        '| --- | ---: |',
        *(f'| {name} | {value:,.0f} |' for name, value in data['memory_per_template'].items()),
        '',
        f'## Redis memory per database row ({config["rows"]:,} rows of each kind written by reconciliation: '
        'template hash, schedule entry, versions-hash entry)',
        '',
        '| row | bytes per row (used_memory delta) | template hash (MEMORY USAGE) | fields | encoding |',
        '| --- | ---: | ---: | ---: | --- |',
        *(
            f'| {kind} | {v["bytes_per_row"]:,.0f} | {v["template_hash_bytes"]:,.0f} | {v["template_fields"]} '
            f'| {v["template_encoding"]} |'
            for kind, v in data['memory_per_row'].items()
        ),
        '',
        f"## The scheduler loop's memory while it moves {config['occurrences']:,} one-off occurrences",
        '',
        '| moved | RSS MiB | peak RSS MiB |',
        '| ---: | ---: | ---: |',
        *(f'| {s["moved"]:,} | {s["rss_mib"]:.1f} | {s["peak_mib"]:.1f} |' for s in data['loop_memory']),
        '',
        f'RSS growth over the second half: {growth_mib(data["loop_memory"]):+.1f} MiB.',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.scale', __doc__, {'full': FULL, 'quick': QUICK}, run, report)
