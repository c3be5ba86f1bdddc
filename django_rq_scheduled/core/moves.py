"""Pure planning of moves: a due entry (member, score, the fields of its job hash) → the Redis writes it needs.

No Redis I/O here, and no clock but the instant it is given, so every rule (one-off, rq-scheduler template, our
templates, misfire, overlap, repeat, dead letters) is testable without Redis. The mover reads what planning needs
and sends the writes of a whole batch to Redis in one fenced Lua call (``move_script.MOVE``).
"""

from __future__ import annotations

import json
import random as randomness
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import catchup, compact, cron, keys, occurrence_copy, outcomes, overlap, payloads, retries, scores, vetting
from .compact import CompactError
from .limits import MIN_SECONDS
from .policy_moves import RunPolicyPlanning
from .scores import format_score, guard_score, utc_datetime

ACTIVE_STATUSES = overlap.ACTIVE_STATUSES
ENQUEUED, SKIPPED_MISFIRE, SKIPPED_OVERLAP = outcomes.ENQUEUED, outcomes.SKIPPED_MISFIRE, outcomes.SKIPPED_OVERLAP
DEAD = outcomes.DEAD
AT_FRONT_VALUES = (b'1', b'True', b'true')
VETTED_FIELDS = (b'data', *vetting.CALLBACK_FIELDS)
"""What ``vetting.payload_problem`` reads of a job hash."""
UNREADABLE = b'__unreadable__'
"""Key of a planning-fields dict whose job key could not be read (e.g. it holds a string): value = Redis's error."""

Meta = dict[str, Any]


@dataclass(frozen=True)
class QueueInfo:
    """What the planner needs of an RQ queue."""

    key: str
    default_timeout: int | None


@dataclass
class Entry:
    """The planned, still unapplied, move of one scheduled member."""

    member: str | bytes
    """Bytes only for a member that is not UTF-8: it can only be dead-lettered."""
    score: str
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    outcome: str = ENQUEUED
    enqueued_id: str | None = None
    reason: str = ''
    slow_path: bool = False
    requires_hash: bool = True
    """Applied only while the member's job hash exists (a dead letter needs none)."""
    one_off: tuple[str, str, Any, Any] | None = None
    """(queue key, push command, timeout or '', ttl or ''): a plain one-off, sent to the move script compactly."""
    also_enqueued: list[str] = field(default_factory=list)
    """Older slots run by the same move before ``enqueued_id`` (catch-up ``all``)."""


@dataclass
class Parsed:
    """A due member with its decoded job hash and meta."""

    member: str
    score: float
    raw: dict[bytes, bytes]
    meta: dict[str, Any]
    plain: bool = False
    """The meta holds no stand-in of an unresolved object (``payloads.read_meta_telling``)."""

    def __post_init__(self) -> None:
        # Read once: these are asked several times per job on the hot path.
        self.ours: dict[str, Any] = self.meta.get(keys.META_KEY) or {}
        self.is_periodic = bool(self.meta.get('interval') or self.meta.get('cron_string'))
        self.is_our_template = self.is_periodic and self.ours.get('kind') in ('interval', 'cron')
        self.compact = compact.is_compact(self.raw)  # read whole before it was parsed

    @property
    def has_dependencies(self) -> bool:
        return bool(self.raw.get(b'dependency_id') or self.raw.get(b'dependency_ids'))

    def needs_whole_hash(self, planner: Planner) -> bool:
        """RQ's own enqueue needs the whole job; an occurrence copies its template (in Redis if it can)."""
        return not self.compact and (self.has_dependencies or (self.is_our_template and not planner.copy_in_redis))

    @property
    def previous_run_to_check(self) -> str | None:
        if self.is_our_template and overlap.policy_of(self.ours) in overlap.POLICIES_READING_THE_PREVIOUS_RUN:
            return self.ours.get('last_run_id')
        return None


class PlanningError(Exception):
    """A due member that cannot be moved: it goes to the dead letters with this message as reason."""


def _push_command(raw: dict[bytes, bytes]) -> str:
    return 'LPUSH' if raw.get(b'enqueue_at_front') in AT_FRONT_VALUES else 'RPUSH'


