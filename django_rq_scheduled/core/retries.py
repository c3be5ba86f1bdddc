"""Retries of a run: a schedule's policy (``retries``, ``retry_delays``) as the fields of RQ's own ``Retry`` in a job
hash, so that RQ's worker retries a failed run and each occurrence of a template starts with all its retries.

RQ picks the delay of a retry from the end of its list (``index = len(intervals) - retries_left``, the first entry
repeated when the list is short); a schedule's list is read from its start, its last entry repeated. So the list
RQ gets has exactly one entry per retry: the schedule's delays, cut or padded with the last one.

A delayed retry waits in the queue's ``ScheduledJobRegistry``; the leader moves it back when it is due unless an
RQ scheduler (``rq worker --with-scheduler``) holds that queue (``retry_scripts.RELEASE_RETRIES``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, cast

from redis import Redis
from redis.exceptions import ResponseError
from rq.utils import utcformat

from . import keys, limits, retry_scripts
from .errors import LeadershipLost
from .lease import Lease

logger = logging.getLogger(__name__)

RETRIES_LEFT, RETRY_INTERVALS = 'retries_left', 'retry_intervals'
HASH_FIELDS = frozenset({RETRIES_LEFT.encode(), RETRY_INTERVALS.encode()})
"""RQ's names of the retry fields of a job hash (``rq.job.Job.to_dict``)."""


def validated(retries: object, retry_delays: object) -> tuple[int, list[int]]:
    """``(retries, retry_delays)`` checked against the limits; ValueError naming the argument otherwise."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= limits.MAX_RETRIES:
        raise ValueError(f'retries: must be a whole number from 0 to {limits.MAX_RETRIES}, got {retries!r}')
    delays = list(retry_delays) if isinstance(retry_delays, tuple) else [] if retry_delays is None else retry_delays
    problem = limits.retry_delays_problem(delays)
    if problem:
        raise ValueError(f'retry_delays: {problem}')
    return retries, cast('list[int]', list(delays))  # type: ignore[call-overload]


def of_meta(ours: dict[str, Any]) -> tuple[int, list[int]]:
    """The policy our part of a template's meta holds (none: no retries); ValueError if someone wrote junk there."""
    return validated(ours.get('retries', 0), ours.get('retry_delays'))


def rq_intervals(retries: int, delays: list[int]) -> list[int]:
    """One delay per retry, in the order RQ reads them (see the module's docstring)."""
    if not delays:
        return [0] * retries
    return [delays[min(number, len(delays) - 1)] for number in range(retries)]


def hash_fields(retries: int, delays: list[int]) -> dict[str, Any]:
    """The fields of a job hash that give it these retries; empty for none."""
    if not retries:
        return {}
    return {RETRIES_LEFT: retries, RETRY_INTERVALS: json.dumps(rq_intervals(retries, delays))}


def run_meta(retries: int, delays: list[int]) -> dict[str, Any]:
    """What a run's part of our meta holds of its policy: its retries in all, from which ``capture`` numbers its
    attempts (RQ keeps only the retries left)."""
    return {'retries': retries} if retries else {}


def apply(job: Any, retries: int, delays: list[int]) -> None:
    """Gives an (unsaved) RQ job these retries, as ``Retry(max=retries, interval=...)`` would."""
    if retries:
        job.retries_left = retries
        job.retry_intervals = rq_intervals(retries, delays)


def hash_problem(raw: dict[bytes, bytes]) -> str | None:
    """Why the retry fields of a job hash would break RQ's worker when it loads the job (None: they would not)."""
    left, intervals = raw.get(RETRIES_LEFT.encode()), raw.get(RETRY_INTERVALS.encode())
    try:
        if left and int(left) < 0:
            raise ValueError
    except ValueError:
        return f'retries_left is not a whole number: {(left or b"")[:40]!r}'
    if intervals:
        try:
            value = json.loads(intervals)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(type(delay) is int and delay >= 0 for delay in value):
            return f'retry_intervals is not a list of seconds: {intervals[:40]!r}'
        if not value and left and int(left) > 0:
            return 'retry_intervals is empty, which RQ cannot index'
    return None


