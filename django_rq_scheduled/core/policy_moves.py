"""Planning of the run policies of our periodic templates (``run_policy``): the window of validity, the jitter
delay of each slot, and the bookkeeping of catch-up (``catchup`` decides which slots run). A part of ``moves.Planner``,
kept apart to keep each file readable; pure like the rest of planning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import catchup, compact, keys, limits, run_policy
from .outcomes import ENQUEUED, SKIPPED_MISFIRE, SKIPPED_OVERLAP
from .outcomes import FINISHED as FINISHED
from .outcomes import POSTPONED as POSTPONED
from .outcomes import SKIPPED_CATCHUP as SKIPPED_CATCHUP
from .overlap import ACTIVE_STATUSES
from .scores import format_score

if TYPE_CHECKING:
    from .moves import Entry, Parsed

PENDING_SLOT_KEYS = ('slot', 'slot_due', 'delay')
"""Our meta keys of a template due at its slot plus a jitter delay."""


def _finite(*values: Any) -> tuple[float, ...] | None:
    """``values`` as floats if each is a finite number (foreign meta may hold anything), else None."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return tuple(float(v) for v in values)
    return None


def slot_record(job: str | None, outcome: str, fire_time: float, reason: str = '') -> dict[str, Any]:
    """What a run record says of one slot (``Planner._append_record``)."""
    return {'job': job, 'outcome': outcome, 'fire_time': fire_time, 'reason': reason}


