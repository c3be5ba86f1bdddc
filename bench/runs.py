"""Run history costs: what capturing outcomes costs a real RQ worker, and how fast the leader reads runs in.

(1) Worker throughput of a no-op job with the outcome callbacks every run of a schedule carries (one RPUSH per
run) against the same jobs without them, on a real ``rq worker --burst`` process, for RQ's forking ``Worker`` and
its ``SimpleWorker``; the two alternate round after round. Throughput is jobs over the time from the first job's
start to the last job's end, read from the job hashes, so the worker's start-up is not counted. (2) The leader's
ingestion into SQLite (a file on disk): the loop's records of enqueued runs and the workers' outcome records, read
in as ``manage.py rqscheduler`` does (``feedback.apply_feedback``, ``history.ingest_outcomes``), in two orders: both
lists waiting together, and each outcome arriving after its run was recorded.

Run from the repository root: ``PYTHONPATH=. python -m bench.runs [--quick | --smoke] [--only workers|ingestion]
[--json FILE]``. It starts its own redis-server on a free loopback port and checks every count it relies on.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

_DB = Path(tempfile.mkdtemp(prefix='drqs-bench-runs-')) / 'db.sqlite3'
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ['DRQS_TEST_DB'] = str(_DB)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from rq import Queue  # noqa: E402
from rq.utils import utcparse  # noqa: E402

from bench.common import alternate, check, private_redis, ratio_of_medians, run_command_line, spread  # noqa: E402
from django_rq_scheduled import history, retention  # noqa: E402
from django_rq_scheduled.core import capture, keys  # noqa: E402
from django_rq_scheduled.feedback import apply_feedback  # noqa: E402
from django_rq_scheduled.models import RepeatableJob, Run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WITH, WITHOUT = 'with capture', 'without capture'
WORKERS = {
    "django-rq's rqworker, Worker (forks per job)": ('rqworker', 'rq.worker.Worker'),
    "django-rq's rqworker, SimpleWorker": ('rqworker', 'rq.worker.SimpleWorker'),
    'plain rq worker, Worker (forks per job)': ('rq', 'rq.worker.Worker'),
}
"""The worker a Django project runs (``manage.py rqworker``, which imports the app and so the callbacks once), and
a plain ``rq worker`` without Django, whose work horses import the callbacks for each job."""


@dataclass(frozen=True)
class Config:
    mode: str
    jobs: int
    forking_jobs: int
    rounds: int
    runs: int
    schedules: int
    only: str = ''
    """One of PARTS, or '' for both."""


FULL = Config(mode='full', jobs=5_000, forking_jobs=1_000, rounds=5, runs=50_000, schedules=500)
QUICK = Config(mode='quick', jobs=1_000, forking_jobs=300, rounds=2, runs=10_000, schedules=100)
SMOKE = Config(mode='smoke', jobs=100, forking_jobs=30, rounds=2, runs=1_000, schedules=10)


# -- (1) the worker ---------------------------------------------------------------------------------------------


def worker_pass(url: str, worker: tuple[str, str], jobs: int, captured: bool) -> dict[str, Any]:
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    queue = Queue('default', connection=connection)
    options = capture.callbacks() if captured else {}
    ids = [queue.enqueue('tests.tasks.noop', result_ttl=600, **options).id for _ in range(jobs)]
    program, worker_class = worker
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'DRQS_TEST_REDIS_URL': url}
    env.pop('PYTHONDONTWRITEBYTECODE', None)  # modules load from bytecode, as an installed package's do
    if program == 'rq':
        command = [sys.executable, '-m', 'rq.cli', 'worker', '--url', url]
        env.pop('DJANGO_SETTINGS_MODULE', None)  # a plain rq worker, as the docs promise it works
    else:
        command = [sys.executable, '-m', 'django', 'rqworker', '--settings', 'tests.settings']
    command += ['--burst', '--worker-class', worker_class, 'default']
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job_key(job_id), 'status', 'started_at', 'ended_at')
        states = pipe.execute()
    finished = [state for state in states if state[0] == b'finished']
    outcomes = connection.llen(keys.OUTCOMES_KEY)
    check(len(finished) == jobs, f'{worker}: {len(finished)} of {jobs} jobs finished')
    check(outcomes == (jobs if captured else 0), f'{worker}: {outcomes} outcome records for {jobs} jobs')
    first = min(utcparse(state[1].decode()) for state in finished)
    last = max(utcparse(state[2].decode()) for state in finished)
    seconds = (last - first).total_seconds()
    connection.connection_pool.disconnect()
    return {'jobs_per_s': jobs / seconds, 'seconds': seconds, 'outcome_records': outcomes}


def jobs_for(label: str, config: Config | dict[str, Any]) -> int:
    values = config if isinstance(config, dict) else asdict(config)
    return values['forking_jobs'] if 'forks' in label else values['jobs']


def worker_costs(url: str, config: Config) -> dict[str, dict[str, list[dict[str, Any]]]]:
    results = {}
    for label, worker in WORKERS.items():
        jobs = jobs_for(label, config)
        measures = {
            system: functools.partial(worker_pass, url, worker, jobs, system == WITH) for system in (WITH, WITHOUT)
        }
        results[label] = alternate(config.rounds, measures)
    return results


# -- (2) the leader -----------------------------------------------------------------------------------------------


def ingestion_pass(url: str, config: Config, schedules: list[RepeatableJob], together: bool) -> dict[str, Any]:
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    Run.objects.all().delete()
    RepeatableJob.objects.filter(pk__in=[row.pk for row in schedules]).record_feedback(run_count=0)
    _reset_summaries(schedules)
    now = time.time()
    decisions, outcomes = [], []
    for i in range(config.runs):
        row = schedules[i % len(schedules)]
        job_id = keys.occurrence_id(row.template_id, round((now - config.runs + i) * 1000))
        decisions.append(json.dumps({
            'owner': row.owner, 'schedule': row.template_id, 'queue': 'default', 'job': job_id,
            'outcome': 'enqueued', 'fire_time': now - config.runs + i, 'at': now, 'runs': i // len(schedules) + 1,
            'next': now + 60, 'finished': False,
        }))  # fmt: skip
        status = capture.FAILURE if i % 10 == 0 else capture.SUCCESS
        outcomes.append(json.dumps({
            'job': job_id, 'status': status, 'started': now, 'ended': now + 0.01, 'worker': 'bench', 'reason': '',
            'error': 'ValueError: x\nTraceback ...' if status == capture.FAILURE else '',
        }))  # fmt: skip
    timings = {}
    if together:
        _push(connection, keys.RUNS_KEY, decisions)
        _push(connection, keys.OUTCOMES_KEY, outcomes)
        started = time.perf_counter()
        while apply_feedback(connection):  # as the command reads them: outcomes beside the loop's records
            pass
        while history.ingest_outcomes(connection):
            pass
        timings['together'] = time.perf_counter() - started
    else:
        for label, key, records, read in (
            ('enqueued', keys.RUNS_KEY, decisions, apply_feedback),
            ('outcomes', keys.OUTCOMES_KEY, outcomes, history.ingest_outcomes),
        ):
            _push(connection, key, records)
            started = time.perf_counter()
            while read(connection):
                pass
            timings[label] = time.perf_counter() - started
    finished, failed = Run.objects.filter(status='finished').count(), Run.objects.filter(status='failed').count()
    check(finished + failed == config.runs, f'ingestion: {finished + failed} of {config.runs} runs ended')
    counted = sum(row.success_count + row.failure_count for row in RepeatableJob.objects.all())
    check(counted == config.runs, f'ingestion: summaries count {counted} runs of {config.runs}')
    connection.connection_pool.disconnect()
    total = sum(timings.values())
    Run.objects.update(ended_at=datetime.now(timezone.utc) - timedelta(days=31))
    started = time.perf_counter()
    pruned = retention.Pruner().prune(days=30, per_schedule=1_000_000)
    prune_s = time.perf_counter() - started
    check(pruned == min(retention.PRUNE_BATCH, config.runs), f'pruning: {pruned} runs deleted')
    return {
        'prune_ms': prune_s * 1000,
        'runs_per_s': config.runs / total,
        'seconds': total,
        **{f'{label}_per_s': config.runs / seconds for label, seconds in timings.items()},
    }


def _push(connection: redis.Redis, key: str, records: list[str]) -> None:
    for start in range(0, len(records), 10_000):
        connection.rpush(key, *records[start : start + 10_000])


def _reset_summaries(schedules: list[RepeatableJob]) -> None:
    from django.db.models import QuerySet

    QuerySet(RepeatableJob).filter(pk__in=[row.pk for row in schedules]).update(
        success_count=0, failure_count=0, consecutive_failures=0, last_status='', recent_runs=[]
    )


BACKLOG, IN_TURN = 'backlog', 'in turn'
ORDERS = {
    BACKLOG: "both records of every run waiting together (a backlog; a tick that reads a short job's two records)",
    IN_TURN: 'every outcome read after its run was recorded (the most work: each run written twice)',
}


def ingestion_costs(url: str, config: Config) -> dict[str, list[dict[str, Any]]]:
    schedules = [
        RepeatableJob.objects.create(
            name=f's{i}', callable='tests.tasks.noop', interval=1, interval_unit='hours',
            scheduled_time=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        for i in range(config.schedules)
    ]  # fmt: skip
    measures = {order: functools.partial(ingestion_pass, url, config, schedules, order == BACKLOG) for order in ORDERS}
    return alternate(config.rounds, measures)


PARTS = ('workers', 'ingestion')


def run(config: Config) -> dict:
    results = {}
    with private_redis() as server:
        settings.RQ_QUEUES = {name: {'URL': server.url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}
        call_command('migrate', verbosity=0)
        if config.only in ('', 'workers'):
            results['workers'] = worker_costs(server.url, config)
        if config.only in ('', 'ingestion'):
            results['ingestion'] = ingestion_costs(server.url, config)
    _DB.unlink(missing_ok=True)
    return results


def report(data: dict) -> str:
    sections = {'workers': _workers_report, 'ingestion': _ingestion_report}
    return '\n\n'.join(section(data) for part, section in sections.items() if part in data)


def _workers_report(data: dict) -> str:
    config = data['config']
    lines = [
        f'## Outcome capture on a real RQ worker: no-op jobs, median (min - max) of {config["rounds"]} rounds, '
        'with and without capture alternated',
        '',
        f'| worker | jobs | {WITH}, jobs/s | {WITHOUT}, jobs/s | ratio of medians |',
        '| --- | ---: | ---: | ---: | ---: |',
    ]
    for label, systems in data['workers'].items():
        rates = {system: [run['jobs_per_s'] for run in runs] for system, runs in systems.items()}
        jobs = jobs_for(label, config)
        lines.append(
            f'| {label} | {jobs:,} | {spread(rates[WITH], ",.0f")} | {spread(rates[WITHOUT], ",.0f")} | '
            f'{ratio_of_medians(rates[WITH], rates[WITHOUT]):.3f} |'
        )
    return '\n'.join(lines)


def _ingestion_report(data: dict) -> str:
    config = data['config']
    ingestion = data['ingestion']

    def rate(order: str, name: str) -> str:
        return spread([measured[name] for measured in ingestion[order]], ',.0f')

    lines = [
        f'## The leader reading {config["runs"]:,} runs of {config["schedules"]:,} schedules into SQLite (a file), '
        f'median (min - max) of {config["rounds"]} rounds, the two orders alternated',
        '',
        '| records | runs/s |',
        '| --- | ---: |',
        f'| {ORDERS[BACKLOG]} | {rate(BACKLOG, "runs_per_s")} |',
        f'| {ORDERS[IN_TURN]}: per run | {rate(IN_TURN, "runs_per_s")} |',
        f'| the same, enqueue records alone (row feedback and new runs) | {rate(IN_TURN, "enqueued_per_s")} |',
        f'| the same, outcome records alone (runs completed, summaries) | {rate(IN_TURN, "outcomes_per_s")} |',
        '',
        f'One pruning pass deleting {min(1000, config["runs"]):,} runs out of {config["runs"]:,}: '
        f'{spread([measured["prune_ms"] for orders in ingestion.values() for measured in orders], ",.1f")} ms.',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    run_command_line('bench.runs', __doc__, {'full': FULL, 'quick': QUICK, 'smoke': SMOKE}, run, report, parts=PARTS)