class Planner(RunPolicyPlanning):
    """Plans the moves of one batch, all at the same instant ``now`` (epoch seconds)."""

    def __init__(
        self,
        *,
        now: float,
        enqueued_at: str,
        serializer: Any,
        queue_info: Callable[[str, str | None], QueueInfo],
        default_timezone: str,
        callable_refusal: Callable[[str], str | None] | None = None,
        random: Callable[[], float] = randomness.random,
        copy_in_redis: bool = False,
        vetted: dict[tuple[Any, ...], str | None] | None = None,
    ) -> None:
        self.now = now
        self.vetted = {} if vetted is None else vetted
        """Payloads vetted before, by their vetted fields (``_check_payload``): shared by a mover's batches."""
        self.copy_in_redis = copy_in_redis
        """Occurrences copy their template's fields in the move script (``occurrence_copy``), not from ``raw``."""
        self.enqueued_at = enqueued_at
        self.serializer = serializer
        self.queue_info = queue_info
        self.default_timezone = default_timezone
        self.callable_refusal = callable_refusal
        self.random = random
        self._plain = False

    # -- decoding -------------------------------------------------------------------------------------------

    def parse(self, member: str | bytes, score: float, raw: dict[bytes, bytes] | None) -> Parsed | Entry:
        """Decodes a due member, or returns the dead-letter entry that takes it out of the schedule."""
        try:
            if isinstance(member, bytes):
                raise PlanningError('member is not UTF-8 text, so it names no job')
            if raw and UNREADABLE in raw:
                raise PlanningError(f'job key cannot be read: {raw[UNREADABLE].decode(errors="replace")}')
            if not raw:
                raise PlanningError('job hash is missing')
            meta, plain = self._load_meta(raw, member)
            self._check_payload(raw)
            if not raw.get(b'origin'):
                raise PlanningError('job hash has no origin queue')
            if problem := retries.hash_problem(raw):
                raise PlanningError(problem)  # RQ's worker could not even load the job
        except Exception as exc:  # whatever a foreign hash holds, it goes to the dead letters, never up the loop
            return self.dead_letter(
                member, guard_score(score), str(exc) if isinstance(exc, PlanningError | CompactError) else repr(exc)
            )
        return Parsed(member, score, raw, meta, plain)

    def _load_meta(self, raw: dict[bytes, bytes], member: str) -> tuple[dict[str, Any], bool]:
        if compact.is_compact(raw):
            return compact.read_meta(raw, member), True  # a CompactError names what is wrong: see ``parse``
        try:
            return payloads.read_meta_telling(raw.get(b'meta'), self.serializer)
        except payloads.PayloadError as exc:
            raise PlanningError(f'cannot read meta: {exc}') from exc

    def payload_refusal(self, fields: dict[bytes, bytes]) -> str | None:
        """Why a job with these fields (its payload, its callbacks) may not be enqueued, or None."""
        return vetting.payload_problem(fields, self.serializer, self.callable_refusal)

    def _check_payload(self, raw: dict[bytes, bytes]) -> None:
        """Reads the function name without running any code of the payload, and asks the allow-list of it and of
        the callbacks the hash names."""
        # Periodic templates keep their payload: vetted once per payload, not at every run.
        vetted = tuple(map(raw.get, VETTED_FIELDS))
        if vetted in self.vetted:
            problem = self.vetted[vetted]
        else:
            problem = self.vetted[vetted] = vetting.payload_problem(raw, self.serializer, self.callable_refusal)
        if problem:
            raise PlanningError(problem)

    # -- planning -------------------------------------------------------------------------------------------

    def plan(self, parsed: Parsed, previous_status: bytes | None = None) -> Entry:
        # Every meta this plan writes is the parsed one, or built from it with plain values of ours.
        self._plain = parsed.plain
        try:
            if parsed.has_dependencies:
                self._check_plain_meta(parsed)
                return Entry(parsed.member, guard_score(parsed.score), slow_path=True)
            if parsed.is_our_template:
                return self._plan_occurrence(parsed, previous_status)
            if parsed.is_periodic:
                return self._plan_same_id_run(parsed)
            return self._plan_one_off(parsed)
        except Exception as exc:  # a template no rule can plan is taken out of the schedule, never retried forever
            return self.dead_letter(parsed.member, guard_score(parsed.score), f'cannot plan: {exc}')
        finally:
            self._plain = False

    def dead_letter(self, member: str | bytes, score: str, reason: str) -> Entry:
        record = json.dumps({'reason': reason, 'score': float(score), 'at': self.now})
        commands = [('ZREM', keys.SCHEDULED_JOBS_KEY, member), ('HSET', keys.DEAD_LETTERS_KEY, member, record)]
        return Entry(member, score, commands, outcome=DEAD, reason=reason, requires_hash=False)

    def _plan_one_off(self, parsed: Parsed) -> Entry:
        entry = Entry(parsed.member, guard_score(parsed.score))
        entry.commands.append(('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member))
        runs = parsed.ours.get('runs', 0)
        if self._is_misfire(parsed.ours, parsed.score):
            entry.outcome = SKIPPED_MISFIRE
            entry.commands.append(('HSET', keys.job_key(parsed.member), 'status', 'canceled'))
        else:
            entry.enqueued_id = parsed.member
            runs += 1
            if not parsed.ours.get('record'):
                entry.commands = []
                entry.one_off = self._compact_one_off(parsed)
                return entry
            entry.commands += self._enqueue_existing(parsed, parsed.member)
            self._apply_ttl(entry, parsed.member, parsed.raw)
        self._record(entry, parsed, parsed.score, runs=runs, next_time=None, finished=True)
        return entry

    def _compact_one_off(self, parsed: Parsed) -> tuple[str, str, Any, Any]:
        queue = self._queue(parsed)
        timeout = queue.default_timeout if b'timeout' not in parsed.raw and queue.default_timeout is not None else ''
        ttl = int(parsed.raw[b'ttl']) if parsed.raw.get(b'ttl') else 0
        return queue.key, _push_command(parsed.raw), timeout, ttl if ttl > 0 else ''

    def _plan_same_id_run(self, parsed: Parsed) -> Entry:
        """rq-scheduler's own periodic job: the template itself is pushed again, as rq-scheduler does."""
        entry = Entry(parsed.member, guard_score(parsed.score), enqueued_id=parsed.member)
        meta = dict(parsed.meta)
        remaining = meta.get('repeat')
        if remaining:
            meta['repeat'] = remaining - 1
        entry.commands += self._enqueue_existing(parsed, parsed.member, meta=meta)
        if remaining is not None and meta['repeat'] <= 0:
            entry.commands.append(('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member))
            return entry
        next_time = self._next_time(parsed, meta)
        if next_time is None:
            self._retire_exhausted(entry, parsed)
        else:
            entry.commands.append(('ZADD', keys.SCHEDULED_JOBS_KEY, format_score(next_time), parsed.member))
        return entry

    def _plan_occurrence(self, parsed: Parsed, previous_status: bytes | None) -> Entry:
        """Our periodic template: a fresh RQ job per occurrence; the template moves to its next slot."""
        entry = Entry(parsed.member, guard_score(parsed.score))
        meta = dict(parsed.meta)
        ours = dict(parsed.ours)
        policy = self._run_policy(ours)
        base, delay = self._due_slot(parsed)
        slots = self._slots(parsed, base)
        if policy.before_window(base):
            return self._wait_for_window(entry, parsed, slots, policy)
        decided = catchup.decide(slots, self._judged_at(parsed, base, delay), policy, max_runs=meta.get('repeat'))
        if decided.fire_time is None:
            return self._close_window(entry, parsed)
        log: list[dict[str, Any]] = []  # this move's records of other slots, written with its final counts
        previous_status = self._run_earlier_slots(entry, parsed, meta, ours, decided, previous_status, log)
        fire_time = recorded = decided.fire_time
        delay = delay if fire_time == base else None
        if delay is None and policy.jitter and decided.on_time and not decided.fire_skip:
            delay = self._jitter(policy, slots, fire_time)
            if fire_time + delay > self.now:
                return self._postpone(entry, parsed, meta, ours, (fire_time, delay), log)
        if decided.fire_skip:
            entry.outcome = outcomes.SKIPPED_CATCHUP
        elif self._is_misfire(ours, fire_time + (delay or 0)):
            entry.outcome = SKIPPED_MISFIRE
        else:
            recorded = self._plan_overlap(entry, parsed, meta, ours, fire_time, previous_status)
        ours['last_fire_time'] = fire_time
        ours.pop('late_from', None)  # the first run is decided: every later slot is late from its own time
        ran = entry.enqueued_id is not None and recorded == fire_time
        said = {'reason': decided.fire_skip, 'delay': delay if ran else None}  # of the fire slot
        template_key = keys.job_key(parsed.member)
        next_time = self._following_slot(parsed, meta, decided, slots)
        if (meta.get('repeat') is not None and meta['repeat'] <= 0) or self._window_over(policy, next_time):
            entry.commands += [('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member), ('DEL', template_key)]
            self._record_slots(entry, parsed, log, runs=ours['runs'], next_time=None)
            self._record(entry, parsed, recorded, runs=ours['runs'], next_time=None, finished=True, said=said)
            return entry
        due = self._schedule_slot(ours, policy, slots, next_time, jittered=decided.resume is None)
        meta[keys.META_KEY] = ours
        entry.commands += self.meta_writes(parsed, meta)
        if due is None:
            self._retire_exhausted(entry, parsed)
        else:
            entry.commands.append(('ZADD', keys.SCHEDULED_JOBS_KEY, format_score(due), parsed.member))
        self._record_slots(entry, parsed, log, runs=ours['runs'], next_time=due)
        self._record(entry, parsed, recorded, runs=ours['runs'], next_time=due, finished=due is None, said=said)
        return entry

    def _enqueue_occurrence(self, entry: Entry, parsed: Parsed, meta: Meta, ours: Meta, fire_time: float) -> None:
        occurrence = keys.occurrence_id(parsed.member, round(fire_time * 1000))
        entry.enqueued_id = occurrence
        entry.commands += self._create_occurrence(parsed, occurrence, fire_time)
        self._apply_ttl(entry, occurrence, parsed.raw)
        ours['runs'] = ours.get('runs', 0) + 1
        ours['last_run_id'] = occurrence
        ours['last_run_at'] = self.now
        if meta.get('repeat') is not None:
            meta['repeat'] = meta['repeat'] - 1

    # -- overlap --------------------------------------------------------------------------------------------

    def _plan_overlap(
        self, entry: Entry, parsed: Parsed, meta: Meta, ours: Meta, fire_time: float, previous_status: bytes | None
    ) -> float:
        """The slot at ``fire_time`` under the overlap policy; returns the fire time its record tells of."""
        busy = previous_status in ACTIVE_STATUSES
        policy = overlap.policy_of(ours)
        if policy == overlap.BUFFER_ONE:
            return self._plan_buffer_one(entry, parsed, meta, ours, fire_time, busy)
        if busy and policy == overlap.SKIP:
            entry.outcome = SKIPPED_OVERLAP
            return fire_time
        if busy and policy == overlap.CANCEL_OTHER:
            entry.commands.append(self._replace_previous_run(parsed, meta, ours, fire_time))
        self._enqueue_occurrence(entry, parsed, meta, ours, fire_time)
        return fire_time

    def _plan_buffer_one(
        self, entry: Entry, parsed: Parsed, meta: Meta, ours: Meta, fire_time: float, busy: bool
    ) -> float:
        buffered = overlap.buffered_fire_time(ours)
        if buffered is not None and busy:
            entry.outcome = overlap.SKIPPED_WAITING
            return fire_time
        if buffered is None and not busy:
            self._enqueue_occurrence(entry, parsed, meta, ours, fire_time)
            return fire_time
        recorded = fire_time
        if buffered is None:
            entry.outcome = overlap.BUFFERED
        else:  # its wait ended before the leader saw it: the buffered slot runs now, and this one waits for it
            self._enqueue_occurrence(entry, parsed, meta, ours, buffered)
            recorded = buffered
        ours[overlap.BUFFERED_META] = fire_time
        entry.commands.append(overlap.wait_command(parsed.member, ours['last_run_id']))
        return recorded

    def _replace_previous_run(self, parsed: Parsed, meta: Meta, ours: Meta, fire_time: float) -> tuple[Any, ...]:
        run_id = ours['last_run_id']
        record = ''
        if ours.get('record'):  # the next time too: the record sets the row's next run
            next_time = self._next_time(parsed, meta, after=max(self.now, fire_time))
            queue = parsed.raw[b'origin'].decode(errors='replace')
            record = overlap.canceled_record(parsed.member, ours, queue, run_id, at=self.now, next_time=next_time)
        return overlap.replace_command(self._queue(parsed).key, run_id, record)

    # -- building blocks ------------------------------------------------------------------------------------

    def _queue(self, parsed: Parsed) -> QueueInfo:
        return self.queue_info(parsed.raw[b'origin'].decode(), parsed.meta.get('queue_class_name'))

    def _push(self, queue: QueueInfo, job_id: str, raw: dict[bytes, bytes]) -> list[tuple[Any, ...]]:
        return [('SADD', keys.QUEUES_SET_KEY, queue.key), (_push_command(raw), queue.key, job_id)]

    def _enqueue_existing(self, parsed: Parsed, job_id: str, meta: Meta | None = None) -> list[tuple[Any, ...]]:
        """The writes RQ's ``Queue.enqueue_job`` makes to an existing hash: status, times, push."""
        queue = self._queue(parsed)
        fields: list[Any] = ['status', 'queued', 'enqueued_at', self.enqueued_at]
        if b'timeout' not in parsed.raw and queue.default_timeout is not None:
            fields += ['timeout', queue.default_timeout]
        if meta is not None:
            fields += ['meta', self._dumps_meta(meta)]
        if parsed.compact:  # its template becomes its whole job
            fields = compact.whole_job_fields(parsed.raw, fields, self._dumps_meta(parsed.meta), self.enqueued_at)
        dropped = compact.dropped_fields(parsed.raw, keys.job_key(job_id))
        return [('HSET', keys.job_key(job_id), *fields), *dropped, *self._push(queue, job_id, parsed.raw)]

    def _create_occurrence(self, parsed: Parsed, occurrence: str, fire_time: float) -> list[tuple[Any, ...]]:
        queue = self._queue(parsed)
        policy = retries.of_meta(parsed.ours)  # ValueError for junk: the template goes to the dead letters
        occurrence_key = keys.job_key(occurrence)
        copy: list[tuple[Any, ...]] = []
        # A compact template was read whole (its meta is spread over its fields): the client has it to copy.
        if self.copy_in_redis and not parsed.compact:
            copy = [occurrence_copy.copy_command(keys.job_key(parsed.member), occurrence_key, parsed.raw)]
            mapping: dict[Any, Any] = {}
        else:
            mapping = compact.inherited(parsed.raw, occurrence_copy.NOT_INHERITED)
        user_meta = {k: v for k, v in parsed.meta.items() if k not in keys.SCHEDULING_META_KEYS}
        user_meta[keys.META_KEY] = {'template': parsed.member, 'fire_time': fire_time, **retries.run_meta(*policy)}
        mapping.update(
            {
                **{name.encode(): value for name, value in retries.hash_fields(*policy).items()},
                b'status': 'queued',
                b'created_at': self.enqueued_at,
                b'enqueued_at': self.enqueued_at,
                b'meta': self._dumps_meta(user_meta),
            }
        )
        if b'timeout' not in mapping and b'timeout' not in parsed.raw and queue.default_timeout is not None:
            mapping[b'timeout'] = queue.default_timeout
        flat = [item for pair in mapping.items() for item in pair]
        return [*copy, ('HSET', occurrence_key, *flat), *self._push(queue, occurrence, parsed.raw)]

    @staticmethod
    def _check_plain_meta(parsed: Parsed) -> None:
        """RQ's own enqueue (the path of jobs with dependencies) unpickles meta: it must hold plain data only."""
        unresolved = payloads.foreign_objects(parsed.meta)
        if unresolved:
            names = ', '.join(sorted(set(unresolved)))
            raise PlanningError(f'meta holds {names}, which the scheduler does not unpickle')

    def _dumps_meta(self, meta: dict[str, Any]) -> bytes:
        try:
            return payloads.dumps_meta(meta, self.serializer, plain=self._plain)
        except payloads.PayloadError as exc:
            raise PlanningError(str(exc)) from exc

    def _apply_ttl(self, entry: Entry, job_id: str, raw: dict[bytes, bytes]) -> None:
        ttl = int(raw[b'ttl']) if raw.get(b'ttl') else None
        if ttl and ttl > 0:
            entry.commands.append(('EXPIRE', keys.job_key(job_id), ttl))

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
    ) -> None:
        """Appends the outcome to the run log that the Django side reads back into its rows (``said``: its reason
        and jitter delay, if any).

        Values are absolute (runs so far, next time), so reading a record twice changes nothing. A finished
        schedule also marks its version done, so reconciliation does not bring it back before the row learns it.
        """
        slot = {'job': entry.enqueued_id, 'outcome': entry.outcome, 'fire_time': fire_time, **(said or {})}
        self._append_record(entry, parsed, slot, runs=runs, next_time=next_time, finished=finished)
        ours = parsed.ours
        if finished and ours.get('record') and ours.get('version'):
            entry.commands.append(('HSET', keys.VERSIONS_KEY, parsed.member, keys.done_marker(ours['version'], runs)))

    def _retire_exhausted(self, entry: Entry, parsed: Parsed) -> None:
        reason = 'cron string has no future fire time'
        record = json.dumps({'reason': reason, 'score': parsed.score, 'at': self.now})
        entry.reason = reason
        entry.commands += [
            ('ZREM', keys.SCHEDULED_JOBS_KEY, parsed.member),
            ('HSET', keys.DEAD_LETTERS_KEY, parsed.member, record),
        ]

    def next_time_of_same_id_run(self, parsed: Parsed, meta: dict[str, Any]) -> float | None:
        """For the slow path: decrements ``repeat`` in ``meta`` and returns the next time, None when done."""
        remaining = meta.get('repeat')
        if remaining:
            meta['repeat'] = remaining - 1
        if remaining is not None and meta['repeat'] <= 0:
            return None
        return self._next_time(parsed, meta)

    # -- time -----------------------------------------------------------------------------------------------

    @staticmethod
    def _interval(meta: dict[str, Any]) -> float:
        ours = meta.get(keys.META_KEY) or {}
        interval = float(ours['interval'] if 'interval' in ours else meta['interval'])
        if not interval >= MIN_SECONDS:
            raise PlanningError(f'interval must be at least {MIN_SECONDS} s, got {interval!r}')
        return interval

    def _cron(self, meta: dict[str, Any]) -> tuple[str, str]:
        ours = meta.get(keys.META_KEY) or {}
        if ours.get('kind') == 'cron':
            return meta['cron_string'], ours.get('timezone') or self.default_timezone
        # rq-scheduler stores crontab-package grammar and evaluates it in the process's local time zone.
        return cron.from_crontab_syntax(meta['cron_string']), self.default_timezone

    def _is_misfire(self, ours: dict[str, Any], fire_time: float) -> bool:
        """Whether a run is later than its misfire grace (no grace: never).

        A first run that was already due when its template was written (``late_from``) missed nothing before
        then: it is late only from that moment.
        """
        grace = ours.get('misfire_grace')
        late_since = max(fire_time, ours.get('late_from') or fire_time)
        return grace is not None and self.now - late_since > grace

    def _next_time(self, parsed: Parsed, meta: dict[str, Any], after: float | None = None) -> float | None:
        after = self.now if after is None else after
        if meta.get('cron_string'):
            expression, zone = self._cron(meta)
            upcoming = cron.next_fire_time(expression, utc_datetime(after), zone)
            return upcoming.timestamp() if upcoming else None
        # Drift-free: the next slot is a whole number of intervals after the scheduled time, never "now + interval".
        return scores.next_slot(parsed.score, self._interval(meta), after)
