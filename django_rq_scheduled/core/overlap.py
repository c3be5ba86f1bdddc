"""Overlap policies: what a schedule's slot does while its previous run is still queued or running.

- ``allow``: it runs anyway.
- ``skip``: it is recorded as skipped.
- ``buffer_one``: the first such slot waits (its fire time in the template's meta, the run it waits for in
  ``keys.BUFFERED_KEY``) and is enqueued as soon as that run ends (``buffers``); slots that come while one waits
  are recorded as skipped.
- ``cancel_other``: the previous run is taken out of its queue (recorded as canceled), or told to stop if a worker
  runs it (RQ's stop-job command; its worker records it stopped); the slot runs.

Pure: the planner (``moves``) asks these helpers for the Redis commands a policy needs, applied in its fenced move.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import keys
from .limits import OVERLAP_POLICIES

ALLOW, SKIP, BUFFER_ONE, CANCEL_OTHER = OVERLAP_POLICIES
POLICIES_READING_THE_PREVIOUS_RUN = frozenset({SKIP, BUFFER_ONE, CANCEL_OTHER})
ACTIVE_STATUSES = frozenset({b'queued', b'started', b'deferred', b'scheduled'})

BUFFERED_META = 'buffered'
"""Key of our template meta: the fire time (epoch seconds) of the occurrence waiting under ``buffer_one``."""

BUFFERED = 'buffered'
"""Outcome of a slot that waits for the previous run (not a run yet: it is recorded when it is enqueued)."""
SKIPPED_WAITING = 'skipped_overlap_waiting'
CANCELED_OVERLAP = 'canceled_overlap'
RELEASE_DROPPED = 'release_dropped'
"""Outcome of an entry that only forgets a wait nobody needs any more (its template gone, or no longer buffering)."""
WAITING_REASON = 'overlap: one run already waiting'
REPLACED_REASON = 'overlap: replaced by a newer run'

REPLACE_COMMAND = 'DRQS_REPLACE_RUN'
"""A step of ``move_script.MOVE`` (not a Redis command): cancel the run if it still waits in its queue, else stop it if
a worker runs it, else nothing (it ended meanwhile)."""

EXPECT_COMMAND = 'DRQS_EXPECT'
"""A condition of ``move_script.MOVE`` (not a Redis command): the entry is applied only if a hash field still holds a
value. A release is not moved by the score it is guarded on (a template's next slot, which an edit may keep), so it
also expects the template's meta as it read it: an edit written since is never overwritten."""


def policy_of(ours: dict[str, Any]) -> str:
    policy = ours.get('overlap')
    return policy if isinstance(policy, str) and policy in OVERLAP_POLICIES else ALLOW


def buffered_fire_time(ours: dict[str, Any]) -> float | None:
    """The fire time of the occurrence waiting under ``buffer_one``, None if none; ValueError (the schedule goes to
    the dead letters) for a value that is no time, which only someone else can have written."""
    value = ours.get(BUFFERED_META)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError(f'overlap {BUFFERED_META}: expected a fire time in epoch seconds, got {value!r}'[:200])
    return float(value)


def wait_command(template: str, run_id: str) -> tuple[str, ...]:
    return ('HSET', keys.BUFFERED_KEY, template, run_id)


def forget_wait_command(template: str) -> tuple[str, ...]:
    return ('HDEL', keys.BUFFERED_KEY, template)


def waited_run(value: bytes) -> tuple[str, bool]:
    """(run id, whether its worker reported its end) of a value of ``keys.BUFFERED_KEY``."""
    text = value.decode(errors='replace')
    if text.startswith(keys.RUN_ENDED_PREFIX):
        return text.removeprefix(keys.RUN_ENDED_PREFIX), True
    return text, False


def wait_is_over(status: bytes | None, reported_ended: bool) -> bool:
    """Whether the awaited run has ended. Its worker reports the end (capture) before RQ writes the final status, so
    a run still 'started' has ended once reported; one queued again (RQ's retry) has not."""
    if status not in ACTIVE_STATUSES:
        return True
    return reported_ended and status == b'started'


def canceled_record(
    template: str, ours: dict[str, Any], queue: str, run_id: str, *, at: float, next_time: float | None
) -> str:
    """The loop's record (``keys.RUNS_KEY``) of a run canceled by ``cancel_other``, appended only if it is."""
    record = {
        'owner': ours.get('owner'), 'schedule': template, 'queue': queue, 'job': None, 'canceled': run_id,
        'outcome': CANCELED_OVERLAP, 'at': at, 'runs': ours.get('runs', 0), 'next': next_time, 'finished': False,
    }  # fmt: skip
    return json.dumps(record)


def replace_command(queue_key: str, run_id: str, canceled_record: str) -> tuple[Any, ...]:
    """The move step that ends the previous run for ``cancel_other`` (see ``move_script.MOVE``)."""
    stop = json.dumps({'command': 'stop-job', 'job_id': run_id})  # as rq.command.send_stop_job_command sends it
    return (
        REPLACE_COMMAND, queue_key, keys.job_key(run_id), run_id, keys.RUNS_KEY, canceled_record,
        keys.PUBSUB_CHANNEL_PREFIX, stop,
    )  # fmt: skip
