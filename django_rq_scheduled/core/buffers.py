"""Buffered occurrences (overlap ``buffer_one``) whose wait is over, found by the leader after the due moves of each
pass and enqueued at once in the fenced move (``Mover.release_buffered``), not at the schedule's next slot.

The worker of the awaited run reports its end (``scripts.APPEND_OUTCOME`` marks the wait over and wakes the leader,
since RQ writes the final status only after the run's callbacks). Runs nobody reports on (a template made through
the API, without our callbacks; a worker killed, its run failed by RQ's cleanup) are found by their status. Costs
nothing while nothing waits: the read of the due jobs (``scripts.READ_DUE``) says whether anything does.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
from redis import Redis

from . import compact, keys, overlap
from .moves import SKIPPED_MISFIRE, Entry, Parsed, Planner
from .scores import guard_score

logger = logging.getLogger(__name__)


def ended_waits(connection: Redis) -> list[str | bytes]:
    """The templates whose buffered occurrence waits no more."""
    try:
        waiting = cast('dict[bytes, bytes]', connection.hgetall(keys.BUFFERED_KEY))
    except redis.ResponseError as exc:  # a key someone broke: planning and capture step around it too
        logger.warning('Cannot read the buffered runs (%s); they are enqueued at their next slot', exc)
        return []
    if not waiting:
        return []
    waits = [(template, *overlap.waited_run(value)) for template, value in waiting.items()]
    with connection.pipeline(transaction=False) as pipe:
        for _, run_id, _ in waits:
            pipe.hget(keys.job_key(run_id), 'status')
        statuses = pipe.execute(raise_on_error=False)
    return [
        template
        for (template, _, reported), status in zip(waits, statuses)
        if overlap.wait_is_over(None if isinstance(status, Exception) else status, reported)
    ]


def read_templates(connection: Redis, templates: list[str | bytes]) -> list[tuple[float | None, Any]]:
    """(score or None, whole hash, or the error reading it) of each template: one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for template in templates:
            pipe.zscore(keys.SCHEDULED_JOBS_KEY, template)
            pipe.hgetall(keys.job_key(template))
        replies = pipe.execute(raise_on_error=False)
    return [(_score(replies[2 * i]), replies[2 * i + 1]) for i in range(len(templates))]


def _score(reply: Any) -> float | None:
    return None if reply is None or isinstance(reply, Exception) else float(reply)


# -- planning a release (pure) ----------------------------------------------------------------------------------


def plan_release(planner: Planner, parsed: Parsed) -> Entry:
    """The buffered occurrence of a template whose awaited run ended: enqueued now under its own fire time; the
    template keeps its score, its next regular slot. A template no longer buffering only forgets the wait."""
    try:
        buffered = None
        if parsed.is_our_template and overlap.policy_of(parsed.ours) == overlap.BUFFER_ONE:
            buffered = overlap.buffered_fire_time(parsed.ours)
        if buffered is None:
            return forget_wait(parsed.member)
        return _release(planner, parsed, buffered)
    except Exception as exc:  # as ``Planner.plan``: a template no rule can plan is taken out of the schedule
        return planner.dead_letter(parsed.member, guard_score(parsed.score), f'cannot plan: {exc}')


def forget_wait(member: str | bytes) -> Entry:
    commands: list[tuple[Any, ...]] = [('HDEL', keys.BUFFERED_KEY, member)]
    return Entry(member, '*', commands, outcome=overlap.RELEASE_DROPPED, requires_hash=False)


def _release(planner: Planner, parsed: Parsed, buffered: float) -> Entry:
    # Guarded on the score (the next slot, which a user's edit may keep) and on the meta as read: an edit written
    # since is never overwritten with our copy.
    if parsed.compact:  # the loop sets the buffered slot; a template written since (by sync) has none
        field = compact.BUFFERED_FIELD
        expect = (overlap.EXPECT_COMMAND, keys.job_key(parsed.member), field, parsed.raw[field.encode()])
    else:
        expect = (overlap.EXPECT_COMMAND, keys.job_key(parsed.member), 'meta', parsed.raw[b'meta'])
    entry = Entry(parsed.member, guard_score(parsed.score), [expect, overlap.forget_wait_command(parsed.member)])
    meta = dict(parsed.meta)
    ours = dict(parsed.ours)
    del ours[overlap.BUFFERED_META]
    if planner._is_misfire(ours, buffered):
        entry.outcome = SKIPPED_MISFIRE
    else:
        planner._enqueue_occurrence(entry, parsed, meta, ours, buffered)
    meta[keys.META_KEY] = ours
    runs = ours.get('runs', 0)
    template_key = keys.job_key(parsed.member)
    if meta.get('repeat') is not None and meta['repeat'] <= 0:
        entry.commands += [('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member), ('DEL', template_key)]
        planner._record(entry, parsed, buffered, runs=runs, next_time=None, finished=True)
        return entry
    entry.commands += planner.meta_writes(parsed, meta)
    planner._record(entry, parsed, buffered, runs=runs, next_time=parsed.score, finished=False)
    return entry
