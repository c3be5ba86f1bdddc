"""Smoke tests of the benchmarks: bench/core.py's smallest run and every other script's quick run complete, alternate
their systems over the rounds they announce, and write JSON whose counts are right.

They assert counts, round trips and the JSON's structure only, never a time or a speed ratio: those depend on the
machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes_database import without_database
from tests.redis_server import has_redis_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not has_redis_server(), reason='the benchmark needs a real redis-server (DUMP, INFO stats)'),
]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180
SYSTEMS = {
    'one-off': {'ours', 'rq-scheduler', 'rq built-in', 'server-side limit', 'ours (loop move)'},
    'interval': {'ours', 'rq-scheduler'},
    'cron': {'ours', 'rq-scheduler'},
}


def run_benchmark(module: str, mode: str, folder: Path) -> tuple[dict, str]:
    """Runs a benchmark script; returns its JSON and its printed report. A wrong count exits non-zero."""
    out = folder / f'{module}.json'
    command = [sys.executable, '-m', module, f'--{mode}', '--json', str(out)]
    env = {**without_database(os.environ), 'PYTHONPATH': str(ROOT)}  # the benchmark has a SQLite file of its own
    env.pop('DRQS_TEST_REDIS_URL', None)  # and starts its own redis-server
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f'exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}'
    assert out.exists(), f'no JSON written\n{done.stdout[-3000:]}'
    data = json.loads(out.read_text())
    assert data['config']['mode'] == mode
    assert {'cpu', 'python', 'redis-server', 'rq', 'redis-py', 'django'} <= set(data['machine'])
    assert '## Machine' in done.stdout
    return data, done.stdout


@pytest.fixture(scope='module')
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, stdout = run_benchmark('bench.core', 'smoke', tmp_path_factory.mktemp('bench'))
    assert '## Throughput' in stdout
    return data


def assert_counts(counts: dict, where: str) -> None:
    n = counts['scheduled']
    assert n > 0, where
    assert counts['moved'] == n, where
    assert counts['distinct'] == n, where
    assert counts['left'] == counts['expected_left'], where
    assert counts['still_due'] == 0, where


def test_every_workload_and_system_has_throughput_results(results: dict) -> None:
    rounds = results['config']['rounds']
    assert set(results['throughput']) == set(SYSTEMS)
    for workload, systems in SYSTEMS.items():
        assert set(results['throughput'][workload]) == systems, workload
        for system in systems:
            seconds = results['throughput'][workload][system]
            assert len(seconds) == rounds, (workload, system)
            assert all(s > 0 for s in seconds), (workload, system)


def test_every_pass_moved_every_job_exactly_once(results: dict) -> None:
    for workload, systems in SYSTEMS.items():
        for system in systems:
            passes = results['counts'][workload][system]
            assert len(passes) == results['config']['rounds'], (workload, system)
            for counts in passes:
                assert counts['scheduled'] == results['sizes'][workload], (workload, system)
                assert_counts(counts, f'{workload}/{system}')


def test_round_trips_are_counted_for_every_system(results: dict) -> None:
    for workload, systems in SYSTEMS.items():
        assert set(results['round_trips'][workload]) == systems, workload
        for system, trips in results['round_trips'][workload].items():
            assert trips['jobs'] == results['config']['trip_jobs'], (workload, system)
            assert_counts(trips['counts'], f'round trips {workload}/{system}')
            assert trips['commands_per_job'] > 0, (workload, system)


def test_ours_batches_its_round_trips(results: dict) -> None:
    for workload in SYSTEMS:
        assert results['round_trips'][workload]['ours']['round_trips_per_job'] < 0.05, workload


def test_our_loop_enqueued_every_job_once(results: dict) -> None:
    ours = results['lateness']['ours: manage.py rqscheduler (defaults)']
    assert 'skipped' not in ours
    assert ours['jobs'] == results['config']['late_jobs']
    assert_counts(ours['counts'], 'lateness ours')


def quick_rounds(data: dict) -> int:
    rounds = data['config']['rounds']
    assert rounds >= 2  # a quick run still alternates its systems
    return rounds


def test_scale_quick_run_alternates_both_systems_with_right_counts(tmp_path: Path) -> None:
    data, _ = run_benchmark('bench.scale', 'quick', tmp_path)
    config, rounds = data['config'], quick_rounds(data)
    assert list(data['tick_cost']) == [str(size) for size in config['sizes']]
    for others, systems in data['tick_cost'].items():
        assert set(systems) == {'ours', 'rq-scheduler'}, others
        for system, passes in systems.items():
            assert len(passes) == rounds, (others, system)
            for counts in passes:
                assert counts['due'] == counts['moved'] == counts['distinct'] == config['due'], (others, system)
                assert counts['entries_left'] == int(others), (others, system)
    assert set(data['memory_per_template']) == {'ours', 'rq-scheduler'}
    assert set(data['memory_per_row']) == {'one-off', 'interval', 'cron'}
    for kind, measured in data['memory_per_row'].items():
        assert 0 < measured['template_hash_bytes'] < measured['bytes_per_row'], kind
    samples = data['loop_memory']
    assert [s['moved'] for s in samples] == list(range(config['batch'], config['occurrences'] + 1, config['batch']))
    for sample in samples:
        counts = sample['counts']
        assert counts['due'] == counts['moved'] == counts['distinct'] == config['batch']
        assert counts['entries_left'] == 0
        assert sample['rss_mib'] > 0


def test_sync_cost_quick_run_alternates_with_and_without_the_app_with_right_counts(tmp_path: Path) -> None:
    data, _ = run_benchmark('bench.sync_cost', 'quick', tmp_path)
    rows, rounds = data['config']['rows'], quick_rounds(data)
    assert set(data['results']) == {'one by one', 'bulk'}
    for mode, systems in data['results'].items():
        assert set(systems) == {'with app', 'without app'}, mode
        for system, runs in systems.items():
            assert len(runs) == rounds, (mode, system)
            templates = rows if system == 'with app' else 0
            for run in runs:
                assert run['counts'] == {
                    'rows after create': rows,
                    'templates after create': templates,
                    'rows updated': rows,
                    'templates after update': templates,
                    'rows after delete': 0,
                    'templates after delete': 0,
                }, (mode, system)
                for operation in ('create', 'update', 'delete'):
                    trips = run[operation]['round_trips']
                    if system == 'without app':
                        assert trips == 0, (mode, operation)
                    elif mode == 'bulk':
                        assert 0 < trips <= 2 * (rows // 500) + 10, operation  # batched: a few per 500 rows
                    else:
                        assert rows <= trips <= 3 * rows + 10, operation  # each row syncs on its own


def test_admin_cost_quick_run_alternates_the_sizes_with_right_counts(tmp_path: Path) -> None:
    data, stdout = run_benchmark('bench.admin_cost', 'quick', tmp_path)
    config, rounds = data['config'], quick_rounds(data)
    assert list(data['pages']) == [str(rows) for rows in config['sizes']]
    for rows, pages in data['pages'].items():
        assert len(pages) == rounds, rows
        for page in pages:
            assert page['rows'] == int(rows)
            assert page['shown'] == 50 and page['counted_in_page'] == 1
            assert len(page['renders_ms']) == config['renders']
            assert page['queries'] <= 6 and page['round_trips'] <= 1
    small, large = (data['pages'][str(rows)] for rows in config['sizes'])
    assert {p['queries'] for p in small} == {p['queries'] for p in large}  # they do not grow with the table
    assert {p['round_trips'] for p in small} == {p['round_trips'] for p in large}
    assert 'Render time at 10,000 rows / at 100 rows' in stdout


def test_cron_lateness_smoke_run_alternates_the_loops_and_measures_the_top_of_the_minute(tmp_path: Path) -> None:
    data, _ = run_benchmark('bench.cron_lateness', 'smoke', tmp_path)
    rounds, window = quick_rounds(data), data['config']['window']
    ours = 'ours: manage.py rqscheduler (defaults)'
    assert set(data['cron']) == {ours, 'rq cron'}
    assert set(data['one-off']) == {ours, "rq's built-in scheduler (rq worker --with-scheduler)"}
    for loop, runs in data['cron'].items():
        assert len(runs) == rounds, loop
        for run in runs:
            counts = run['counts']
            assert counts['runs'] == counts['fire_times'] == len(run['lateness_ms']) > 0, loop
            assert abs(counts['runs'] - window / 2) <= 1, loop
    for loop, runs in data['one-off'].items():
        assert len(runs) == rounds, loop
        for run in runs:
            assert run['counts'] == {'due': window * 5, 'enqueued': window * 5, 'left': 0}, loop
            assert len(run['lateness_ms']) == window * 5, loop
    for rows, measured in data['top_of_minute'].items():  # one run per row, all for one minute boundary
        assert measured['counts'] == {'rows': int(rows), 'runs': int(rows), 'distinct': int(rows), 'fire_times': 1}
        assert len(measured['lateness_ms']) == int(rows)


def test_the_run_history_benchmark_counts_every_run(tmp_path):
    data, stdout = run_benchmark('bench.runs', 'smoke', tmp_path)
    assert '## Outcome capture on a real RQ worker' in stdout and '## The leader reading' in stdout
    rounds = data['config']['rounds']
    for systems in data['workers'].values():
        assert set(systems) == {'with capture', 'without capture'}
        assert all(len(runs) == rounds for runs in systems.values())
        assert {run['outcome_records'] for run in systems['with capture']} == {data['config']['jobs']} or {
            run['outcome_records'] for run in systems['with capture']
        } == {data['config']['forking_jobs']}
        assert {run['outcome_records'] for run in systems['without capture']} == {0}
    assert set(data['ingestion']) == {'backlog', 'in turn'}
    assert all(len(passes) == rounds for passes in data['ingestion'].values())


def test_the_alerts_benchmark_alternates_with_and_without_alerts_and_counts_every_run(tmp_path):
    data, stdout = run_benchmark('bench.alerts', 'smoke', tmp_path)
    assert '## Enqueue lateness with and without alerts' in stdout and 'p99 with alerts' in stdout
    config = data['config']
    assert set(data['lateness']) == {'no alerts', 'alerts to a hanging webhook', 'no alerts, again (control)'}
    for name, rounds in data['lateness'].items():
        assert len(rounds) == config['rounds'], name
        for round_ in rounds:
            jobs = config['jobs']
            assert round_['counts']['due'] == round_['counts']['enqueued'] == round_['counts']['failed_runs'] == jobs
            assert len(round_['lateness_ms']) == jobs
    assert all(r['counts']['webhook_connections'] > 0 for r in data['lateness']['alerts to a hanging webhook'])
    assert len(data['p99_ratio_per_round']) == len(data['control_p99_ratio_per_round']) == config['rounds']


def test_the_reconciliation_benchmark_costs_the_same_at_every_size(tmp_path):
    data, stdout = run_benchmark('bench.reconcile_cost', 'quick', tmp_path)
    results = data['results']
    assert [result['rows'] for result in results] == data['config']['sizes']
    # The same bound at every size (a pass whose slice ends one table and starts the next makes one query more).
    assert max(max(result['pass']['queries']) for result in results) <= 10
    assert all(max(result['pass']['round_trips']) <= 5 for result in results)
    first = results[0]
    # The table's slices, one more that finds its end, and one for each empty table.
    assert first['sweep']['passes'] == first['rows'] // data['sweep_rows'] + data['models']
    assert 'drqs_cronjob_modified' in data['changed_rows_plan']
    assert '## Reconciliation' in stdout


def test_the_capacity_benchmark_measures_every_kind_and_size(tmp_path):
    data, stdout = run_benchmark('bench.capacity', 'smoke', tmp_path)
    config = data['config']
    assert '## Moves per second of one Redis core' in stdout and '## Enqueue lateness when N' in stdout
    for kind, samples in data['memory'].items():
        assert [sample['schedules'] for sample in samples] == config['memory_sizes'], kind
        assert all(sample['bytes_per_schedule'] > 0 for sample in samples), kind
    assert set(data['redis_cpu']) == {'one-off', 'interval', 'cron'}
    for kind, systems in data['redis_cpu'].items():
        assert set(systems) == {'ours', 'rq-scheduler'}, kind
        assert all(len(passes) == config['rounds'] for passes in systems.values()), kind
    assert set(data['ticks_among']) == {str(n) for n in config['tick_among']}
    for kind, samples in data['fire_times'].items():
        assert [sample['schedules'] for sample in samples] == config['fire_sizes'], kind


def test_the_burst_benchmark_alternates_with_and_without_the_app_and_counts_every_job(tmp_path):
    data, stdout = run_benchmark('bench.burst', 'smoke', tmp_path)
    assert '## bulk_create of' in stdout and '## The burst' in stdout
    config, rows = data['config'], data['config']['rows']
    assert set(data['bulk_create']) == {'with app', 'without app'}
    for system, passes in data['bulk_create'].items():
        assert len(passes) == config['rounds'], system
        assert all(p['templates'] == (rows if system == 'with app' else 0) for p in passes)
    # Inserted rows are not read first: one pipelined write per batch of 500, the script loaded once.
    assert all(p['round_trips'] <= -(-rows // 500) + 6 for p in data['bulk_create']['with app'])
    assert all(p['round_trips'] == 0 for p in data['bulk_create']['without app'])
    burst = data['burst']
    assert burst['jobs'] == rows and burst['last_enqueue_after_due_s'] >= burst['first_enqueue_after_due_s']
    assert burst['workers_s'] > 0 and 'outcomes_after_workers_s' in burst
