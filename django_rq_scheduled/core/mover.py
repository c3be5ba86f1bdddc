"""The mover: reads due jobs in batches, has ``moves`` plan them, and applies each batch in one fenced Lua call.

With a backlog, the next batch is read ahead and planned while Redis applies the previous one. Scripts that Redis
lost (a restart) are loaded again; jobs with dependencies go through RQ's own enqueue under WATCH.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from redis import Redis
from rq.job import Job
from rq.serializers import Serializer
from rq.utils import utcformat

from . import buffers, keys, move_script, occurrence_copy, overlap, plan_ahead, retries, scripts
from .clock import ServerClock
from .due_reads import READ_DUE_KEYS, DueRead, DueReader, whole_compact_templates
from .errors import LeadershipLost
from .jobs import Refusal
from .lease import Lease
from .limits import VETTED_FOR, VETTED_PAYLOADS
from .moves import DEAD, ENQUEUED, Entry, Parsed, Planner
from .observer import SILENT, EnqueuedJob, Observer, kind_of
from .occurrence_copy import PLANNING_FIELDS
from .pending import PendingReplies
from .policy_moves import FINISHED, POSTPONED
from .queues import Queues
from .scores import guard_score

if TYPE_CHECKING:
    from .fast_moves import FastPass

logger = logging.getLogger(__name__)

Pairs = list[tuple[Any, Any]]
Fields = list[dict[bytes, bytes]]


@dataclass
class MoveReport:
    """What one pass over the due jobs did."""

    enqueued: list[str] = field(default_factory=list)
    dead: list[str | bytes] = field(default_factory=list)
    skipped: list[str | bytes] = field(default_factory=list)
    buffered: list[str | bytes] = field(default_factory=list)
    batches: int = 0
    paused: int = 0
    """Due entries of paused queues the pass stepped over (left in the schedule, due); -1: every queue is paused."""
    pause_problem: str = ''
    """Why the pause key cannot be read (it then pauses nothing), or ''."""
    read_at: float | None = None
    """The instant the pass read the due jobs at: the due entries it stepped over are due up to there."""
    as_moved: Callable[[list[str]], Any] | None = None
    """Called with the ids of each batch the fast path moved, while Redis moves the next (``enqueue_jobs``)."""

    @property
    def count(self) -> int:
        return len(self.enqueued) + len(self.dead) + len(self.skipped) + len(self.buffered)


@dataclass
class Batch:
    """One batch of due jobs, planned and not yet applied."""

    planner: Planner
    decoded: list[Parsed | Entry]
    entries: list[Entry]

    @functools.cached_property
    def fast_entries(self) -> list[Entry]:
        """The entries the move script applies; the others go through RQ's own enqueue."""
        return [entry for entry in self.entries if not entry.slow_path]


class EnqueuedJobs:
    """The jobs a batch's move script enqueued, worked out only when an observer iterates them."""

    def __init__(self, batch: Batch, move_reply: list[Any]) -> None:
        self.batch = batch
        self.move_reply = move_reply

    def __iter__(self) -> Iterator[EnqueuedJob]:
        results = iter(self.move_reply)
        for item, entry in zip(self.batch.decoded, self.batch.entries):
            if entry.slow_path:
                continue
            applied = next(results, None) == 1
            if applied and entry.outcome == ENQUEUED and entry.enqueued_id and isinstance(item, Parsed):
                yield enqueued_job(item)


def enqueued_job(parsed: Parsed) -> EnqueuedJob:
    return EnqueuedJob(parsed.raw[b'origin'].decode(errors='replace'), kind_of(parsed.meta), parsed.score)


def member_text(member: str | bytes) -> str | bytes:
    """A schedule member as text; one that is not UTF-8 (written by someone else) stays bytes, to be dead-lettered."""
    if isinstance(member, str):
        return member
    try:
        return member.decode()
    except UnicodeDecodeError:
        return member


