"""The attempts of a run that RQ retries, for ``history``: a failed attempt with retries left sends the run back to
queued (not a failure: no signal, nothing counted), and ``Run.attempts`` counts its starts.

The worker's records carry the attempt's number (absolute, so a record read twice counts once); the sweep, which
sees a run start in Redis, counts one start more than the run had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .runs import OPEN_STATUSES, QUEUED, STARTED

if TYPE_CHECKING:
    from .history import Fact, RunRow

MAX_ATTEMPTS = 32767
"""What the runs' attempts column (a PositiveSmallIntegerField) holds on every database."""
SAME_START = 0.001
"""Seconds within which two start times are one start (a record's float, RQ's text)."""


def number(value: Any) -> int | None:
    """An attempt number of a worker's record as the column holds it; None for anything else (older workers)."""
    return value if type(value) is int and 1 <= value <= MAX_ATTEMPTS else None


def reason_of(reason: Any, retrying: bool) -> Any:
    if not retrying:
        return reason
    return f'retrying after: {reason}' if isinstance(reason, str) and reason else 'retrying'


def merge_retry(run: RunRow, fact: Fact) -> set[str]:
    """A failed attempt that RQ tries again: an open run goes back to queued with that attempt's error. A run that
    has ended, or has heard of a later attempt, stays as it is. Returns the fields changed."""
    if run.status not in OPEN_STATUSES or (fact.attempts or 0) < (run.attempts or 0):
        return set()
    values = {
        'status': QUEUED, 'attempts': fact.attempts, 'started_at': fact.started_at, 'worker': fact.worker,
        'error': fact.error, 'reason': fact.reason,
    }  # fmt: skip
    changed = {name for name, value in values.items() if getattr(run, name) != value}
    for name in changed:
        setattr(run, name, values[name])
    return changed


def is_same_start(run: RunRow, fact: Fact) -> bool:
    """Whether a start the sweep saw is that of the attempt that just failed (seen before RQ requeued it)."""
    return (
        fact.status == STARTED and run.status == QUEUED and bool(run.attempts)
        and run.started_at is not None and fact.started_at is not None
        and abs((fact.started_at - run.started_at).total_seconds()) < SAME_START
    )  # fmt: skip


def merge_count(run: RunRow, fact: Fact, ranks: dict[str, int]) -> set[str]:
    """Attempts count the starts: the worker reports the number; the sweep sees a start, one more than before."""
    attempts = fact.attempts
    if attempts is None and fact.status == STARTED and ranks.get(run.status, 2) < ranks[STARTED]:
        attempts = (run.attempts or 0) + 1
    if attempts is None or attempts <= (run.attempts or 0):
        return set()
    run.attempts = attempts
    return {'attempts'}
