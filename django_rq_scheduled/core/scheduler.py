"""The rq-scheduler-compatible ``Scheduler``: the API producers call, and the front of the enqueue loop.

Knows Redis and RQ, and nothing of the ORM. It validates, then hands each piece of work to its part: ``jobs``
builds job hashes, ``queues`` finds queues, ``mover`` moves due jobs, ``lease`` and ``instances`` hold leadership
and the registry, ``loop`` runs the ticks. Redis layout: ``keys``; atomic writes: ``scripts``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import resolve_serializer
from rq.utils import backend_class

from . import _django, compact, cron, keys, limits, scripts
from .clock import ServerClock
from .fast_moves import install as install_fast_path
from .instances import Instances
from .jobs import HandlesAsMoved, JobBuilder, refusal_of, template_meta
from .lease import Lease
from .loop import Loop, TickHook
from .mover import Mover, MoveReport, member_text
from .observer import Observer
from .queues import Queues, default_connection, validated_queue_name
from .scores import UTC, floor_ms, format_score, from_score, to_score, until_score

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .run_policy import RunPolicies

logger = logging.getLogger(__name__)

FROM_SETTINGS = object()
"""Default of ``callable_allowed``: the project's ALLOWED_CALLABLES inside Django, no restriction outside."""
DEFAULT_INTERVAL = 60
"""rq-scheduler's: the longest sleep of the loop (``manage.py rqscheduler`` sleeps at most its INTERVAL setting)."""


class FixedKeys:
    """rq-scheduler's key attributes, fixed: rq-scheduler lets subclasses rename its keys, but ours are read by the
    Lua moves, sync, the admin and rq-scheduler itself; a renamed copy would be a second schedule that half the
    system never sees."""

    redis_scheduler_namespace_prefix = keys.INSTANCE_KEY_PREFIX
    scheduler_lock_key = keys.LOCK_KEY
    scheduled_jobs_key = keys.SCHEDULED_JOBS_KEY

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


class CallableRule:
    """The rule of which callables may run, and what follows from it: refusals, and the marks of fast moves."""

    _callable_allowed: object
    _signing_key: object
    jobs: JobBuilder
    mover: Mover

    @property
    def callable_allowed(self) -> object:
        """The rule of which callables may run: an ``AllowList``, a predicate of dotted paths, or None."""
        return self._callable_allowed

    @callable_allowed.setter
    def callable_allowed(self, rule: object) -> None:
        self._callable_allowed = rule
        self.jobs.refusal = self.mover.refusal = refusal_of(rule)
        install_fast_path(self, self._signing_key)


