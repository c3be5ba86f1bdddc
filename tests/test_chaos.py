"""The chaos soak (bench/chaos.py): its rules on made-up runs, its plan, and a short run of the real thing.

The short run is the suite's version of ``python -m bench.soak chaos``: about a minute of Redis killed -9 and
restarted on its AOF, leaders killed -9 or paused past their lease, and users saving, disabling and enabling rows
around their due times, then every occurrence checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench.chaos_check import Observed, Rules, Schedule, check
from tests.processes_database import without_database
from tests.redis_server import has_redis_server

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0  # a multiple of 6 s, as the soak's own start
RULES = Rules(settle=6.0, drain_start=T0 + 60)
SEED = 7
MINUTES = 0.75


def feedback(runs: int, *, enabled: bool = True, one_off: bool = False) -> dict:
    return {
        'enabled': enabled,
        'run_count': runs,
        'has_run': runs > 0 if one_off else None,
        'last_run': datetime.fromtimestamp(T0, tz=timezone.utc) if runs else None,
        'next_run': None,
    }


def one_off(pk: int, due: float, **fields: object) -> Schedule:
    return Schedule(
        f'once-{pk}', 'once', template_id=f'drqs-scheduledjob-{pk}', created=T0, synced=T0, due=due, **fields
    )


def every_second(pk: int, **fields: object) -> Schedule:
    return Schedule(
        f'every-{pk}',
        'interval',
        template_id=f'drqs-repeatablejob-{pk}',
        created=T0,
        synced=T0,
        start=T0 + 1,
        interval=1,
        **fields,
    )


def observed(pushes: dict[str, int], rows: dict[str, dict], moved: dict[str, float] | None = None) -> Observed:
    return Observed(Counter(pushes), moved or {}, {}, {}, rows)


def rules_of(result) -> list[tuple[str, str]]:
    return sorted((violation.rule, violation.subject) for violation in result.violations)


def runs_of(template: str, seconds: Iterable[int], lag: float = 0.005) -> dict[str, float]:
    """Occurrence ids of ``template`` at T0 + each second, moved ``lag`` seconds after their fire time."""
    return {f'{template}_at_{round((T0 + s) * 1000)}': T0 + s + lag for s in seconds}


# -- one-offs ---------------------------------------------------------------------------------------------------


def test_a_one_off_enqueued_once_passes_and_twice_is_a_duplicate():
    once, twice = one_off(1, T0 + 5), one_off(2, T0 + 5)
    rows = {'drqs-scheduledjob-1': feedback(1, one_off=True), 'drqs-scheduledjob-2': feedback(1, one_off=True)}
    result = check([once, twice], observed({'drqs-scheduledjob-1': 1, 'drqs-scheduledjob-2': 2}, rows), RULES)
    assert rules_of(result) == [('duplicated', 'drqs-scheduledjob-2')]


def test_a_one_off_enabled_at_the_end_must_have_run():
    row = one_off(1, T0 + 5, states=[(T0 + 4, T0 + 4.01, False), (T0 + 9, T0 + 9.01, True)])
    result = check([row], observed({}, {'drqs-scheduledjob-1': feedback(0, one_off=True)}), RULES)
    assert rules_of(result) == [('lost', 'drqs-scheduledjob-1')]


def test_a_one_off_disabled_for_good_in_time_must_not_run_and_one_disabled_late_may():
    early = one_off(1, T0 + 20, states=[(T0 + 10, T0 + 10.01, False)])
    late = one_off(2, T0 + 20, states=[(T0 + 19, T0 + 19.01, False)])
    rows = {
        'drqs-scheduledjob-1': feedback(1, enabled=False, one_off=True),
        'drqs-scheduledjob-2': feedback(1, enabled=False, one_off=True),
    }
    result = check([early, late], observed({'drqs-scheduledjob-1': 1, 'drqs-scheduledjob-2': 1}, rows), RULES)
    assert rules_of(result) == [('ran while disabled', 'drqs-scheduledjob-1')]


def test_feedback_that_disagrees_with_the_queue_is_a_violation():
    row = one_off(1, T0 + 5)
    stale = {**feedback(0, one_off=True)}  # e.g. a stale instance saved has_run=False back over the run
    result = check([row], observed({'drqs-scheduledjob-1': 1}, {'drqs-scheduledjob-1': stale}), RULES)
    assert rules_of(result) == [('feedback', 'drqs-scheduledjob-1')]
    assert 'has_run False' in result.violations[0].detail


def test_a_job_moved_before_it_was_due_is_early():
    row = one_off(1, T0 + 5)
    rows = {'drqs-scheduledjob-1': feedback(1, one_off=True)}
    result = check([row], observed({'drqs-scheduledjob-1': 1}, rows, {'drqs-scheduledjob-1': T0 + 4}), RULES)
    assert rules_of(result) == [('early', 'drqs-scheduledjob-1')]


# -- periodic rows ----------------------------------------------------------------------------------------------


def test_interval_runs_on_their_slots_pass_and_a_run_off_the_grid_does_not():
    row = every_second(1)
    runs = runs_of('drqs-repeatablejob-1', range(1, 50))
    pushes = {job_id: 1 for job_id in runs} | {f'drqs-repeatablejob-1_at_{round((T0 + 3.5) * 1000)}': 1}
    result = check([row], observed(pushes, {'drqs-repeatablejob-1': feedback(50)}, runs), RULES)
    assert rules_of(result) == [('off slot', f'drqs-repeatablejob-1_at_{round((T0 + 3.5) * 1000)}')]


def test_cron_slots_follow_the_seconds_field():
    row = Schedule('cron-1', 'cron', template_id='drqs-cronjob-1', created=T0, synced=T0, cron='* * * * * */2')
    assert row.slots(T0, T0 + 7) == [T0 + 2, T0 + 4, T0 + 6]
    assert row.is_slot(round((T0 + 4) * 1000)) and not row.is_slot(round((T0 + 5) * 1000))
    assert row.period_after(T0 + 4) == 2


def test_a_slot_skipped_while_the_loop_moved_a_later_job_is_missed_but_a_coalesced_one_is_not():
    row, witness = every_second(1), every_second(2)
    ran = runs_of('drqs-repeatablejob-1', [s for s in range(1, 50) if s != 10])
    others = runs_of('drqs-repeatablejob-2', range(1, 50), lag=0.3)  # the loop busy: everything 300 ms late
    moved = {**ran, **others}
    rows = {'drqs-repeatablejob-1': feedback(48), 'drqs-repeatablejob-2': feedback(49)}
    result = check([row, witness], observed(dict.fromkeys(moved, 1), rows, moved), RULES)
    assert rules_of(result) == [('missed slot', f'drqs-repeatablejob-1_at_{round((T0 + 10) * 1000)}')]
    assert 'drqs-repeatablejob-2_at_' in result.violations[0].detail  # the move that proves the loop was there

    # The loop down from T0 + 9.5 to T0 + 12.2: slots 10, 11 and 12 coalesce into one run at 12, nothing else moved.
    down = {job_id: at for job_id, at in moved.items() if not T0 + 9.5 < at < T0 + 12.2}
    down[f'drqs-repeatablejob-2_at_{round((T0 + 12) * 1000)}'] = T0 + 12.2
    ran_after = {job_id: at for job_id, at in down.items() if job_id.startswith('drqs-repeatablejob-1_')}
    down |= {f'drqs-repeatablejob-1_at_{round((T0 + 12) * 1000)}': T0 + 12.2}
    rows = {'drqs-repeatablejob-1': feedback(len(ran_after) + 1), 'drqs-repeatablejob-2': feedback(47)}
    assert rules_of(check([row, witness], observed(dict.fromkeys(down, 1), rows, down), RULES)) == []


def test_slots_while_disabled_or_before_a_failed_sync_was_repaired_are_not_expected():
    row = every_second(
        1, states=[(T0 + 9.5, T0 + 9.51, False), (T0 + 20, T0 + 20.01, True)], blind=[(T0 + 30, T0 + 36)]
    )
    witness = every_second(2)
    skipped = set(range(10, 27)) | set(range(30, 37))
    ran = runs_of('drqs-repeatablejob-1', [s for s in range(1, 50) if s not in skipped])
    others = runs_of('drqs-repeatablejob-2', range(1, 50), lag=0.3)  # the loop there to see every slot
    moved = {**ran, **others}
    rows = {'drqs-repeatablejob-1': feedback(len(ran)), 'drqs-repeatablejob-2': feedback(49)}
    assert rules_of(check([row, witness], observed(dict.fromkeys(moved, 1), rows, moved), RULES)) == []

    # A failed sync is repaired by a reconciliation, later when a fault (a leader killed, Redis down) puts it off.
    row.blind = [(T0 + 30, T0 + 31)]
    assert rules_of(check([row, witness], observed(dict.fromkeys(moved, 1), rows, moved), RULES))
    faulty = Rules(settle=RULES.settle, drain_start=RULES.drain_start, faults=((T0 + 29, T0 + 30.5),))
    assert rules_of(check([row, witness], observed(dict.fromkeys(moved, 1), rows, moved), faulty)) == []

    late = {**moved, **runs_of('drqs-repeatablejob-1', [18])}  # a run long after the disable
    rows['drqs-repeatablejob-1'] = feedback(len(ran) + 1)
    result = check([row, witness], observed(dict.fromkeys(late, 1), rows, late), faulty)
    assert rules_of(result) == [('ran while disabled', f'drqs-repeatablejob-1_at_{round((T0 + 18) * 1000)}')]


def test_repeat_is_a_ceiling_and_a_target_when_there_was_time():
    over, short = every_second(1, repeat=3), every_second(2, repeat=3)
    runs = runs_of('drqs-repeatablejob-1', range(1, 5))
    few = runs_of('drqs-repeatablejob-2', range(1, 3))
    moved = {**runs, **few}
    rows = {'drqs-repeatablejob-1': feedback(4), 'drqs-repeatablejob-2': feedback(2)}
    result = check([over, short], observed(dict.fromkeys(moved, 1), rows, moved), RULES)
    assert rules_of(result) == [('over repeat', 'drqs-repeatablejob-1'), ('unfinished', 'drqs-repeatablejob-2')]


def test_ids_no_row_owns_and_leftovers_are_violations():
    row = one_off(1, T0 + 5)
    result = check(
        [row],
        Observed(
            Counter({'drqs-scheduledjob-1': 1, 'stranger': 1}),
            {},
            {'drqs-cronjob-9': T0 + 99},
            {'drqs-cronjob-8': '{"reason": "bad"}'},
            {'drqs-scheduledjob-1': feedback(1, one_off=True)},
        ),
        RULES,
    )
    assert rules_of(result) == [
        ('dead letter', 'drqs-cronjob-8'),
        ('left scheduled', 'drqs-cronjob-9'),
        ('unknown job', 'stranger'),
    ]


# -- likely causes ----------------------------------------------------------------------------------------------


def monitor_lines(*lines: tuple[float, str, str]) -> list:
    from bench.chaos_evidence import Line

    return [Line(T0 + at, who, text) for at, who, text in lines]


PUSH = '"RPUSH" "rq:queue:default" "drqs-scheduledjob-1"'
READD = f'"ZADD" "rq:scheduler:scheduled_jobs" "{T0 + 5}" "drqs-scheduledjob-1"'
SCORE = '"ZSCORE" "rq:scheduler:scheduled_jobs" "drqs-scheduledjob-1"'
VERSION = '"HMGET" "rq:drqs:versions" "drqs-scheduledjob-1"'


def cause_of(lines: list, notes: Iterable[tuple[float, str]] = ()) -> str:
    from bench.chaos_check import Violation
    from bench.chaos_evidence import likely_cause

    violation = Violation('duplicated', 'drqs-scheduledjob-1', 'reached the queue 2 times', (T0 + 5,))
    return likely_cause(violation, lines, [(T0 + at, note) for at, note in notes], []).label


def test_likely_causes_are_told_from_who_read_and_wrote_when():
    reconciliation = monitor_lines(
        (5.000, 's2', VERSION), (5.001, 's2 MOVE', PUSH), (5.002, 's2', SCORE),
        (5.010, 's2 SCHEDULE', READD), (5.020, 's2 MOVE', PUSH),
    )  # fmt: skip
    assert cause_of(reconciliation).startswith('(a)')
    racing_user = monitor_lines(
        (5.000, 'orm', SCORE), (5.001, 's2 MOVE', PUSH), (5.002, 'orm SCHEDULE', READD), (5.010, 's2 MOVE', PUSH)
    )
    assert cause_of(racing_user, [(4.99, 'saved a fresh instance (description changed)')]).startswith('(c)')
    stale_user = monitor_lines(
        (5.000, 's2 MOVE', PUSH), (6.000, 'orm', SCORE), (6.001, 'orm SCHEDULE', READD), (6.010, 's2 MOVE', PUSH)
    )
    assert cause_of(stale_user, [(5.99, 'saved stale-1, stale (description changed)')]).startswith('(b)')


# -- the plan ---------------------------------------------------------------------------------------------------


def test_the_plan_is_the_same_for_the_same_seed_and_has_every_kind_of_event():
    from bench.chaos import Config, Plan

    config = Config(minutes=MINUTES, seed=SEED)
    first, again = Plan(config, T0), Plan(config, T0)
    assert [(a.at, a.verb, a.row) for a in first.actions] == [(a.at, a.verb, a.row) for a in again.actions]
    assert Plan(Config(minutes=MINUTES, seed=SEED + 1), T0).actions != first.actions
    verbs = Counter(action.verb for action in first.actions)
    assert {'kill-leader', 'pause-leader', 'kill-redis', 'save', 'load', 'save_stale', 'disable', 'enable'} <= set(
        verbs
    )
    kinds = Counter(row.kind for row in first.rows.values())
    assert kinds['once'] >= 200 and kinds['interval'] >= 4 and kinds['cron'] >= 4
    assert any(row.repeat for row in first.rows.values()) and any(row.repeat is None for row in first.rows.values())
    dues = [row.due for row in first.rows.values() if row.due]
    assert min(dues) < T0 + 5 and max(dues) > T0 + MINUTES * 60 - 5


# -- the real thing ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to kill and restart on its AOF')
def test_chaos_soak_loses_and_duplicates_nothing(tmp_path):
    command = [sys.executable, '-m', 'bench.soak', 'chaos', '--minutes', str(MINUTES), '--seed', str(SEED)]
    env = {**without_database(os.environ), 'PYTHONPATH': str(ROOT)}  # the soak has a SQLite file of its own
    for name in ('DRQS_TEST_REDIS_URL', 'DRQS_TEST_RECONCILE_INTERVAL'):
        env.pop(name, None)  # the soak starts its own Redis
    done = subprocess.run(
        [*command, '--logs', str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    print(done.stdout[:20_000])
    assert done.returncode == 0, f'exit code {done.returncode}\n{done.stdout[-30_000:]}\n{done.stderr[-5_000:]}'