RELEASE_BATCH = 1000
"""Due retries moved per queue and tick (RQ's own scheduler takes as many)."""


PayloadVet = Callable[[dict[bytes, bytes]], 'str | None']
"""Why the allow-list refuses a job with these fields (``VETTED_FIELDS``), or None if it may run."""
VETTED_FIELDS = retry_scripts.VETTED_FIELDS


def vetted_digest(values: list[bytes | None]) -> str:
    """The digest of the vetted fields that ``retry_scripts.RELEASE_VETTED_RETRIES`` compares before a move."""
    parts = ['-' if value is None else hashlib.sha1(value).hexdigest() for value in values]
    return hashlib.sha1(','.join(parts).encode()).hexdigest()


def release_due(connection: Redis, lease: Lease, *, now: float, vet: PayloadVet | None = None) -> float | None:
    """Moves the delayed retries due by ``now`` back to their queues, for the queues no RQ scheduler holds, fenced by
    ``lease``; returns when the next one is due.

    Without this, a retry with a delay would run only where a worker runs with ``--with-scheduler``. With an
    allow-list (``vet``), each due retry's payload is vetted first, as every job the scheduler enqueues is: one
    read (``retry_scripts.DUE_RETRIES``), then one call that moves the payloads allowed, unless changed since, and
    dead-letters those refused (``retry_scripts.RELEASE_VETTED_RETRIES``). Without one, one call moves them all.
    """
    enqueued_at = utcformat(datetime.fromtimestamp(now, tz=timezone.utc))
    # RQ writes the due time in whole seconds, rounded down: a retry moves once that second is over, never early.
    cutoff = now - 1
    argv = (
        lease.token, repr(cutoff), enqueued_at, RELEASE_BATCH, keys.RQ_QUEUE_PREFIX,
        keys.RQ_SCHEDULED_REGISTRY_PREFIX, keys.RQ_SCHEDULER_LOCK_PREFIX, keys.JOB_KEY_PREFIX,
    )  # fmt: skip
    with _fenced(lease):
        if vet is None:
            script = retry_scripts.RELEASE_RETRIES
            moved, next_due = connection.eval(script, 2, keys.LOCK_KEY, keys.QUEUES_SET_KEY, *argv)
        else:
            moved, next_due = _release_vetted(connection, argv, vet, now)
    if moved:
        logger.info('Moved %d retried jobs back to their queues', moved)
    return float(next_due) + 1 if next_due else None


def _release_vetted(connection: Redis, argv: tuple[Any, ...], vet: PayloadVet, now: float) -> tuple[int, Any]:
    next_due, *found = connection.eval(retry_scripts.DUE_RETRIES, 2, keys.LOCK_KEY, keys.QUEUES_SET_KEY, *argv)
    if not found:
        return 0, next_due
    verdicts: list[Any] = []
    for queue_key, registry, job_id, score, *vetted in zip(*[iter(found)] * (4 + len(VETTED_FIELDS))):
        fields = {name: value for name, value in zip(VETTED_FIELDS, vetted) if value}
        refusal = vet(fields)
        if refusal:
            logger.error('Refused to move the retry %r back to its queue: %s', job_id, refusal)
            record = json.dumps({'reason': f'retry refused: {refusal}', 'score': float(score), 'at': now})
            verdicts += [queue_key, registry, job_id, '', record]
        else:
            verdicts += [queue_key, registry, job_id, vetted_digest(vetted), '']
    release_keys = (keys.LOCK_KEY, keys.QUEUES_SET_KEY, keys.DEAD_LETTERS_KEY)
    moved, dead = connection.eval(retry_scripts.RELEASE_VETTED_RETRIES, 3, *release_keys, *argv, *verdicts)
    if dead:
        logger.error('Moved %d refused retries to the dead letters', dead)
    return moved, next_due


@contextmanager
def _fenced(lease: Lease) -> Iterator[None]:
    try:
        yield
    except ResponseError as exc:
        if 'NOTLEADER' not in str(exc):
            raise
        lease.lose('the lease changed hands before retries were released')
        raise LeadershipLost(str(exc)) from exc