class Scheduler(CallableRule, FixedKeys):
    """Schedules RQ jobs in rq-scheduler's Redis layout and moves them onto their queues when they are due.

    Same constructor, methods and reserved keyword arguments as ``rq_scheduler.Scheduler`` 0.14. Differences are
    fixes: times keep millisecond precision, periodic jobs created here enqueue a fresh job per occurrence,
    intervals do not drift, cron strings follow a time zone across DST, and the loop holds a fenced leader lease.
    """

    queue_class = Queue
    job_class = Job

    def __init__(
        self,
        queue_name: str = 'default',
        queue: Queue | None = None,
        interval: float = DEFAULT_INTERVAL,
        connection: Redis | None = None,
        job_class: type[Job] | str | None = None,
        queue_class: type[Queue] | str | None = None,
        name: str | None = None,
        serializer: Any = None,
        *,
        lease_ttl: float = limits.DEFAULT_LEASE_TTL,
        batch_size: int = limits.DEFAULT_BATCH_SIZE,
        timezone: str | None = None,
        callable_allowed: Callable[[str], bool] | object | None = FROM_SETTINGS,
        signing_key: str | bytes | object | None = FROM_SETTINGS,
    ) -> None:
        if queue is not None:
            queue_name = queue.name
            connection = connection or queue.connection
            serializer = serializer or queue.serializer
        self.queue_name = validated_queue_name(queue_name, 'queue_name')
        self.interval = limits.to_seconds(interval, 'interval', at_most=None)
        lease_seconds = limits.to_seconds(lease_ttl, 'lease_ttl')
        if problem := limits.batch_size_problem(batch_size):
            raise ValueError(f'batch_size: {problem}')
        self.batch_size = batch_size
        self.connection = connection if connection is not None else default_connection(self.queue_name)
        self.job_class = cast('type[Job]', backend_class(self, 'job_class', override=job_class))
        if self.job_class.redis_job_namespace_prefix != keys.JOB_KEY_PREFIX:
            raise ValueError(f"job_class: its job keys must start with {keys.JOB_KEY_PREFIX!r}, as RQ's do")
        self.queue_class_name = queue_class if isinstance(queue_class, str) else None
        self.queue_class = cast('type[Queue]', backend_class(self, 'queue_class', override=queue_class))
        self.serializer = resolve_serializer(serializer)
        if name is None:
            name = uuid4().hex
        elif problem := limits.instance_name_problem(name):
            raise ValueError(f'name: {problem}')
        self.name = name
        self.timezone = cron.get_zone(timezone or _django.default_timezone() or 'UTC').key
        self._callable_allowed = _django.allow_list() if callable_allowed is FROM_SETTINGS else callable_allowed
        refusal = refusal_of(self._callable_allowed)
        stop = threading.Event()
        self.clock = ServerClock(self.connection)
        self.queues = Queues(self.connection, self.job_class, self.queue_class, self.serializer)
        self.jobs = JobBuilder(
            self.connection, self.job_class, self.serializer,
            default_queue=self.queue_name, queue_class_name=self.queue_class_name, refusal=refusal,
        )  # fmt: skip
        self.lease = Lease(self.connection, self.name, lease_seconds)
        self.instances = Instances(self.connection, self.name, self.clock, int(max(self.interval, lease_seconds)) + 10)
        self.mover = Mover(
            self.connection, self.job_class, self.serializer, lease=self.lease, clock=self.clock, queues=self.queues,
            batch_size=batch_size, timezone=self.timezone, refusal=refusal, stop=stop,
        )  # fmt: skip
        self._signing_key = _django.signing_key() if signing_key is FROM_SETTINGS else signing_key
        install_fast_path(self, self._signing_key)  # marks plain one-offs, and moves them whole, when trusted
        self.loop = Loop(self, stop)
        self.tick_hooks: list[TickHook] = self.loop.hooks

    @property
    def key(self) -> str:
        return self.instances.key

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def lease_ttl(self) -> float:
        return self.lease.ttl

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    @property
    def observer(self) -> Observer:
        """Told of the loop's enqueued jobs, lease renewals and ticks (``core.observer``); silent by default."""
        return self.loop.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self.loop.observer = self.mover.observer = self.lease.observer = observer

    # -- creating jobs --------------------------------------------------------------------------------------

    def _create_job(self, func: Any, *args: Any, **kwargs: Any) -> Job:
        """rq-scheduler's own builder, with its arguments: the job hash (status ``scheduled``), saved if ``commit``."""
        return self.jobs.create(func, *args, **kwargs)

    def enqueue_at(self, scheduled_time: datetime, func: Any, *args: Any, **kwargs: Any) -> Job:
        """Schedules ``func(*args, **kwargs)`` to be enqueued at ``scheduled_time`` (naive means UTC).

        Reserved keyword arguments, as in rq-scheduler: timeout, job_id, job_ttl, job_result_ttl,
        job_description, depends_on, meta, queue_name, on_success, on_failure, at_front.
        """
        score = to_score(scheduled_time, 'scheduled_time')
        job = self.jobs.from_reserved(func, args, kwargs)
        self.jobs.save_and_schedule(job, score)
        return job

    def enqueue_in(self, time_delta: timedelta, func: Any, *args: Any, **kwargs: Any) -> Job:
        """Schedules ``func(*args, **kwargs)`` to be enqueued after ``time_delta``."""
        if not isinstance(time_delta, timedelta):
            raise ValueError(f'time_delta: expected a timedelta, got {type(time_delta).__name__} {time_delta!r}')
        job = self.jobs.from_reserved(func, args, kwargs)
        self.jobs.save_and_schedule(job, floor_ms(time.time() + time_delta.total_seconds()))
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
        retries: int = 0,
        retry_delays: list[int] | None = None,
        **policies: Unpack[RunPolicies],
    ) -> Job:
        """Schedules a job at ``scheduled_time``, then every ``interval`` seconds, ``repeat`` times in total.

        Each occurrence is a fresh RQ job (id ``<id>_at_<epoch ms>``); the next run is the previous scheduled
        time plus ``interval``, so runs do not drift. Without ``interval`` this is a one-off job (no run policies)."""
        if repeat is not None and interval is None:
            raise ValueError("repeat: can't repeat a job without an interval")
        score = to_score(scheduled_time, 'scheduled_time')
        options = {
            'args': args, 'kwargs': kwargs, 'result_ttl': result_ttl, 'ttl': ttl, 'id': id,
            'description': description, 'queue_name': queue_name, 'timeout': timeout, 'meta': meta,
            'depends_on': depends_on, 'on_success': on_success, 'on_failure': on_failure, 'at_front': bool(at_front),
        }  # fmt: skip
        if interval is None:
            job = self.jobs.one_off(func, policies, options, (retries, retry_delays))
        else:
            period = limits.to_seconds(interval, 'interval', at_most=None)
            job = self.jobs.template(
                func, template_meta('interval', interval=period), repeat=repeat, misfire_grace=misfire_grace,
                overlap=overlap, options=options, retry=(retries, retry_delays), policies=policies)  # fmt: skip
        self.jobs.save_and_schedule(job, score)
        return job

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
        retries: int = 0,
        retry_delays: list[int] | None = None,
        **policies: Unpack[RunPolicies],
    ) -> Job:
        """Schedules a job on a cron string evaluated in ``timezone`` (an IANA name; default: the scheduler's).

        croniter grammar: 5 fields, or 6 with seconds last. Each occurrence is a fresh RQ job. Unlike
        rq-scheduler, ``result_ttl`` defaults to RQ's default (each run keeps its own result)."""
        zone = cron.get_zone(timezone or self.timezone).key
        first = cron.next_fire_time(cron_string, datetime.now(tz=UTC), zone)
        if first is None:
            raise ValueError(f'cron_string: {cron_string!r} can never fire again')
        options = {
            'args': args, 'kwargs': kwargs, 'result_ttl': result_ttl, 'ttl': ttl, 'id': id,
            'description': description, 'queue_name': queue_name, 'timeout': timeout, 'meta': meta,
            'depends_on': depends_on, 'on_success': on_success, 'on_failure': on_failure, 'at_front': bool(at_front),
        }  # fmt: skip
        meta_of_cron = template_meta('cron', cron_string=cron_string, timezone=zone, use_local_timezone=bool(use_local_timezone))  # fmt: skip  # noqa: E501
        job = self.jobs.template(func, meta_of_cron, repeat=repeat, misfire_grace=misfire_grace, overlap=overlap,
                                 options=options, retry=(retries, retry_delays), policies=policies)  # fmt: skip
        self.jobs.save_and_schedule(job, first.timestamp())
        return job

    # -- inspecting and changing the schedule ---------------------------------------------------------------

    def cancel(self, job: Job | str) -> bool:
        """Removes a job from the schedule (and its hash, if it was still only scheduled). True if it was there."""
        return self.cancel_member(_job_id(job).encode())

    def cancel_member(self, member: bytes) -> bool:
        """``cancel`` of a schedule member or dead letter by its raw bytes, even ones that are no valid job id
        (written by someone else, or not UTF-8): what the status page shows can always be removed."""
        if not isinstance(member, bytes):
            raise ValueError(f'member: expected bytes, got {type(member).__name__}')
        job_key = keys.JOB_KEY_PREFIX.encode() + member
        removed = self.connection.eval(
            scripts.CANCEL, 3, keys.SCHEDULED_JOBS_KEY, job_key, keys.DEAD_LETTERS_KEY, member
        )
        return bool(removed)

    def __contains__(self, item: Job | str) -> bool:
        return self.connection.zscore(keys.SCHEDULED_JOBS_KEY, _job_id(item, 'item')) is not None

    def change_execution_time(self, job: Job | str, date_time: datetime) -> None:
        """Moves a scheduled job to ``date_time``, atomically; raises ValueError if it is not scheduled."""
        job_id = _job_id(job)
        score = to_score(date_time, 'date_time')
        moved = self.connection.eval(scripts.SCHEDULE, 3, *keys.WAKEUP_KEYS, job_id, format_score(score), 'XX')
        if not moved:
            raise ValueError('Job not in scheduled jobs queue')

    def count(self, until: Any = None) -> int:
        """How many jobs are scheduled up to ``until`` (datetime, timedelta from now, or epoch seconds)."""
        count: int = self.connection.zcount(keys.SCHEDULED_JOBS_KEY, '-inf', until_score(until))
        return count

    def get_jobs(
        self,
        until: Any = None,
        with_times: bool = False,
        offset: int | None = None,
        length: int | None = None,
    ) -> list[Any]:
        """Scheduled jobs due up to ``until``, earliest first, in two round trips (three with rows' templates);
        ``(job, naive UTC time)`` pairs with ``with_times``. Ids without a job hash are left to the loop."""
        if (offset is None) != (length is None):
            raise ValueError('offset, length: give both or neither')
        pairs = cast(
            'list[tuple[bytes, float]]',
            self.connection.zrangebyscore(
                keys.SCHEDULED_JOBS_KEY, '-inf', until_score(until), start=offset, num=length, withscores=True
            ),
        )
        # Members that name no job (not UTF-8, not a valid id: written by someone else) are left to the loop.
        texts = [(member_text(member), score) for member, score in pairs]
        valid = [(text, score) for text, score in texts if isinstance(text, str) and keys.is_job_id(text)]
        ids = [job_id for job_id, _ in valid]
        jobs = compact.with_meta(self.connection, self.job_class.fetch_many(ids, self.connection, self.serializer))
        if not with_times:
            return [job for job in jobs if job is not None]
        return [(job, from_score(score)) for job, (_, score) in zip(jobs, valid) if job is not None]

    def get_jobs_to_queue(self, with_times: bool = False) -> list[Any]:
        return self.get_jobs(self.clock.now(), with_times=with_times)

    def get_queue_for_job(self, job: Job) -> Queue:
        return self.queues.for_job(job)

    # -- dead letters ---------------------------------------------------------------------------------------

    def dead_letters(self) -> dict[str, str]:
        """Jobs taken out of the schedule because they could not be moved: job id → JSON with the reason.

        A member that is not UTF-8 (the loop dead-letters those too) appears with ``\\xff`` escapes; remove it with
        ``cancel_member()`` and its raw bytes."""
        raw = cast('dict[bytes, bytes]', self.connection.hgetall(keys.DEAD_LETTERS_KEY))
        return {k.decode('utf-8', 'backslashreplace'): v.decode('utf-8', 'backslashreplace') for k, v in raw.items()}

    def retry_dead_letter(self, job_id: str) -> bool:
        """Puts a dead-lettered job back into the schedule, due now; False (and nothing done) if it was not one.

        ValueError if the callable of the job is refused by the allow-list: it would only be dead-lettered again.
        """
        keys.validate_job_id(job_id, 'job_id')
        self.jobs.check_stored_callable(job_id)
        retried = self.connection.eval(
            scripts.RETRY_DEAD_LETTER, 4, *keys.WAKEUP_KEYS, keys.DEAD_LETTERS_KEY, job_id, format_score(time.time())
        )
        return bool(retried)

    # -- moving due jobs ------------------------------------------------------------------------------------

    def enqueue_job(self, job: Job) -> Job:
        """Enqueues a scheduled job now, as rq-scheduler does, and updates ``job`` in place.

        A due job is moved as the loop would move it. A one-off job not due yet is taken out of the schedule and
        enqueued. A periodic job not due yet gets one extra run now and keeps its pending run at its time.
        Returns the job enqueued (for periodic jobs of ours, the run's own job).
        """
        score = self.connection.zscore(keys.SCHEDULED_JOBS_KEY, job.id)
        if score is None:
            return self._enqueue_now(job)
        if score <= self.clock.now():
            report = self.mover.move_members([(job.id, score)], fenced=False)
            with contextlib.suppress(NoSuchJobError):  # a periodic job's last run deletes its template
                job.refresh()  # type: ignore[no-untyped-call]
            enqueued = report.enqueued[0] if report.enqueued else job.id
            return job if enqueued == job.id else self.job_class.fetch(enqueued, connection=self.connection)
        compact.with_meta(self.connection, [job])  # RQ reads no meta of a row's compact template
        if job.meta.get(keys.META_KEY) and (job.meta.get('interval') or job.meta.get('cron_string')):
            # One run of a periodic job of ours now, outside its schedule: its pending run and repeat count stay.
            return self._enqueue_now(self.jobs.extra_run(job))
        if job.meta.get('interval') or job.meta.get('cron_string'):
            # rq-scheduler's own periodic job: the same id is enqueued each time, as rq-scheduler does.
            return self._enqueue_now(job)
        if not self.connection.zrem(keys.SCHEDULED_JOBS_KEY, job.id):
            return job  # moved or cancelled meanwhile: whoever took it out of the schedule enqueues it
        return self._enqueue_now(job)

    def _enqueue_now(self, job: Job) -> Job:
        return self.get_queue_for_job(job).enqueue_job(job, at_front=bool(job.enqueue_at_front))

    def enqueue_jobs(self) -> list[Job]:
        """Moves every due job onto its queue; returns the jobs enqueued (unloaded: ``refresh()`` loads one).

        Takes the lease for the call if this instance does not hold it; returns [] if another scheduler leads.
        """
        took_lease = False
        if not self.lease.held:
            if not self.acquire_lock():
                logger.info('Another scheduler holds the lease; not moving jobs')
                return []
            took_lease = True
        handles = HandlesAsMoved(self.jobs)
        try:
            report = self.mover.move_due_jobs(MoveReport(as_moved=handles.build))
        finally:
            if took_lease:
                self.remove_lock()
        return handles.of(report.enqueued)

    def move_due_jobs(self) -> MoveReport:
        """Moves due jobs in batches while this instance leads; each batch is one fenced, atomic Lua call."""
        return self.mover.move_due_jobs()

    # -- leadership, registry and the loop ------------------------------------------------------------------

    def acquire_lock(self) -> bool:
        """Takes (or renews) the leader lease; False if another scheduler, or rq-scheduler, holds the lock."""
        if self.lease.acquire():
            logger.info('Scheduler %s is now the leader', self.name)
            self.instances.record_leadership(self.beat_period)
        return self.lease.held

    @property
    def beat_period(self) -> float:  # the longest a tick sleeps: the longest between two heartbeats
        return min(self.interval, self.lease.ttl / 3)

    def remove_lock(self) -> bool:
        """Releases the lease if, and only if, this instance still holds it."""
        return self.lease.release()

    def register_birth(self) -> None:
        """Registers this instance; ValueError if a live instance already has this name."""
        self.instances.register_birth()

    def register_death(self) -> None:
        self.instances.register_death()

    def heartbeat(self) -> None:
        self.instances.heartbeat('leader' if self.lease.held else 'standby')

    def request_stop(self) -> None:
        """Asks the loop to finish its current batch, release the lease and return."""
        self.loop.request_stop()

    def run(self, burst: bool = False) -> None:
        """Runs the loop until stopped (SIGINT/SIGTERM or ``request_stop``), or one pass with ``burst``.

        Redis outages are logged and retried with backoff; they never end the loop.
        """
        self.loop.run(burst)


def _job_id(job_or_id: Job | str, argument: str = 'job') -> str:
    job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
    return keys.validate_job_id(job_id, argument)
