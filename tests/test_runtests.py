"""runtests.py's choice of pytest-xdist workers."""

from __future__ import annotations

import pytest

import runtests


def test_the_suite_runs_on_one_worker_per_core_unless_told_otherwise() -> None:
    assert runtests.with_workers(['-q', 'tests/test_models.py']) == [
        '--numprocesses', 'auto', '--maxprocesses', str(runtests.MAX_WORKERS), '-q', 'tests/test_models.py',
    ]  # fmt: skip


@pytest.mark.parametrize('chosen', [['-n', '0'], ['-n4'], ['--numprocesses=3'], ['-p', 'no:xdist'], ['--dist', 'no']])
def test_workers_chosen_in_the_arguments_are_left_as_chosen(chosen: list[str]) -> None:
    assert runtests.with_workers(['-q', *chosen]) == ['-q', *chosen]


def test_without_pytest_xdist_the_suite_runs_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtests.importlib.util, 'find_spec', lambda name: None)
    assert runtests.with_workers(['-q']) == ['-q']
