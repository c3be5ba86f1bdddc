"""The rq-scheduler-compatible ``Scheduler``: the API producers call, and the leader-locked enqueue loop.

Knows Redis and RQ, and nothing of the ORM. Redis layout: see ``keys``; atomic writes: see ``scripts``; how a due
job turns into Redis commands: see ``planner``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import redis
from rq.exceptions import NoSuchJobError, TimeoutFormatError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import resolve_serializer
from rq.utils import backend_class, parse_timeout, utcformat

from . import _django, cron, keys, payloads, scripts
from .allowlist import AllowList
from .clock import ServerClock
from .conf import MAX_BATCH_SIZE, MAX_NAME_LENGTH, MAX_SECONDS, is_instance_name
from .planner import (
    DEAD,
    ENQUEUED,
    QUEUES_SET_KEY,
    UNREADABLE,
    Entry,
    Parsed,
    Planner,
    QueueInfo,
    format_score,
    guard_score,
)

logger = logging.getLogger(__name__)

RESERVED_KWARGS = (
    'timeout',
    'job_id',
    'job_ttl',
    'job_result_ttl',
    'job_description',
    'depends_on',
    'meta',
    'queue_name',
    'on_success',
    'on_failure',
    'at_front',
)
OVERLAP_POLICIES = ('allow', 'skip')
_UTC = timezone.utc
PLANNING_FIELDS = (
    b'origin', b'meta', b'data', b'enqueue_at_front', b'ttl', b'timeout', b'status',
    b'dependency_id', b'dependency_ids',
)  # fmt: skip
FROM_SETTINGS = object()
"""Default of ``callable_allowed``: the project's ALLOWED_CALLABLES inside Django, no restriction outside."""
REDIS_UNREACHABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)
# Out of memory, or a replica after a failover: Redis refuses writes for a while. Waited out like an outage, never
# a reason to dead-letter a job.
REDIS_WRITES_REFUSED_ERRORS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
REDIS_OUTAGE_ERRORS = REDIS_UNREACHABLE_ERRORS + REDIS_WRITES_REFUSED_ERRORS


class LeadershipLost(Exception):
    """The lease is no longer ours: another scheduler process leads now."""


@dataclass
class MoveReport:
    """What one pass over the due jobs did."""

    enqueued: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    batches: int = 0


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