class RunPolicyPlanning:
    """The window and jitter rules of ``moves.Planner``."""

    now: float
    random: Callable[[], float]

    if TYPE_CHECKING:

        def _cron(self, meta: dict[str, Any]) -> tuple[str, str]: ...
        def _interval(self, meta: dict[str, Any]) -> float: ...
        def _retire_exhausted(self, entry: Entry, parsed: Parsed) -> None: ...
        def _dumps_meta(self, meta: dict[str, Any]) -> bytes: ...
        def _is_misfire(self, ours: dict[str, Any], fire_time: float) -> bool: ...
        def _apply_ttl(self, entry: Entry, job_id: str, raw: dict[bytes, bytes]) -> None: ...
        def _create_occurrence(self, parsed: Parsed, occurrence: str, fire_time: float) -> list[tuple[Any, ...]]: ...
        def _record(
            self,
            entry: Entry,
            parsed: Parsed,
            fire_time: float,
            *,
            runs: int,
            next_time: float | None,
            finished: bool,
            said: dict[str, Any] | None = None,
        ) -> None: ...

    def meta_writes(self, parsed: Parsed, meta: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The writes that give the template of ``parsed`` this meta, in its own layout."""
        if parsed.compact:
            return compact.meta_commands(parsed.raw, meta, parsed.member)
        return [('HSET', keys.job_key(parsed.member), 'meta', self._dumps_meta(meta))]

    @staticmethod
    def _run_policy(ours: dict[str, Any]) -> run_policy.RunPolicy:
        return run_policy.read(ours)  # a PolicyError names the key; the template goes to the dead letters

    @staticmethod
    def _due_slot(parsed: Parsed) -> tuple[float, float | None]:
        """The slot the template is due for, and its jitter delay if it waits for it (due at slot + delay)."""
        ours = parsed.ours
        pending = _finite(ours.get('slot'), ours.get('slot_due'), ours.get('delay'))
        if pending is None:
            return parsed.score, None
        slot, due, delay = pending
        # Only while the template is still where the delay put it: a sync or an API call that moved it starts afresh.
        if abs(parsed.score - due) < catchup.HALF_MS and delay >= 0 and slot + delay <= parsed.score + 1:
            return slot, delay
        return parsed.score, None

    def _judged_at(self, parsed: Parsed, base: float, delay: float | None) -> float:
        """The moment catch-up judges the due slots at: now, except for a slot waiting for its jitter delay and moved
        on time: it runs, even if the next slot came meanwhile (a delay may end a millisecond before it)."""
        if delay is not None and self.now - parsed.score <= limits.ON_TIME_SECONDS:
            return base
        return self.now

    def _slots(self, parsed: Parsed, base: float) -> catchup.Slots:
        if parsed.meta.get('cron_string'):
            return catchup.CronSlots(base, *self._cron(parsed.meta))
        return catchup.IntervalSlots(base, self._interval(parsed.meta))

    def _jitter(self, policy: run_policy.RunPolicy, slots: catchup.Slots, slot: float) -> float:
        return run_policy.jitter_delay(policy, slot, slots.after(slot), self.random)

    @staticmethod
    def _window_over(policy: run_policy.RunPolicy, next_time: float | None) -> bool:
        return next_time is not None and policy.after_window(next_time)

    def _wait_for_window(
        self, entry: Entry, parsed: Parsed, slots: catchup.Slots, policy: run_policy.RunPolicy
    ) -> Entry:
        """A template due before its window opens: slots before ``valid_from`` are no slots, nothing runs."""
        assert policy.valid_from is not None
        first = slots.after(policy.valid_from - catchup.HALF_MS)
        if first is None:
            self._retire_exhausted(entry, parsed)
        elif policy.after_window(first):
            return self._close_window(entry, parsed)
        else:
            entry.commands.append(('ZADD', keys.SCHEDULED_JOBS_KEY, format_score(first), parsed.member))
        return entry

    def _close_window(self, entry: Entry, parsed: Parsed) -> Entry:
        """No slot left before ``valid_until``: the template is retired and the row finished, as by ``repeat``."""
        entry.outcome = FINISHED
        entry.commands += [('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member), ('DEL', keys.job_key(parsed.member))]
        runs = parsed.ours.get('runs', 0)
        self._record(entry, parsed, parsed.score, runs=runs, next_time=None, finished=True)
        return entry

    def _postpone(
        self,
        entry: Entry,
        parsed: Parsed,
        meta: dict[str, Any],
        ours: dict[str, Any],
        jittered: tuple[float, float],
        log: list[dict[str, Any]],
    ) -> Entry:
        """The slot waits for its jitter delay: the template is due again at slot + delay, which it keeps in its
        meta, so a retried move finds the same delay (chosen once, written atomically with the move)."""
        slot, delay = jittered
        entry.outcome = POSTPONED
        due = round(slot + delay, 3)
        ours.update(slot=slot, slot_due=due, delay=delay)
        meta[keys.META_KEY] = ours
        entry.commands += self.meta_writes(parsed, meta)
        entry.commands.append(('ZADD', keys.SCHEDULED_JOBS_KEY, format_score(due), parsed.member))
        self._record_slots(entry, parsed, log, runs=ours.get('runs', 0), next_time=due)
        return entry

    def _following_slot(
        self, parsed: Parsed, meta: dict[str, Any], decided: catchup.CatchUp, slots: catchup.Slots
    ) -> float | None:
        if decided.resume is not None:
            return decided.resume  # catch-up 'all' goes on with the next missed slot at once
        assert decided.fire_time is not None
        return slots.after(decided.fire_time)  # the newest slot due, so the next one is still ahead (or just due)

    def _schedule_slot(
        self,
        ours: dict[str, Any],
        policy: run_policy.RunPolicy,
        slots: catchup.Slots,
        next_time: float | None,
        *,
        jittered: bool,
    ) -> float | None:
        """When the template is next due: the next slot plus its jitter delay, chosen now and kept in the meta."""
        for name in PENDING_SLOT_KEYS:
            ours.pop(name, None)
        if next_time is None or not jittered or not policy.jitter:
            return next_time
        delay = self._jitter(policy, slots, next_time)
        if not delay:
            return next_time
        due = round(next_time + delay, 3)
        ours.update(slot=next_time, slot_due=due, delay=delay)
        return due

    def _record_slots(
        self, entry: Entry, parsed: Parsed, log: list[dict[str, Any]], *, runs: int, next_time: float | None
    ) -> None:
        for slot in log:
            self._append_record(entry, parsed, slot, runs=runs, next_time=next_time, finished=False)

    def _run_earlier_slots(
        self,
        entry: Entry,
        parsed: Parsed,
        meta: dict[str, Any],
        ours: dict[str, Any],
        decided: catchup.CatchUp,
        previous_status: bytes | None,
        log: list[dict[str, Any]],
    ) -> bytes | None:
        """Logs the slots the catch-up skips and runs the older slots of catch-up ``all``, oldest first; returns the
        status of the previous run that overlap ``skip`` now sees."""
        if decided.summary:
            summary = decided.summary
            log.append(slot_record(None, SKIPPED_CATCHUP, summary.first, summary.text))
        log += [slot_record(None, SKIPPED_CATCHUP, slot, reason) for slot, reason in decided.skipped]
        for slot in decided.earlier_runs:
            if self._is_misfire(ours, slot):
                log.append(slot_record(None, SKIPPED_MISFIRE, slot, catchup.MISFIRE))
            elif previous_status in ACTIVE_STATUSES:
                log.append(slot_record(None, SKIPPED_OVERLAP, slot, 'overlap'))
            else:
                occurrence = keys.occurrence_id(parsed.member, round(slot * 1000))
                entry.commands += self._create_occurrence(parsed, occurrence, slot)
                self._apply_ttl(entry, occurrence, parsed.raw)
                entry.also_enqueued.append(occurrence)
                log.append(slot_record(occurrence, ENQUEUED, slot))
                ours.update(runs=ours.get('runs', 0) + 1, last_run_id=occurrence, last_run_at=self.now)
                if meta.get('repeat') is not None:
                    meta['repeat'] -= 1
                if parsed.previous_run_to_check is not None:
                    previous_status = b'queued'  # overlap 'skip': the run just enqueued is the previous one
        return previous_status

    def _append_record(
        self, entry: Entry, parsed: Parsed, slot: dict[str, Any], *, runs: int, next_time: float | None, finished: bool
    ) -> None:
        """One record of the run log: ``slot`` holds the job (or None), outcome, fire time, reason and delay."""
        ours = parsed.ours
        if not ours.get('record'):
            return
        record = {
            'owner': ours.get('owner'),
            'schedule': parsed.member,
            'queue': parsed.raw[b'origin'].decode(errors='replace'),
            'job': slot['job'],
            'outcome': slot['outcome'],
            'fire_time': slot['fire_time'],
            'at': self.now,
            'runs': runs,
            'next': next_time,
            'finished': finished,
        }
        record.update({name: slot[name] for name in ('reason', 'delay') if slot.get(name) not in (None, '')})
        entry.commands.append(('RPUSH', keys.RUNS_KEY, json.dumps(record)))
