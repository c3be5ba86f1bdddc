"""Smoke test of the benchmark (bench/core.py): its smallest run completes and every count it checks is right.

It asserts counts and round trips only, never a time or a speed ratio: those depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import has_redis_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not has_redis_server(), reason='the benchmark needs a real redis-server (DUMP, INFO stats)'),
]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180
SYSTEMS = {
    'one-off': {'ours', 'rq-scheduler', 'rq built-in', 'raw Redis limit'},
    'interval': {'ours', 'rq-scheduler'},
    'cron': {'ours', 'rq-scheduler'},
}


@pytest.fixture(scope='module')
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp('bench') / 'b.json'
    command = [sys.executable, '-m', 'bench.core', '--smoke', '--json', str(out)]
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('DRQS_TEST_REDIS_URL', None)  # the benchmark starts its own redis-server
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f'exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}'
    assert out.exists(), f'no JSON written\n{done.stdout[-3000:]}'
    assert '## Throughput' in done.stdout
    return json.loads(out.read_text())


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


def test_scale_benchmark_quick_run_completes_with_right_counts():
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('DRQS_TEST_REDIS_URL', None)
    done = subprocess.run(
        [sys.executable, '-m', 'bench.scale', '--quick'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # a wrong count exits non-zero
    for heading in ('Tick cost', 'Redis memory per cron template', "The loop's max RSS"):
        assert heading in done.stdout


def run_quick(module: str) -> str:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('DRQS_TEST_REDIS_URL', None)
    env.pop('DRQS_TEST_DB', None)
    done = subprocess.run(
        [sys.executable, '-m', module, '--quick'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # a wrong count exits non-zero
    return done.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row below a header (separator and header rows left out)."""
    lines = [line for line in stdout.splitlines() if line.startswith('|')]
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines if '---' not in line][1:]


def test_sync_cost_benchmark_quick_run_completes_with_right_counts():
    stdout = run_quick('bench.sync_cost')
    assert 'Sync cost: create, update and delete 1,000 cron job rows' in stdout
    rows = {(cells[0], cells[1]): cells for cells in table_rows(stdout)}
    assert set(rows) == {(op, mode) for op in ('create', 'update', 'delete') for mode in ('one by one', 'bulk')}
    for (operation, mode), cells in rows.items():
        round_trips = int(cells[5].replace(',', ''))
        if mode == 'bulk':
            assert round_trips <= 2 * (1000 // 500) + 10, operation  # batched: a few per 500 rows
        else:
            assert 1000 <= round_trips <= 3 * 1000 + 10, operation  # each row syncs on its own


def test_admin_cost_benchmark_quick_run_completes_with_right_counts():
    stdout = run_quick('bench.admin_cost')
    assert 'Admin: one GET of the cron job change list' in stdout
    rows = table_rows(stdout)
    assert [cells[0] for cells in rows] == ['100', '10,000']
    assert rows[0][1:3] == rows[1][1:3]  # queries and round trips do not grow with the table
    assert int(rows[1][1]) <= 6 and int(rows[1][2]) <= 1
    assert 'Render time at 10,000 rows / at 100 rows' in stdout