class PendingReplies:
    """Commands written to one connection of the pool, their replies not read yet: the caller works meanwhile."""

    def __init__(self, pool: redis.ConnectionPool, commands: list[tuple[Any, ...]]) -> None:
        self.pool = pool
        self.count = len(commands)
        try:
            self.connection = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants the command name
            self.connection = pool.get_connection('EVALSHA')
        try:
            self.connection.send_packed_command(self.connection.pack_commands(commands))
        except BaseException:
            self._discard()
            raise

    def wait(self) -> list[Any]:
        """Every reply, in order; an error reply is returned as its exception, not raised."""
        replies: list[Any] = []
        try:
            for _ in range(self.count):
                try:
                    replies.append(self.connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self._discard()
            raise
        self.pool.release(self.connection)
        return replies

    def _discard(self) -> None:
        # Replies may still be on their way: the connection cannot be reused.
        self.connection.disconnect()
        self.pool.release(self.connection)


def _member_text(member: str | bytes) -> str | bytes:
    """A schedule member as text; one that is not UTF-8 (written by someone else) stays bytes, to be dead-lettered."""
    if isinstance(member, str):
        return member
    try:
        return member.decode()
    except UnicodeDecodeError:
        return member


def to_score(value: datetime, argument: str = 'scheduled_time') -> float:
    """Epoch seconds of a datetime, truncated to the millisecond; a naive datetime means UTC, as in rq-scheduler.

    Truncated, not rounded: a job scheduled for now is due now, never half a millisecond later.
    """
    if not isinstance(value, datetime):
        raise ValueError(f'{argument}: expected a datetime, got {type(value).__name__} {value!r}')
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return floor_ms(value.timestamp())


def floor_ms(seconds: float) -> float:
    # Rounded to a microsecond first: 1.001 * 1000 is 1000.9999999999999 in floating point.
    return math.floor(round(seconds * 1000, 3)) / 1000


def from_score(score: float) -> datetime:
    """A naive UTC datetime, as rq-scheduler returns them; a score beyond what a datetime holds gives its limit."""
    try:
        return datetime.fromtimestamp(score, tz=timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return datetime.max if score > 0 else datetime.min


def _is_job_id(member: str | bytes) -> bool:
    return isinstance(member, str) and keys.JOB_ID_PATTERN.fullmatch(member) is not None


def _positive_seconds(value: Any, argument: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'{argument}: expected a number of seconds or a timedelta, got {value!r}')
    if value <= 0:
        raise ValueError(f'{argument}: must be greater than zero, got {value!r}')
    if round(float(value), 3) <= 0:
        raise ValueError(f'{argument}: must be at least 0.001 (millisecond precision), got {value!r}')
    return round(float(value), 3)


def _validated_name(name: Any) -> str:
    if name is None:
        return uuid4().hex
    if not isinstance(name, str) or not is_instance_name(name):
        raise ValueError(f'name: expected 1 to {MAX_NAME_LENGTH} printable characters, got {name!r}')
    return name


def _validated_repeat(repeat: Any) -> int | None:
    if repeat is None:
        return None
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat <= 0:
        raise ValueError(f'repeat: must be a whole number of runs, at least 1 (or None for ever), got {repeat!r}')
    return repeat


def _validated_ttl(value: Any, argument: str, *, allow_zero: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f'{argument}: expected seconds or a string like "10m", got {value!r}')
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f'{argument}: expected a whole number of seconds, got {value!r}')
    try:
        seconds = parse_timeout(value)
    except (TypeError, ValueError, AssertionError, TimeoutFormatError) as exc:
        raise ValueError(f'{argument}: expected seconds or a string like "10m", got {value!r}') from exc
    if seconds is None or seconds < -1 or (seconds == 0 and not allow_zero):
        raise ValueError(f'{argument}: must be positive (or -1 for no limit), got {value!r}')
    return seconds


class Scheduler:
    """Schedules RQ jobs in rq-scheduler's Redis layout and moves them onto their queues when they are due.

    Same constructor, methods and reserved keyword arguments as ``rq_scheduler.Scheduler`` 0.14. Differences are
    fixes: times keep millisecond precision, periodic jobs created here enqueue a fresh job per occurrence,
    intervals do not drift, cron strings follow a time zone across DST, and the loop holds a fenced leader lease.
    """

    redis_scheduler_namespace_prefix = keys.INSTANCE_KEY_PREFIX
    scheduler_key = 'rq:scheduler'
    scheduler_lock_key = keys.LOCK_KEY
    scheduled_jobs_key = keys.SCHEDULED_JOBS_KEY
    queue_class = Queue
    job_class = Job

    # rq-scheduler lets subclasses rename its keys. Ours are read by the Lua moves, sync, the admin and rq-scheduler
    # itself: a renamed copy would be a second schedule that half the system never sees, so they are fixed.
    FIXED_KEYS = {
        'redis_scheduler_namespace_prefix': keys.INSTANCE_KEY_PREFIX,
        'scheduler_lock_key': keys.LOCK_KEY,
        'scheduled_jobs_key': keys.SCHEDULED_JOBS_KEY,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in cls.FIXED_KEYS.items():
            if getattr(cls, name) != value:
                raise TypeError(f'{cls.__name__}.{name}: the Redis keys of the schedule are fixed ({value!r})')

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.FIXED_KEYS and value != self.FIXED_KEYS[name]:
            raise AttributeError(f'{name}: the Redis keys of the schedule are fixed ({self.FIXED_KEYS[name]!r})')
        super().__setattr__(name, value)

    def __init__(
        self,
        queue_name: str = 'default',
        queue: Queue | None = None,
        interval: float = 60,
        connection: redis.Redis | None = None,
        job_class: type[Job] | str | None = None,
        queue_class: type[Queue] | str | None = None,
        name: str | None = None,
        serializer: Any = None,
        *,
        lease_ttl: float = 5.0,
        batch_size: int = 500,
        timezone: str | None = None,
        callable_allowed: Callable[[str], bool] | object | None = FROM_SETTINGS,
    ) -> None:
        if queue is not None:
            queue_name = queue.name
            connection = connection or queue.connection
            serializer = serializer or queue.serializer
        self.queue_name = self._validated_queue_name(queue_name, 'queue_name')
        self._queue = queue
        self._interval = _positive_seconds(interval, 'interval')
        self.lease_ttl = _positive_seconds(lease_ttl, 'lease_ttl')
        if self.lease_ttl > MAX_SECONDS:
            raise ValueError(f'lease_ttl: must be at most {MAX_SECONDS:,} seconds, got {lease_ttl!r}')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(
                f'batch_size: must be a whole number of jobs from 1 to {MAX_BATCH_SIZE:,}, got {batch_size!r}'
            )
        self.batch_size = batch_size
        self.connection = connection if connection is not None else self._default_connection(self.queue_name)
        self.job_class = backend_class(self, 'job_class', override=job_class)
        if self.job_class.redis_job_namespace_prefix != keys.JOB_KEY_PREFIX:
            raise ValueError(f"job_class: its job keys must start with {keys.JOB_KEY_PREFIX!r}, as RQ's do")
        self.queue_class_name = queue_class if isinstance(queue_class, str) else None
        self.queue_class = backend_class(self, 'queue_class', override=queue_class)
        self.serializer = resolve_serializer(serializer)
        self.name = _validated_name(name)
        self.timezone = cron.get_zone(timezone or _django.default_timezone() or 'UTC').key
        self.callable_allowed = _django.allow_list() if callable_allowed is FROM_SETTINGS else callable_allowed
        # Called by the leader after each pass over the due jobs (the Django side syncs feedback here).
        self.tick_hooks: list[Callable[[Scheduler], Any]] = []
        self._failing_hooks: set[Any] = set()
        self._token = keys.lease_token(self.name, uuid4().hex)
        self._is_leader = False
        self._lease_renewed_at = 0.0
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._queues: dict[tuple[str, str | None], Queue] = {}
        self.clock = ServerClock(self.connection)
        self._registered = False
        self._stopped_by: int | None = None
        self._move_script = self.connection.register_script(scripts.MOVE)
        self._read_due_script = self.connection.register_script(scripts.READ_DUE)
        self._scripts_loaded_on: redis.ConnectionPool | None = None
        self._scripts_missing = False
        self._arm_script = self.connection.register_script(scripts.ARM_WAKEUP)
        self._renew_script = self.connection.register_script(scripts.RENEW_LEASE)
        self._release_script = self.connection.register_script(scripts.RELEASE_LEASE)

    # -- construction helpers -------------------------------------------------------------------------------

    @staticmethod
    def _default_connection(queue_name: str) -> redis.Redis:
        known = _django.queue_names()
        if known is None:
            raise ValueError('connection: argument is required outside a configured Django project')
        if queue_name not in known:
            raise ValueError(f'queue_name: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(known)}')
        return _django.connection_for(queue_name)

    @staticmethod
    def _validated_queue_name(queue_name: Any, argument: str) -> str:
        if not isinstance(queue_name, str) or not queue_name.strip():
            raise ValueError(f'{argument}: expected a queue name, got {queue_name!r}')
        known = _django.queue_names()
        if known is not None and queue_name not in known:
            raise ValueError(f'{argument}: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(known)}')
        return queue_name

    @property
    def key(self) -> str:
        return keys.instance_key(self.name)

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    # -- creating jobs --------------------------------------------------------------------------------------

    def _create_job(
        self,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        commit: bool = True,
        result_ttl: Any = None,
        ttl: Any = None,
        id: str | None = None,
        description: str | None = None,
        queue_name: str | None = None,
        timeout: Any = None,
        meta: dict[str, Any] | None = None,
        depends_on: Any = None,
        on_success: Any = None,
        on_failure: Any = None,
        at_front: bool = False,
    ) -> Job:
        """Builds the job hash (status ``scheduled``) of a scheduled job; saves it only if ``commit``."""
        if args is not None and not isinstance(args, (list, tuple)):
            raise ValueError(f'args: expected a list or tuple, got {type(args).__name__}')
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f'kwargs: expected a dict, got {type(kwargs).__name__}')
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f'meta: expected a dict, got {type(meta).__name__}')
        if description is not None and not isinstance(description, str):
            raise ValueError(f'description: expected a string, got {type(description).__name__}')
        if id is not None:
            keys.validate_job_id(id, 'id')
        origin = self._validated_queue_name(queue_name or self.queue_name, 'queue_name')
        if isinstance(func, str) and '.' not in func:
            raise ValueError(f'func: expected a dotted path like "myapp.tasks.send", got {func!r}')
        try:
            job = self.job_class.create(
                func,
                args=tuple(args) if args is not None else None,  # a tuple, as RQ and rq-scheduler store them
                kwargs=kwargs,
                connection=self.connection,
                result_ttl=_validated_ttl(result_ttl, 'result_ttl', allow_zero=True),
                ttl=_validated_ttl(ttl, 'ttl', allow_zero=False),
                id=id,
                description=description,
                timeout=_validated_ttl(timeout, 'timeout', allow_zero=False),
                meta=dict(meta) if meta else {},  # a copy: the caller's dict is never changed
                depends_on=depends_on,
                on_success=on_success,
                on_failure=on_failure,
                status=JobStatus.SCHEDULED,
                serializer=self.serializer,
            )
        except (TypeError, AttributeError) as exc:
            raise ValueError(f'func: {exc}') from exc
        self._check_callable(job)
        job.origin = origin
        if self.queue_class_name:
            job.meta['queue_class_name'] = self.queue_class_name
        if at_front:
            job.enqueue_at_front = True
        if commit:
            job.save()
        return job

    @property
    def _callable_refusal(self) -> Callable[[str], str | None] | None:
        """Why a callable path may not run (None: it may), or None when nothing is restricted."""
        rule = self.callable_allowed
        if rule is None or (isinstance(rule, AllowList) and not rule.restricts):
            return None
        if isinstance(rule, AllowList):
            return rule.refusal
        return lambda path: None if rule(path) else f'{path} is not allowed'

    def _check_callable(self, job: Job) -> None:
        """The loop's own check, at call time: a refused job raises here instead of becoming a dead letter."""
        refusal = self._callable_refusal
        if refusal is None:
            return
        if job.instance is not None:
            raise ValueError(
                f'func: a bound method of {type(job.instance).__name__} cannot be checked against '
                'ALLOWED_CALLABLES; schedule a module-level function'
            )
        reason = refusal(job.func_name)
        if reason:
            raise ValueError(f'func: {reason}')

    def _save_and_schedule(self, job: Job, score: float) -> None:
        """Writes the job hash and its schedule entry in one transaction, waking the loop if it is earlier."""
        with self.connection.pipeline() as pipe:
            job.save(pipeline=pipe)
            pipe.eval(scripts.SCHEDULE, 3, *self._wakeup_keys(), job.id, format_score(score), '')
            pipe.execute()

    def _wakeup_keys(self) -> tuple[str, str, str]:
        return self.scheduled_jobs_key, keys.NEXT_WAKEUP_KEY, keys.WAKEUP_KEY

    @staticmethod
    def _pop_reserved(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {name: kwargs.pop(name, None) for name in RESERVED_KWARGS}

    def _create_from_reserved(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
        options = self._pop_reserved(kwargs)
        return self._create_job(
            func,
            args=args,
            kwargs=kwargs,
            commit=False,
            timeout=options['timeout'],
            id=options['job_id'],
            ttl=options['job_ttl'],
            result_ttl=options['job_result_ttl'],
            description=options['job_description'],
            depends_on=options['depends_on'],
            meta=options['meta'],
            queue_name=options['queue_name'],
            on_success=options['on_success'],
            on_failure=options['on_failure'],
            at_front=bool(options['at_front']),
        )

    def enqueue_at(self, scheduled_time: datetime, func: Any, *args: Any, **kwargs: Any) -> Job:
        """Schedules ``func(*args, **kwargs)`` to be enqueued at ``scheduled_time`` (naive means UTC).

        Reserved keyword arguments, as in rq-scheduler: timeout, job_id, job_ttl, job_result_ttl,
        job_description, depends_on, meta, queue_name, on_success, on_failure, at_front.
        """
        score = to_score(scheduled_time, 'scheduled_time')
        job = self._create_from_reserved(func, args, kwargs)
        self._save_and_schedule(job, score)
        return job

    def enqueue_in(self, time_delta: timedelta, func: Any, *args: Any, **kwargs: Any) -> Job:
        """Schedules ``func(*args, **kwargs)`` to be enqueued after ``time_delta``."""
        if not isinstance(time_delta, timedelta):
            raise ValueError(f'time_delta: expected a timedelta, got {type(time_delta).__name__} {time_delta!r}')
        job = self._create_from_reserved(func, args, kwargs)
        self._save_and_schedule(job, floor_ms(time.time() + time_delta.total_seconds()))
        return job

    def schedule(
        self,
        scheduled_time: datetime,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        interval: float | timedelta | None = None,
        repeat: int | None = None,
        result_ttl: Any = None,
        ttl: Any = None,
        timeout: Any = None,
        id: str | None = None,
        description: str | None = None,
        queue_name: str | None = None,
        meta: dict[str, Any] | None = None,
        depends_on: Any = None,
        on_success: Any = None,
        on_failure: Any = None,
        at_front: bool | None = None,
        *,
        misfire_grace: float | None = None,
        overlap: str = 'allow',
    ) -> Job:
        """Schedules a job at ``scheduled_time``, then every ``interval`` seconds, ``repeat`` times in total.

        Each occurrence is a fresh RQ job (id ``<id>_at_<epoch ms>``); the next run is the previous scheduled
        time plus ``interval``, so runs do not drift. Without ``interval`` this is a one-off job.
        """
        if repeat is not None and interval is None:
            raise ValueError("repeat: can't repeat a job without an interval")
        score = to_score(scheduled_time, 'scheduled_time')
        options = {
            'args': args, 'kwargs': kwargs, 'result_ttl': result_ttl, 'ttl': ttl, 'id': id,
            'description': description, 'queue_name': queue_name, 'timeout': timeout, 'meta': meta,
            'depends_on': depends_on, 'on_success': on_success, 'on_failure': on_failure, 'at_front': bool(at_front),
        }  # fmt: skip
        if interval is None:
            job = self._create_job(func, commit=False, **options)
            self._save_and_schedule(job, score)
            return job
        period = _positive_seconds(interval, 'interval')
        # rq-scheduler reads the whole-second 'interval'; we read our exact one.
        scheduling = {'interval': max(1, round(period)), keys.META_KEY: {'kind': 'interval', 'interval': period}}
        return self._save_template(func, score, scheduling, repeat, misfire_grace, overlap, options)

    def cron(
        self,
        cron_string: str,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        repeat: int | None = None,
        queue_name: str | None = None,
        result_ttl: Any = None,
        ttl: Any = None,
        id: str | None = None,
        timeout: Any = None,
        description: str | None = None,
        meta: dict[str, Any] | None = None,
        use_local_timezone: bool = False,
        depends_on: Any = None,
        on_success: Any = None,
        on_failure: Any = None,
        at_front: bool = False,
        *,
        timezone: str | None = None,
        misfire_grace: float | None = None,
        overlap: str = 'allow',
    ) -> Job:
        """Schedules a job on a cron string evaluated in ``timezone`` (an IANA name; default: the scheduler's).

        croniter grammar: 5 fields, or 6 with seconds last. Each occurrence is a fresh RQ job. Unlike
        rq-scheduler, ``result_ttl`` defaults to RQ's default (each run keeps its own result).
        """
        zone = cron.get_zone(timezone or self.timezone).key
        first = cron.next_fire_time(cron_string, datetime.now(tz=_UTC), zone)
        if first is None:
            raise ValueError(f'cron_string: {cron_string!r} can never fire again')
        options = {
            'args': args, 'kwargs': kwargs, 'result_ttl': result_ttl, 'ttl': ttl, 'id': id,
            'description': description, 'queue_name': queue_name, 'timeout': timeout, 'meta': meta,
            'depends_on': depends_on, 'on_success': on_success, 'on_failure': on_failure, 'at_front': bool(at_front),
        }  # fmt: skip
        scheduling = {
            'cron_string': cron_string,
            'use_local_timezone': bool(use_local_timezone),
            keys.META_KEY: {'kind': 'cron', 'timezone': zone},
        }
        return self._save_template(func, first.timestamp(), scheduling, repeat, misfire_grace, overlap, options)

    def _save_template(
        self,
        func: Any,
        score: float,
        scheduling: dict[str, Any],
        repeat: Any,
        misfire_grace: Any,
        overlap: Any,
        options: dict[str, Any],
    ) -> Job:
        """Validates, builds and schedules the template of a periodic job: rq-scheduler's meta keys plus ours."""
        repeat = _validated_repeat(repeat)
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(f'overlap: expected one of {OVERLAP_POLICIES}, got {overlap!r}')
        if misfire_grace is not None:
            misfire_grace = _positive_seconds(misfire_grace, 'misfire_grace')
        if options['depends_on'] is not None:
            raise ValueError('depends_on: not supported for periodic jobs (each run would wait on one old job)')
        job = self._create_job(func, commit=False, **options)
        job.meta.update(scheduling)
        job.meta[keys.META_KEY].update({'misfire_grace': misfire_grace, 'overlap': overlap, 'runs': 0})
        if repeat is not None:
            job.meta['repeat'] = repeat
        self._save_and_schedule(job, score)
        return job

    # -- inspecting and changing the schedule ---------------------------------------------------------------

    @staticmethod
    def _job_id(job_or_id: Job | str, argument: str = 'job') -> str:
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        return keys.validate_job_id(job_id, argument)

    def cancel(self, job: Job | str) -> bool:
        """Removes a job from the schedule (and its hash, if it was still only scheduled). True if it was there."""
        return self.cancel_member(self._job_id(job).encode())

    def cancel_member(self, member: bytes) -> bool:
        """``cancel`` of a schedule member or dead letter by its raw bytes, even ones that are no valid job id
        (written by someone else, or not UTF-8): what the status page shows can always be removed."""
        if not isinstance(member, bytes):
            raise ValueError(f'member: expected bytes, got {type(member).__name__}')
        job_key = keys.JOB_KEY_PREFIX.encode() + member
        removed = self.connection.eval(
            scripts.CANCEL, 3, self.scheduled_jobs_key, job_key, keys.DEAD_LETTERS_KEY, member
        )
        return bool(removed)

    def __contains__(self, item: Job | str) -> bool:
        return self.connection.zscore(self.scheduled_jobs_key, self._job_id(item, 'item')) is not None

    def change_execution_time(self, job: Job | str, date_time: datetime) -> None:
        """Moves a scheduled job to ``date_time``, atomically; raises ValueError if it is not scheduled."""
        job_id = self._job_id(job)
        score = to_score(date_time, 'date_time')
        moved = self.connection.eval(scripts.SCHEDULE, 3, *self._wakeup_keys(), job_id, format_score(score), 'XX')
        if not moved:
            raise ValueError('Job not in scheduled jobs queue')

    @staticmethod
    def _until_score(until: Any) -> float | str:
        if until is None:
            return '+inf'
        if isinstance(until, datetime):
            return to_score(until, 'until')
        if isinstance(until, timedelta):
            return round(time.time() + until.total_seconds(), 3)
        if isinstance(until, (int, float)) and not isinstance(until, bool):
            return until
        raise ValueError(f'until: expected a datetime, timedelta or epoch seconds, got {until!r}')

    def count(self, until: Any = None) -> int:
        """How many jobs are scheduled up to ``until`` (datetime, timedelta from now, or epoch seconds)."""
        return self.connection.zcount(self.scheduled_jobs_key, '-inf', self._until_score(until))

    def get_jobs(
        self,
        until: Any = None,
        with_times: bool = False,
        offset: int | None = None,
        length: int | None = None,
    ) -> list[Any]:
        """Scheduled jobs due up to ``until``, earliest first, in two round trips; ``(job, naive UTC time)``
        pairs with ``with_times``. Ids without a job hash are skipped (the loop dead-letters them)."""
        if (offset is None) != (length is None):
            raise ValueError('offset, length: give both or neither')
        page = {} if offset is None else {'start': offset, 'num': length}
        pairs = self.connection.zrangebyscore(
            self.scheduled_jobs_key, '-inf', self._until_score(until), withscores=True, **page
        )
        # Members that name no job (not UTF-8, not a valid id: written by someone else) are left to the loop.
        pairs = [(text, score) for text, score in ((_member_text(m), s) for m, s in pairs) if _is_job_id(text)]
        ids = [member for member, _ in pairs]
        jobs = self.job_class.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        if not with_times:
            return [job for job in jobs if job is not None]
        return [(job, from_score(score)) for job, (_, score) in zip(jobs, pairs) if job is not None]

    def get_jobs_to_queue(self, with_times: bool = False) -> list[Any]:
        return self.get_jobs(self.clock.now(), with_times=with_times)

    def get_queue_for_job(self, job: Job) -> Queue:
        return self._queue_object(job.origin, job.meta.get('queue_class_name'))

    def _queue_object(self, origin: str, queue_class_name: str | None) -> Queue:
        cache_key = (origin, queue_class_name)
        if cache_key not in self._queues:
            self._queues[cache_key] = self._build_queue(origin, queue_class_name)
        return self._queues[cache_key]

    def _build_queue(self, origin: str, queue_class_name: str | None) -> Queue:
        queue_class = self._named_queue_class(queue_class_name) if queue_class_name else self.queue_class
        known = _django.queue_names()
        if known is not None and origin in known:
            kwargs = {'job_class': self.job_class, 'serializer': self.serializer}
            if queue_class_name:
                kwargs['queue_class'] = queue_class
            return _django.queue_for(origin, self.connection, **kwargs)
        return queue_class(origin, connection=self.connection, job_class=self.job_class, serializer=self.serializer)

    @staticmethod
    def _named_queue_class(path: Any) -> type[Queue]:
        """The queue class a job's meta names (rq-scheduler's ``queue_class_name``), if this process has it already.

        The name comes from Redis: importing what it names would run import-time code of the writer's choosing, and
        calling anything but a queue class would run it. Both are refused.
        """
        module_name, _, name = path.rpartition('.') if isinstance(path, str) else ('', '', '')
        queue_class = getattr(sys.modules.get(module_name), name, None)
        if not (isinstance(queue_class, type) and issubclass(queue_class, Queue)):
            raise ValueError(f'queue_class_name: {path!r} is not a queue class this process has imported')
        return queue_class

    def _queue_info(self, origin: str, queue_class_name: str | None) -> QueueInfo:
        queue = self._queue_object(origin, queue_class_name)
        return QueueInfo(key=queue.key, default_timeout=getattr(queue, '_default_timeout', None))

    # -- dead letters ---------------------------------------------------------------------------------------

    def dead_letters(self) -> dict[str, str]:
        """Jobs taken out of the schedule because they could not be moved: job id → JSON with the reason.

        A member that is not UTF-8 (the loop dead-letters those too) appears with ``\\xff`` escapes; remove it with
        ``cancel_member()`` and its raw bytes."""
        raw = self.connection.hgetall(keys.DEAD_LETTERS_KEY)
        return {k.decode('utf-8', 'backslashreplace'): v.decode('utf-8', 'backslashreplace') for k, v in raw.items()}

    def retry_dead_letter(self, job_id: str) -> bool:
        """Puts a dead-lettered job back into the schedule, due now; False (and nothing done) if it was not one.

        ValueError if the callable of the job is refused by the allow-list: it would only be dead-lettered again.
        """
        keys.validate_job_id(job_id, 'job_id')
        self._check_stored_callable(job_id)
        retried = self.connection.eval(
            scripts.RETRY_DEAD_LETTER, 4, *self._wakeup_keys(), keys.DEAD_LETTERS_KEY, job_id, format_score(time.time())
        )
        return bool(retried)

    def _check_stored_callable(self, job_id: str) -> None:
        refusal, data = self._callable_refusal, self.connection.hget(keys.job_key(job_id), 'data')
        if refusal is None or data is None:
            return
        try:
            call = payloads.read_call(data, self.serializer)
        except payloads.PayloadError as exc:
            raise ValueError(f'job_id: the payload of {job_id} cannot be read: {exc}') from exc
        reason = 'a bound method cannot be checked' if call.bound else refusal(call.func_name)
        if reason:
            raise ValueError(f'job_id: {job_id} would not run: {reason}')

    # -- moving due jobs ------------------------------------------------------------------------------------

    def enqueue_job(self, job: Job) -> Job:
        """Enqueues a scheduled job now, as rq-scheduler does, and updates ``job`` in place.

        A due job is moved as the loop would move it. A one-off job not due yet is taken out of the schedule and
        enqueued. A periodic job not due yet gets one extra run now and keeps its pending run at its time.
        Returns the job enqueued (for periodic jobs of ours, the run's own job).
        """
        score = self.connection.zscore(self.scheduled_jobs_key, job.id)
        if score is None:
            return self.get_queue_for_job(job).enqueue_job(job, at_front=bool(job.enqueue_at_front))
        if score <= self.clock.now():
            report = self._move_members([(job.id, score)], fenced=False)
            with contextlib.suppress(NoSuchJobError):  # a periodic job's last run deletes its template
                job.refresh()
            enqueued = report.enqueued[0] if report.enqueued else job.id
            return job if enqueued == job.id else self.job_class.fetch(enqueued, connection=self.connection)
        if job.meta.get('interval') or job.meta.get('cron_string'):
            return self._extra_run(job)
        if not self.connection.zrem(self.scheduled_jobs_key, job.id):
            return job  # moved or cancelled meanwhile: whoever took it out of the schedule enqueues it
        return self.get_queue_for_job(job).enqueue_job(job, at_front=bool(job.enqueue_at_front))

    def _extra_run(self, template: Job) -> Job:
        """One run of a periodic job now, outside its schedule: its pending run and its repeat count stay."""
        if not template.meta.get(keys.META_KEY):
            # rq-scheduler's own periodic job: the same id is enqueued each time, as rq-scheduler does.
            return self.get_queue_for_job(template).enqueue_job(template, at_front=bool(template.enqueue_at_front))
        scheduling = ('interval', 'cron_string', 'repeat', 'use_local_timezone', keys.META_KEY)
        meta = {name: value for name, value in template.meta.items() if name not in scheduling}
        meta[keys.META_KEY] = {'template': template.id, 'run_now': True}
        run = self._create_job(
            template.func_name, args=template.args, kwargs=template.kwargs, commit=False,
            result_ttl=template.result_ttl, ttl=template.ttl,
            id=keys.manual_run_id(template.id, round(time.time() * 1000)), description=template.description,
            queue_name=template.origin, timeout=template.timeout, meta=meta, at_front=bool(template.enqueue_at_front),
        )  # fmt: skip
        return self.get_queue_for_job(run).enqueue_job(run, at_front=bool(run.enqueue_at_front))

    def enqueue_jobs(self) -> list[Job]:
        """Moves every due job onto its queue; returns the jobs enqueued.

        Takes the lease for the call if this instance does not hold it; returns [] if another scheduler leads.
        """
        took_lease = False
        if not self._is_leader:
            if not self.acquire_lock():
                logger.info('Another scheduler holds the lease; not moving jobs')
                return []
            took_lease = True
        try:
            report = self.move_due_jobs()
        finally:
            if took_lease:
                self.remove_lock()
        return self._job_handles(report.enqueued)

    def _job_handles(self, job_ids: list[str]) -> list[Job]:
        """Unloaded ``Job`` objects for these ids (``refresh()`` loads one), made by copying one prototype:
        ``Job.__init__`` costs more than moving the job did."""
        prototype = vars(self.job_class(connection=self.connection, serializer=self.serializer))
        mutable = {name: type(value) for name, value in prototype.items() if isinstance(value, (list, dict, set))}
        handles = []
        for job_id in job_ids:
            handle = self.job_class.__new__(self.job_class)
            handle.__dict__.update(prototype)
            handle.__dict__.update({name: kind() for name, kind in mutable.items()})
            handle._id = job_id
            handles.append(handle)
        return handles

    def move_due_jobs(self) -> MoveReport:
        """Moves due jobs in batches while this instance leads; each batch is one fenced, atomic Lua call.

        With a backlog of more than one batch, the next batch is read ahead and planned while Redis applies the
        previous one: the move of batch k and the read of batch k + 2 go out in one write, and batch k + 1, read
        by the write before, is planned while Redis works. Reading ahead is safe because every entry of a move
        is guarded on the exact score it was read with: an entry read twice, or changed since, is left alone.
        """
        report = MoveReport()
        now = self.clock.now()
        pairs, fields = self._read_due(now, count=2 * self.batch_size)
        current = self._plan_batch(pairs[: self.batch_size], fields[: self.batch_size], now)
        ahead = (pairs[self.batch_size :], fields[self.batch_size :], now)
        while current.entries:
            if not ahead[0] or self._stop.is_set():
                self._apply_batch(current, report, fenced=True)
                return report
            read_at = self.clock.now()
            pending = self._send_move_and_read(current, offset=self.batch_size, now=read_at)
            try:
                upcoming = self._plan_batch(*ahead)
            finally:
                move_reply, read_reply = self._replies(pending, current, read_at)
            made_progress = self._finish_batch(current, move_reply, report, fenced=True)
            # A batch that moved nothing (entries that cannot even be dead-lettered, or all changed by producers
            # meanwhile) would be met again at once: leave the rest to the next tick instead of spinning.
            if not made_progress:
                return report
            current, ahead = upcoming, (*self._parse_read_due(read_reply), read_at)
            self._renew_lease_if_due()
        return report

    def _planner(self, now: float) -> Planner:
        return Planner(
            now=now,
            enqueued_at=utcformat(datetime.fromtimestamp(now, tz=timezone.utc)),
            serializer=self.serializer,
            queue_info=self._queue_info,
            default_timezone=self.timezone,
            callable_refusal=self._callable_refusal,
        )

    def _read_due_args(self, now: float, offset: int, count: int) -> list[Any]:
        return [self.job_class.redis_job_namespace_prefix, repr(now), offset, count, *PLANNING_FIELDS]

    def _read_due(self, now: float, count: int | None = None) -> tuple[list[tuple[Any, Any]], list[dict[bytes, bytes]]]:
        """Due members with their scores, and the fields their moves are planned from: one round trip."""
        flat = self._read_due_script(
            keys=[self.scheduled_jobs_key], args=self._read_due_args(now, 0, count or self.batch_size)
        )
        return self._parse_read_due(flat)

    @staticmethod
    def _parse_read_due(flat: list[Any]) -> tuple[list[tuple[Any, Any]], list[dict[bytes, bytes]]]:
        width = 3 + len(PLANNING_FIELDS)
        rows = [flat[start : start + width] for start in range(0, len(flat), width)]
        pairs = [(row[0], row[1]) for row in rows]
        fields = [
            {UNREADABLE: row[2]} if row[2] else {name: value for name, value in zip(PLANNING_FIELDS, row[3:]) if value}
            for row in rows
        ]
        return pairs, fields

    def _move_members(
        self,
        pairs: list[Any],
        *,
        fenced: bool,
        now: float | None = None,
        fields: list[dict[bytes, bytes]] | None = None,
    ) -> MoveReport:
        report = MoveReport()
        now = self.clock.now() if now is None else now
        self._apply_batch(self._plan_batch(pairs, fields, now), report, fenced=fenced)
        return report

    def _plan_batch(self, pairs: list[Any], fields: list[dict[bytes, bytes]] | None, now: float) -> Batch:
        planner = self._planner(now)
        members = [(_member_text(m), float(s)) for m, s in pairs]
        raws = fields if fields is not None else self._fetch_planning_fields([member for member, _ in members])
        decoded = [planner.parse(member, score, raw) for (member, score), raw in zip(members, raws)]
        self._load_whole_hashes([p for p in decoded if isinstance(p, Parsed) and p.needs_whole_hash])
        statuses = self._previous_run_statuses([p for p in decoded if isinstance(p, Parsed)])
        entries = [
            item if isinstance(item, Entry) else planner.plan(item, statuses.get(item.previous_run_to_check))
            for item in decoded
        ]
        return Batch(planner, decoded, entries)

    def _apply_batch(self, batch: Batch, report: MoveReport, *, fenced: bool) -> None:
        fast = batch.fast_entries
        results = self._call_move(self._move_argv(batch.planner, fast, fenced=fenced)) if fast else []
        self._finish_batch(batch, results, report, fenced=fenced)

    def _finish_batch(self, batch: Batch, move_reply: Any, report: MoveReport, *, fenced: bool) -> bool:
        """Reports the move's outcome per entry, then takes the jobs RQ must enqueue itself; True if any moved."""
        if isinstance(move_reply, Exception):
            self._raise_move_error(move_reply)
        before = len(report.enqueued) + len(report.dead) + len(report.skipped)
        self._handle_results(batch.planner, batch.fast_entries, move_reply, report, fenced=fenced)
        for item, entry in zip(batch.decoded, batch.entries):
            if entry.slow_path and isinstance(item, Parsed):
                self._move_slow_path(batch.planner, item, report, fenced=fenced)
        report.batches += 1
        return len(report.enqueued) + len(report.dead) + len(report.skipped) > before

    def _send_move_and_read(self, batch: Batch, *, offset: int, now: float) -> PendingReplies:
        """Sends the move of ``batch`` and the read of the due jobs after the next ``offset``, without waiting."""
        move = self._move_argv(batch.planner, batch.fast_entries, fenced=True)
        read = self._read_due_args(now, offset, self.batch_size)
        self._load_scripts_once()
        commands = [
            ('EVALSHA', self._move_script.sha, 2, self.scheduler_lock_key, self.scheduled_jobs_key, *move),
            ('EVALSHA', self._read_due_script.sha, 1, self.scheduled_jobs_key, *read),
        ]
        return PendingReplies(self.connection.connection_pool, commands)

    def _replies(self, pending: PendingReplies, batch: Batch, read_at: float) -> tuple[Any, Any]:
        """The replies of a pipelined move and read; either one is redone if Redis had lost its script."""
        move_reply, read_reply = pending.wait()
        if isinstance(move_reply, redis.exceptions.NoScriptError):
            self._scripts_missing = True
            move_reply = self._call_move(self._move_argv(batch.planner, batch.fast_entries, fenced=True))
        if isinstance(read_reply, redis.exceptions.NoScriptError):
            self._scripts_missing = True
            read_reply = self._read_due_script(
                keys=[self.scheduled_jobs_key], args=self._read_due_args(read_at, self.batch_size, self.batch_size)
            )
        if isinstance(read_reply, Exception):
            raise read_reply
        return move_reply, read_reply

    def _load_scripts_once(self) -> None:
        # Pipelined calls bypass redis-py's NOSCRIPT fallback: load the scripts up front. A Redis restart flushes
        # them; ``_replies`` then redoes the call the slow way and the next batch loads them again.
        if self._scripts_loaded_on is not self.connection.connection_pool or self._scripts_missing:
            for script in (self._move_script, self._read_due_script):
                script.sha = self.connection.script_load(script.script)
            self._scripts_loaded_on = self.connection.connection_pool
            self._scripts_missing = False

    def _fetch_planning_fields(self, members: list[str]) -> list[dict[bytes, bytes]]:
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

    def _move_argv(self, planner: Planner, entries: list[Entry], *, fenced: bool) -> list[Any]:
        header = [
            self._token if fenced else '',
            len(entries),
            planner.enqueued_at,
            self.job_class.redis_job_namespace_prefix,
        ]
        argv: list[Any] = [*header, QUEUES_SET_KEY]
        for entry in entries:
            if entry.one_off:
                argv += [entry.member, entry.score, 'O', *entry.one_off]
                continue
            argv += [entry.member, entry.score, 'H' if entry.requires_hash else 'G', len(entry.commands)]
            for command in entry.commands:
                argv += [len(command), *command]
        return argv

    def _call_move(self, argv: list[Any]) -> list[Any]:
        try:
            return self._move_script(keys=[self.scheduler_lock_key, self.scheduled_jobs_key], args=argv)
        except redis.ResponseError as exc:
            self._raise_move_error(exc)
            raise  # unreachable: for type checkers

    def _raise_move_error(self, exc: Exception) -> None:
        if 'NOTLEADER' in str(exc):
            self._lose_leadership('the lease changed hands before a batch was applied')
            raise LeadershipLost(str(exc)) from exc
        raise exc

    def _apply(self, planner: Planner, entries: list[Entry], report: MoveReport, *, fenced: bool) -> None:
        if entries:
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
                self._report(entry, report)
        if retry:
            self._apply(planner, retry, report, fenced=fenced)

    @staticmethod
    def _report(entry: Entry, report: MoveReport) -> None:
        if entry.outcome == DEAD:
            logger.error('Moved %s to the dead letters: %s', entry.member, entry.reason)
            report.dead.append(entry.member)
        elif entry.outcome == ENQUEUED and entry.enqueued_id:
            report.enqueued.append(entry.enqueued_id)
        else:
            logger.info('Skipped a run of %s (%s)', entry.member, entry.outcome)
            report.skipped.append(entry.member)
        if entry.reason and entry.outcome != DEAD:
            logger.warning('Retired %s: %s', entry.member, entry.reason)

    def _move_slow_path(self, planner: Planner, parsed: Parsed, report: MoveReport, *, fenced: bool) -> None:
        try:
            self._move_with_dependencies(planner, parsed, report, fenced=fenced)
        except (redis.RedisError, LeadershipLost):
            raise
        except Exception as exc:  # RQ could not read or enqueue the job: it must not block the schedule
            reason = f'cannot enqueue with its dependencies: {exc!r}'
            self._apply(planner, [planner.dead_letter(parsed.member, guard_score(parsed.score), reason)], report,
                        fenced=fenced)  # fmt: skip

    def _move_with_dependencies(self, planner: Planner, parsed: Parsed, report: MoveReport, *, fenced: bool) -> None:
        """Jobs with ``depends_on`` go through RQ's own enqueue (it may defer them), guarded by WATCH."""
        job = self.job_class(parsed.member, connection=self.connection, serializer=self.serializer)
        # The planner made sure the meta holds plain data only: RQ unpickles it here. A scheduled job has no result.
        job.restore({name: value for name, value in parsed.raw.items() if name not in (b'result', b'exc_info')})
        queue = self.get_queue_for_job(job)
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(self.scheduler_lock_key, self.scheduled_jobs_key, job.key)
                if fenced and pipe.get(self.scheduler_lock_key) != self._token.encode():
                    self._lose_leadership('the lease changed hands')
                    raise LeadershipLost('lease lost')
                if pipe.zscore(self.scheduled_jobs_key, parsed.member) != parsed.score or not pipe.exists(job.key):
                    return  # cancelled, moved or deleted since it was read: never re-created from our copy
                next_time = planner.next_time_of_same_id_run(parsed, job.meta) if parsed.is_periodic else None
                queue.enqueue_job(job, pipeline=pipe, at_front=bool(job.enqueue_at_front))
                if next_time is None:
                    pipe.zrem(self.scheduled_jobs_key, parsed.member)
                else:
                    pipe.zadd(self.scheduled_jobs_key, {parsed.member: next_time})
                pipe.execute()
            except redis.WatchError:
                logger.info('%s changed while being moved; trying again on the next pass', parsed.member)
                return
        report.enqueued.append(parsed.member)

    # -- leadership -----------------------------------------------------------------------------------------

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease_ttl * 1000))

    def acquire_lock(self) -> bool:
        """Takes (or renews) the leader lease; False if another scheduler, or rq-scheduler, holds the lock."""
        acquired = self.connection.set(self.scheduler_lock_key, self._token, nx=True, px=self._lease_ms)
        if acquired:
            logger.info('Scheduler %s is now the leader', self.name)
            self._record_leadership()
        else:
            acquired = self._renew_script(keys=[self.scheduler_lock_key], args=[self._token, self._lease_ms])
        self._is_leader = bool(acquired)
        if self._is_leader:
            self._lease_renewed_at = time.monotonic()
        return self._is_leader

    def _record_leadership(self) -> None:
        # Only a registered instance (one running the loop) has an entry to add this to; an expiring one, so that a
        # crash leaves nothing behind that would keep its name taken.
        if not self._registered:
            return
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, 'leader_since', self.clock.now())
            pipe.expire(self.key, self._instance_ttl)
            pipe.execute()

    def remove_lock(self) -> bool:
        """Releases the lease if, and only if, this instance still holds it."""
        released = self._release_script(keys=[self.scheduler_lock_key], args=[self._token])
        self._is_leader = False
        return bool(released)

    def _renew_lease_if_due(self) -> None:
        if time.monotonic() - self._lease_renewed_at < self.lease_ttl / 3:
            return
        if self._renew_script(keys=[self.scheduler_lock_key], args=[self._token, self._lease_ms]):
            self._lease_renewed_at = time.monotonic()
        else:
            self._lose_leadership('the lease expired before it could be renewed')
            raise LeadershipLost('lease expired')

    def _lose_leadership(self, why: str) -> None:
        if self._is_leader:
            logger.warning('Scheduler %s is no longer the leader: %s', self.name, why)
        self._is_leader = False

    # -- instance registration ------------------------------------------------------------------------------

    @property
    def _instance_ttl(self) -> int:
        return int(max(self._interval, self.lease_ttl)) + 10

    def register_birth(self) -> None:
        """Registers this instance; ValueError if a live instance already has this name."""
        birth, death = self.connection.hmget(self.key, ['birth', 'death'])
        if birth is not None and death is None:
            raise ValueError(f"There's already an active RQ scheduler named: {self.name!r}")
        now = self.clock.now()
        info = {'birth': now, 'hostname': socket.gethostname(), 'pid': os.getpid(), 'last_heartbeat': now}
        with self.connection.pipeline() as pipe:
            pipe.delete(self.key)
            pipe.hset(self.key, mapping=info)
            pipe.expire(self.key, self._instance_ttl)
            pipe.zadd(keys.INSTANCES_KEY, {self.name: now})
            pipe.execute()
        self._registered = True

    def register_death(self) -> None:
        self._registered = False
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, 'death', self.clock.now())
            pipe.expire(self.key, 60)
            pipe.zrem(keys.INSTANCES_KEY, self.name)
            pipe.execute()

    def heartbeat(self) -> None:
        now = self.clock.now()
        role = 'leader' if self._is_leader else 'standby'
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={'last_heartbeat': now, 'role': role})
            pipe.expire(self.key, self._instance_ttl)
            pipe.zadd(keys.INSTANCES_KEY, {self.name: now})
            pipe.zremrangebyscore(keys.INSTANCES_KEY, '-inf', now - self._instance_ttl)
            pipe.execute()

    # -- the loop -------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Asks the loop to finish its current batch, release the lease and return."""
        self._stop.set()
        self._wakeup.set()

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Stops the loop on SIGINT/SIGTERM; returns the handlers it replaced, for ``run()`` to put back."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum: int, frame: Any) -> None:
            logger.info('Received %s; finishing the current batch', signal.Signals(signum).name)
            self._stopped_by = signum
            self.request_stop()

        return {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    def run(self, burst: bool = False) -> None:
        """Runs the loop until stopped (SIGINT/SIGTERM or ``request_stop``), or one pass with ``burst``.

        Redis outages are logged and retried with backoff; they never end the loop.
        """
        previous_handlers = self._install_signal_handlers()
        self._call_with_retry(self._register_birth_when_name_is_free)
        logger.info('Scheduler %s started (pid %s)', self.name, os.getpid())
        listener = threading.Thread(target=self._listen_for_wakeups, name=f'{self.name}-wakeups', daemon=True)
        listener.start()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._tick(burst) and burst:
                        break
                    failures = 0
                except LeadershipLost:
                    continue
                except Exception as exc:
                    # Nothing ends the loop but a stop: a supervisor would only restart it into the same error.
                    failures += 1
                    if isinstance(exc, REDIS_OUTAGE_ERRORS):
                        self._is_leader = False
                    delay = self._backoff(failures)
                    self._log_failure(exc, delay, first=failures == 1)
                    self._stop.wait(delay)
        finally:
            self._shut_down()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if self._stopped_by is not None:
            # As rq-scheduler's run() does: a signal ends it with SystemExit, once the lease is released.
            raise SystemExit(0)

    @staticmethod
    def _log_failure(exc: Exception, delay: float, *, first: bool) -> None:
        if isinstance(exc, REDIS_OUTAGE_ERRORS):
            logger.warning('Redis is unavailable or refuses writes (%s); retrying in %.1f s', exc, delay)
        elif isinstance(exc, redis.RedisError):
            # e.g. a key of ours holding the wrong type: an operator must fix it.
            logger.error('Redis refused a command (%s); retrying in %.1f s', exc, delay)
        elif first:
            logger.exception('Unexpected error in the scheduler loop; retrying in %.1f s', delay)
        else:
            logger.error('Unexpected error in the scheduler loop again (%r); retrying in %.1f s', exc, delay)

    def _register_birth_when_name_is_free(self) -> None:
        # A process restarted right after a kill -9 finds its own name still registered until the old entry
        # expires; waiting for that beats crash-looping under a supervisor.
        while not self._stop.is_set():
            try:
                self.register_birth()
                return
            except ValueError as exc:
                logger.warning('%s; waiting for it to expire', exc)
                self._stop.wait(1.0)

    def _call_with_retry(self, func: Callable[[], Any]) -> None:
        """Calls ``func`` until Redis answers; a refusal other than an outage is logged and the loop goes on."""
        failures = 0
        while not self._stop.is_set():
            try:
                func()
                return
            except REDIS_OUTAGE_ERRORS as exc:
                failures += 1
                delay = self._backoff(failures)
                logger.warning('Redis is unavailable (%s); retrying in %.1f s', exc, delay)
                self._stop.wait(delay)
            except redis.RedisError as exc:
                logger.error('Could not %s (%s); going on without it', func.__name__.strip('_'), exc)
                return

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(10.0, 0.2 * 2 ** min(failures - 1, 6)) * random.uniform(0.8, 1.2)

    def _tick(self, burst: bool) -> bool:
        """One turn of the loop; True once a burst run has moved the due jobs."""
        self._refresh_clock()
        self._heartbeat_or_log()
        leading = (self._is_leader and self._renew_or_lose()) or self.acquire_lock()
        if not leading:
            self._stop.wait(self._standby_wait())
            return False
        self.move_due_jobs()
        self._run_tick_hooks()
        if burst:
            return True
        self._sleep_until_next_due()
        return False

    def _refresh_clock(self) -> None:
        try:
            self.clock.refresh_if_due()
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except redis.RedisError as exc:  # e.g. TIME renamed away by a managed Redis: the host's clock it is
            logger.warning("Cannot read the Redis server's clock (%s); using this host's", exc)

    def _heartbeat_or_log(self) -> None:
        # The registry is for people to read: a heartbeat Redis refuses (out of memory, a key of the wrong type)
        # must not keep the leader from renewing its lease and moving jobs. An unreachable Redis ends the tick.
        try:
            self.heartbeat()
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except redis.RedisError as exc:
            logger.warning('Heartbeat failed (%s); the loop goes on', exc)

    def _renew_or_lose(self) -> bool:
        try:
            self._renew_lease_if_due()
        except LeadershipLost:
            return False
        return True

    def _run_tick_hooks(self) -> None:
        for hook in self.tick_hooks:
            try:
                hook(self)
            except REDIS_OUTAGE_ERRORS:
                raise
            except Exception as exc:
                # Logged once per outage (e.g. the database is down), not once per tick.
                if hook not in self._failing_hooks:
                    logger.exception('Tick hook %r failed; the loop goes on moving jobs', hook)
                self._failing_hooks.add(hook)
                logger.debug('Tick hook %r still failing: %s', hook, exc)
            else:
                if hook in self._failing_hooks:
                    logger.info('Tick hook %r works again', hook)
                self._failing_hooks.discard(hook)

    def _standby_wait(self) -> float:
        return min(self._interval, self.lease_ttl / 3)

    def _longest_sleep(self) -> float:
        longest = min(self._interval, self.lease_ttl / 3)
        socket_timeout = self.connection.connection_pool.connection_kwargs.get('socket_timeout')
        if socket_timeout:
            longest = min(longest, socket_timeout * 0.8)
        return longest

    def _sleep_until_next_due(self) -> None:
        """Blocks until the next due time, a producer's wake-up, or the longest sleep, whichever is first."""
        now = self.clock.now()
        latest = now + self._longest_sleep()
        earliest = self._arm_script(
            keys=[self.scheduled_jobs_key, keys.NEXT_WAKEUP_KEY, keys.WAKEUP_KEY],
            args=[format_score(latest), math.ceil((latest - now) * 1000) + 1000],
        )
        wake_at = min(latest, float(earliest)) if earliest is not None else latest
        wait = wake_at - self.clock.now()
        if wait > 0.001 and not self._stop.is_set():
            # Timed in Python: Redis times out blocked clients on its own clock tick (100 ms at the default hz),
            # which would make every job up to 100 ms late. The wake-up listener ends the wait early.
            self._wakeup.wait(wait)
        self._wakeup.clear()

    def _listen_for_wakeups(self) -> None:
        """Runs in a thread while the loop runs: turns a producer's push on the wake-up list into an event."""
        block = self._longest_sleep()
        while not self._stop.is_set():
            try:
                if not self._is_leader:
                    self._stop.wait(0.1)  # a standby must not take the leader's wake-ups
                elif self.connection.blpop([keys.WAKEUP_KEY], timeout=max(0.1, round(block, 3))):
                    self._wakeup.set()
            except redis.RedisError:  # an outage, or a wake-up key someone broke: the timed sleep still bounds lateness
                self._stop.wait(1.0)

    def _shut_down(self) -> None:
        for step in (self.remove_lock, self.register_death):
            try:
                step()
            except redis.RedisError as exc:
                logger.warning('Could not %s at shutdown: %s', step.__name__, exc)
        logger.info('Scheduler %s stopped', self.name)


def connection_identity(connection: redis.Redis) -> tuple[Any, ...]:
    """What tells two Redis clients apart as servers: queues with equal identities share one schedule."""
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    return (
        type(pool).__name__,
        kwargs.get('host'),
        kwargs.get('port'),
        kwargs.get('path'),
        kwargs.get('db', 0),
        kwargs.get('username'),
        getattr(pool, 'service_name', None),
    )


def run_schedulers(schedulers: list[Scheduler], *, burst: bool = False) -> None:
    """Runs one loop per Redis server, in this process; SIGINT/SIGTERM stop them all."""
    if len(schedulers) == 1:
        schedulers[0].run(burst=burst)
        return

    def stop_all(signum: int, frame: Any) -> None:
        logger.info('Received %s; stopping %d schedulers', signal.Signals(signum).name, len(schedulers))
        for scheduler in schedulers:
            scheduler.request_stop()

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    threads = [threading.Thread(target=s.run, kwargs={'burst': burst}, name=s.name) for s in schedulers]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(0.2)