class Mover:
    """Moves the due jobs of one Redis server: fenced by ``lease`` for the loop, unfenced for an API call."""

    def __init__(
        self,
        connection: Redis,
        job_class: type[Job],
        serializer: Serializer,
        *,
        lease: Lease,
        clock: ServerClock,
        queues: Queues,
        batch_size: int,
        timezone: str,
        refusal: Refusal | None,
        stop: threading.Event,
    ) -> None:
        self.connection = connection
        self.job_class = job_class
        self.serializer = serializer
        self.lease = lease
        self.clock = clock
        self.queues = queues
        self.batch_size = batch_size
        self.timezone = timezone
        self.refusal = refusal
        self.stop = stop
        self.observer: Observer = SILENT
        self._move_script = connection.register_script(occurrence_copy.MOVE)
        self._read_due_script = connection.register_script(scripts.READ_DUE)
        self.reader = DueReader(self._read_due_script, job_class.redis_job_namespace_prefix, PLANNING_FIELDS)
        self._scripts_loaded_on: redis.ConnectionPool | None = None
        self._scripts_missing = False
        self._copies: bool | None = None  # whether the move script can copy templates (``occurrence_copy``)
        self._vetted_by: tuple[Any, ...] = ()
        self._vetted_payloads: dict[tuple[Any, ...], str | None] = {}
        self._waits = False  # whether this pass's reads saw a buffered occurrence waiting (overlap buffer_one)
        self.fast: FastPass | None = None
        """Moves the marked one-offs of our API first, whole in Redis (``fast_moves``); None: none are trusted."""
        self.prepared: plan_ahead.Prepared | None = None
        """Occurrences of a coming instant planned ahead (``plan_ahead``): the first pass at that instant sends them."""

    def move_due_jobs(self, report: MoveReport | None = None) -> MoveReport:
        """Moves due jobs in batches while this instance leads; each batch is one fenced, atomic Lua call.

        With a backlog of more than one batch, the next batch is read ahead and planned while Redis applies the
        previous one: the move of batch k and the read of batch k + 2 go out in one write, and batch k + 1, read
        by the write before, is planned while Redis works. Reading ahead is safe because every entry of a move
        is guarded on the exact score it was read with: an entry read twice, or changed since, is left alone.
        ``report``, if given, is filled and returned (its ``as_moved`` is told each fast batch).
        """
        report = MoveReport() if report is None else report
        self._waits = False
        self._apply_prepared(report)
        if self.fast is not None:
            self.fast.run(report)
        self._move_due_batches(report)
        if self._waits:  # after the due moves, which see an ended wait as well (and would not enqueue twice)
            self.release_buffered(self.clock.now(), report)
        return report

    def prepare(self, at: float, until: float | None = None) -> int:
        """Reads, plans and packs ahead the occurrences due at ``at`` (``plan_ahead``), for the first pass from ``at``
        on to send, going on with the plan begun for ``at`` if any, until ``until`` if given; returns how many are
        planned. Entries it cannot plan safely this early are left for that pass."""
        begun = self.prepared if self.prepared is not None and self.prepared.at == at else None
        self.prepared = None
        self.prepared = plan_ahead.prepare(self, at, begun, until=until)
        return self.prepared.entries

    def _apply_prepared(self, report: MoveReport) -> None:
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            return
        now = self.clock.now()
        if prepared.applies_at(now, self.lease.token):
            plan_ahead.send(self, prepared, now, report)
        elif now < prepared.at:
            self.prepared = prepared  # woken early (a producer's job): it waits for its instant

    def _move_due_batches(self, report: MoveReport) -> None:
        now = report.read_at = self.clock.now()
        pairs, fields = self._take(self.reader.read(now, 0, 2 * self.batch_size), report)
        current = self.plan_batch(pairs[: self.batch_size], fields[: self.batch_size], now)
        ahead = (pairs[self.batch_size :], fields[self.batch_size :], now)
        while current.entries:
            if not ahead[0] or self.stop.is_set():
                self.apply_batch(current, report, fenced=True)
                return
            # Entries of paused queues stay where they are: the next read starts after those stepped over so far.
            offset = self.batch_size + max(report.paused, 0)
            read_at = self.clock.now()
            pending = self._send_move_and_read(current, offset=offset, now=read_at)
            try:
                upcoming = self.plan_batch(*ahead)
            finally:
                move_reply, read_reply = self._replies(pending, current, read_at, offset)
            # A batch that moved nothing (entries that cannot even be dead-lettered, or all changed by producers
            # meanwhile) would be met again at once: leave the rest to the next tick instead of spinning.
            if not self._finish_batch(current, move_reply, report, fenced=True):
                return
            pairs, fields = self._take(self.reader.finish(read_reply, read_at, offset, self.batch_size), report)
            current, ahead = upcoming, (pairs, fields, read_at)
            self.lease.renew_if_due()

    def move_members(
        self, pairs: Pairs, *, fenced: bool, now: float | None = None, fields: Fields | None = None
    ) -> MoveReport:
        """Moves these (member, score) pairs, as read; the fields their moves are planned from are read if not given."""
        report = MoveReport()
        now = self.clock.now() if now is None else now
        self.apply_batch(self.plan_batch(pairs, fields, now), report, fenced=fenced)
        return report

    def release_buffered(self, now: float, report: MoveReport) -> None:
        """Enqueues the buffered occurrences (overlap buffer_one) whose wait is over; a wait whose template is gone
        or no longer buffering is forgotten."""
        templates = [member_text(template) for template in buffers.ended_waits(self.connection)]
        if not templates:
            return
        planner = self.planner(now)
        entries = []
        for template, (score, raw) in zip(templates, buffers.read_templates(self.connection, templates)):
            parsed = None
            if isinstance(template, str) and score is not None and not isinstance(raw, Exception):
                parsed = planner.parse(template, score, raw)
            # A job no move could plan is left to its own time (and the dead letters then); its wait is forgotten.
            entries.append(
                buffers.plan_release(planner, parsed) if isinstance(parsed, Parsed) else buffers.forget_wait(template)
            )
        self._apply_entries(planner, entries, report, fenced=True)

    # -- reading and planning -------------------------------------------------------------------------------

    def read_due(self, now: float, count: int | None = None) -> tuple[Pairs, Fields]:
        """Due members with their scores, and the fields their moves are planned from, those of paused queues
        left out: one round trip, more only behind a large paused backlog."""
        return self._take(self.reader.read(now, 0, count or self.batch_size), MoveReport())

    def _take(self, read: DueRead, report: MoveReport) -> tuple[Pairs, Fields]:
        """The entries of a read; what it saw besides goes into ``report`` (the pause) and ``_waits``."""
        self._waits = self._waits or read.waits
        report.pause_problem = read.problem
        if read.stepped_over < 0 or report.paused < 0:
            report.paused = -1
        else:
            report.paused += read.stepped_over
        return read.pairs, read.fields

    def planner(self, now: float, enqueued_at: str | None = None) -> Planner:
        return Planner(
            now=now,
            copy_in_redis=bool(self._copies),
            vetted=self._vetted(),
            enqueued_at=enqueued_at or utcformat(datetime.fromtimestamp(now, tz=timezone.utc)),
            serializer=self.serializer,
            queue_info=self.queues.info,
            default_timezone=self.timezone,
            callable_refusal=self.refusal,
        )

    def _vetted(self) -> dict[tuple[Any, ...], str | None]:
        """The payloads vetted so far, forgotten when the rule changes (``callable_allowed``) or they grow many."""
        rule = (self.refusal, self.serializer, int(time.monotonic() // VETTED_FOR))
        if self._vetted_by != rule or len(self._vetted_payloads) > VETTED_PAYLOADS:
            self._vetted_by, self._vetted_payloads = rule, {}
        return self._vetted_payloads

    def release_due_retries(self) -> float | None:
        """Moves RQ's due delayed retries back to their queues (``retries.release_due``), each vetted by the allow-list
        if one is set, as every job this scheduler enqueues; the next one's due time."""
        now = self.clock.now()
        vet = None if self.refusal is None else self.planner(now).payload_refusal
        return retries.release_due(self.connection, self.lease, now=now, vet=vet)

    def plan_batch(self, pairs: Pairs, fields: Fields | None, now: float, *, enqueued_at: str | None = None) -> Batch:
        """Decodes the due members, reads what their moves also need (whole templates, previous runs), plans."""
        planner = self.planner(now, enqueued_at)
        members = [(member_text(m), float(s)) for m, s in pairs]
        raws = fields if fields is not None else self._fetch_planning_fields([member for member, _ in members])
        raws = whole_compact_templates(self.connection, [member for member, _ in members], raws)
        decoded = [planner.parse(member, score, raw) for (member, score), raw in zip(members, raws)]
        if self._copies is None and any(isinstance(p, Parsed) and p.is_our_template for p in decoded):
            self._copies = planner.copy_in_redis = occurrence_copy.supported(self.connection)
        self._load_whole_hashes([p for p in decoded if isinstance(p, Parsed) and p.needs_whole_hash(planner)])
        statuses = self._previous_run_statuses([p for p in decoded if isinstance(p, Parsed)])
        entries = [
            item if isinstance(item, Entry) else planner.plan(item, statuses.get(item.previous_run_to_check or ''))
            for item in decoded
        ]
        return Batch(planner, decoded, entries)

    def _fetch_planning_fields(self, members: list[str | bytes]) -> Fields:
        """The few hash fields a move is planned from (whole hashes cost more to read than to move)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hmget(keys.job_key(member), PLANNING_FIELDS)
            replies = pipe.execute()
        return [{name: value for name, value in zip(PLANNING_FIELDS, reply) if value is not None} for reply in replies]

    def _load_whole_hashes(self, parsed: list[Parsed]) -> None:
        """Templates of ours are copied into each occurrence, and RQ's own enqueue needs the whole job."""
        if not parsed:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for item in parsed:
                pipe.hgetall(keys.job_key(item.member))
            for item, raw in zip(parsed, pipe.execute()):
                item.raw = raw or item.raw

    def _previous_run_statuses(self, parsed: list[Parsed]) -> dict[str, bytes | None]:
        run_ids = [p.previous_run_to_check for p in parsed if p.previous_run_to_check]
        if not run_ids:
            return {}
        with self.connection.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hget(keys.job_key(run_id), 'status')
            return dict(zip(run_ids, pipe.execute()))

    # -- applying -------------------------------------------------------------------------------------------

    def apply_batch(self, batch: Batch, report: MoveReport, *, fenced: bool) -> None:
        fast = batch.fast_entries
        results = self._call_move(self._move_argv(batch.planner, fast, fenced=fenced)) if fast else []
        self._finish_batch(batch, results, report, fenced=fenced)

    def _finish_batch(self, batch: Batch, move_reply: Any, report: MoveReport, *, fenced: bool) -> bool:
        """Reports the move's outcome per entry, then takes the jobs RQ must enqueue itself; True if any moved."""
        if isinstance(move_reply, Exception):
            self._raise_move_error(move_reply)
        before = report.count
        self._handle_results(batch.planner, batch.fast_entries, move_reply, report, fenced=fenced)
        self.observer.jobs_enqueued(EnqueuedJobs(batch, move_reply), self.clock.now())
        for item, entry in zip(batch.decoded, batch.entries):
            if entry.slow_path and isinstance(item, Parsed):
                self._move_slow_path(batch.planner, item, report, fenced=fenced)
        report.batches += 1
        return report.count > before

    def _send_move_and_read(self, batch: Batch, *, offset: int, now: float) -> PendingReplies:
        """Sends the move of ``batch`` and the read of the due jobs after the next ``offset``, without waiting."""
        move = self._move_argv(batch.planner, batch.fast_entries, fenced=True)
        read = self.reader.args(now, offset, self.batch_size)
        self._load_scripts_once()
        commands = [
            ('EVALSHA', self._move_script.sha, len(move_script.MOVE_KEYS), *move_script.MOVE_KEYS, *move),
            ('EVALSHA', self._read_due_script.sha, len(READ_DUE_KEYS), *READ_DUE_KEYS, *read),
        ]
        return PendingReplies(self.connection.connection_pool, commands)

    def _replies(self, pending: PendingReplies, batch: Batch, read_at: float, offset: int) -> tuple[Any, Any]:
        """The replies of a pipelined move and read; either one is redone if Redis had lost its script."""
        move_reply, read_reply = pending.wait()
        if isinstance(move_reply, redis.exceptions.NoScriptError):
            self._scripts_missing = True
            move_reply = self._call_move(self._move_argv(batch.planner, batch.fast_entries, fenced=True))
        if isinstance(read_reply, redis.exceptions.NoScriptError):
            self._scripts_missing = True
            read_reply = self._read_due_script(
                keys=READ_DUE_KEYS, args=self.reader.args(read_at, offset, self.batch_size)
            )
        if isinstance(read_reply, Exception):
            raise read_reply
        return move_reply, read_reply

    def _load_scripts_once(self) -> None:
        # Pipelined calls bypass redis-py's NOSCRIPT fallback: load the scripts up front (the fast path's too). A
        # Redis restart flushes them; the call is then redone the slow way and the next batch loads them again.
        if self._scripts_loaded_on is not self.connection.connection_pool or self._scripts_missing:
            fast = () if self.fast is None else (self.fast.script,)
            for script in (self._move_script, self._read_due_script, *fast):
                script.sha = self.connection.script_load(script.script)
            self._scripts_loaded_on = self.connection.connection_pool
            self._scripts_missing = False

    def _move_argv(self, planner: Planner, entries: list[Entry], *, fenced: bool) -> list[Any]:
        token = self.lease.token if fenced else ''
        return move_script.argv(token, planner.enqueued_at, self.job_class.redis_job_namespace_prefix, entries)

    def _call_move(self, argv: list[Any]) -> list[Any]:
        try:
            results: list[Any] = self._move_script(keys=move_script.MOVE_KEYS, args=argv)
        except redis.ResponseError as exc:
            self._raise_move_error(exc)
        return results

    def _raise_move_error(self, exc: Exception) -> NoReturn:
        if 'NOTLEADER' in str(exc):
            self.lease.lose('the lease changed hands before a batch was applied')
            raise LeadershipLost(str(exc)) from exc
        raise exc

    def _apply_entries(self, planner: Planner, entries: list[Entry], report: MoveReport, *, fenced: bool) -> None:
        results = self._call_move(self._move_argv(planner, entries, fenced=fenced))
        self._handle_results(planner, entries, results, report, fenced=fenced)

    def _handle_results(
        self, planner: Planner, entries: list[Entry], results: list[Any], report: MoveReport, *, fenced: bool
    ) -> None:
        retry: list[Entry] = []
        for entry, result in zip(entries, results):
            if isinstance(result, Exception):
                raise result
            if isinstance(result, bytes) and entry.outcome == DEAD:
                # Even the dead letters cannot be written (a key of ours holds the wrong type): leave the job
                # where it is, say so, and let the rest of the schedule move.
                logger.error(
                    'Cannot move %r to the dead letters either: %s', entry.member, result.decode(errors='replace')
                )
            elif isinstance(result, bytes):
                reason = result.decode(errors='replace')
                logger.error('Cannot move %s: %s; moving it to the dead letters', entry.member, reason)
                retry.append(planner.dead_letter(entry.member, entry.score, reason))
            elif result == 1:
                _report(entry, report)
        if retry:
            self._apply_entries(planner, retry, report, fenced=fenced)

    def _move_slow_path(self, planner: Planner, parsed: Parsed, report: MoveReport, *, fenced: bool) -> None:
        try:
            self._move_with_dependencies(planner, parsed, report, fenced=fenced)
        except (redis.RedisError, LeadershipLost):
            raise
        except Exception as exc:  # RQ could not read or enqueue the job: it must not block the schedule
            reason = f'cannot enqueue with its dependencies: {exc!r}'
            dead = planner.dead_letter(parsed.member, guard_score(parsed.score), reason)
            self._apply_entries(planner, [dead], report, fenced=fenced)

    def _move_with_dependencies(self, planner: Planner, parsed: Parsed, report: MoveReport, *, fenced: bool) -> None:
        """Jobs with ``depends_on`` go through RQ's own enqueue (it may defer them), guarded by WATCH."""
        job = self.job_class(parsed.member, connection=self.connection, serializer=self.serializer)
        # The planner made sure the meta holds plain data only: RQ unpickles it here. A scheduled job has no result.
        job.restore({name: value for name, value in parsed.raw.items() if name not in (b'result', b'exc_info')})
        queue = self.queues.for_job(job)
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(keys.LOCK_KEY, keys.SCHEDULED_JOBS_KEY, job.key)  # type: ignore[no-untyped-call]
                if fenced and pipe.get(keys.LOCK_KEY) != self.lease.token.encode():
                    self.lease.lose('the lease changed hands')
                    raise LeadershipLost('lease lost')
                if pipe.zscore(keys.SCHEDULED_JOBS_KEY, parsed.member) != parsed.score or not pipe.exists(job.key):
                    return  # cancelled, moved or deleted since it was read: never re-created from our copy
                next_time = planner.next_time_of_same_id_run(parsed, job.meta) if parsed.is_periodic else None
                queue.enqueue_job(job, pipeline=pipe, at_front=bool(job.enqueue_at_front))
                if next_time is None:
                    pipe.zrem(keys.SCHEDULED_JOBS_KEY, parsed.member)
                else:
                    pipe.zadd(keys.SCHEDULED_JOBS_KEY, {parsed.member: next_time})
                pipe.execute()
            except redis.WatchError:
                logger.info('%s changed while being moved; trying again on the next pass', parsed.member)
                return
        report.enqueued.append(parsed.member)
        self.observer.jobs_enqueued([enqueued_job(parsed)], self.clock.now())


def _report(entry: Entry, report: MoveReport) -> None:
    report.enqueued += entry.also_enqueued
    if entry.outcome == POSTPONED:
        return  # its slot waits for its jitter delay: decided later
    if entry.outcome == FINISHED:
        logger.info('%s finished: no slot left in its window', entry.member)
    elif entry.outcome == DEAD:
        logger.error('Moved %s to the dead letters: %s', entry.member, entry.reason)
        report.dead.append(entry.member)
    elif entry.outcome == ENQUEUED and entry.enqueued_id:
        report.enqueued.append(entry.enqueued_id)
    elif entry.outcome == overlap.BUFFERED:
        logger.info('A run of %s waits for the previous one to end', entry.member)
        report.buffered.append(entry.member)
    elif entry.outcome == overlap.RELEASE_DROPPED:
        logger.info('Forgot the buffered run of %s: no schedule of ours buffers it any more', entry.member)
    else:
        logger.info('Skipped a run of %s (%s)', entry.member, entry.outcome)
        report.skipped.append(entry.member)
    if entry.reason and entry.outcome != DEAD:
        logger.warning('Retired %s: %s', entry.member, entry.reason)
