"""Building job hashes: validated RQ jobs with status ``scheduled``, templates of periodic jobs, runs started by
hand, and the handles ``enqueue_jobs()`` returns.

A template is an RQ job hash with rq-scheduler's meta keys (``interval``, ``cron_string``, ``repeat``,
``use_local_timezone``) plus ours under ``keys.META_KEY``; ``template_meta`` is the one place that writes them.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from redis import Redis
from rq.exceptions import TimeoutFormatError
from rq.job import Job, JobStatus
from rq.serializers import Serializer
from rq.utils import parse_timeout

from . import fast_moves, keys, limits, retries, run_policy, scripts, vetting
from .allowlist import AllowList
from .limits import OVERLAP_POLICIES
from .queues import validated_queue_name
from .scores import format_score

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
Refusal = Callable[[str], 'str | None']
"""Why a callable path may not run (None: it may)."""


TEMPLATE_FORMAT = 4
"""What a row's template holds, as a number in its definition digest: raised when that changes (2: the outcome
callbacks of ``capture``; 3: RQ's retry fields, a one-off's fire time; 4: compact templates, ``compact``), so that
reconciliation rewrites every template once after an upgrade."""


def validated_repeat(repeat: object) -> int | None:
    if repeat is None:
        return None
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat <= 0:
        raise ValueError(f'repeat: must be a whole number of runs, at least 1 (or None for ever), got {repeat!r}')
    return repeat


def validated_ttl(value: object, argument: str, *, allow_zero: bool) -> int | None:
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


def refusal_of(rule: object) -> Refusal | None:
    """The refusal of an allow-list or a plain predicate, or None when nothing is restricted."""
    if rule is None or (isinstance(rule, AllowList) and not rule.restricts):
        return None
    if isinstance(rule, AllowList):
        return rule.refusal
    predicate = cast(Callable[[str], bool], rule)
    return lambda path: None if predicate(path) else f'{path} is not allowed'


def template_meta(
    kind: str,
    *,
    interval: float | None = None,
    cron_string: str | None = None,
    timezone: str | None = None,
    use_local_timezone: bool = False,
    repeat: int | None = None,
    misfire_grace: float | None = None,
    overlap: str = 'allow',
    runs: int = 0,
    late_from: float | None = None,
    **ours: Any,
) -> dict[str, Any]:
    """The meta of a template: rq-scheduler's keys, which its loop reads too, and ours under ``keys.META_KEY``.

    ``kind`` is 'interval', 'cron' or 'once' (a one-off row's, recorded like the others); ``repeat`` is the number
    of runs left. ``late_from`` (epoch seconds) is set for a first run that was already due when the template was
    written: it is late, for its misfire grace, only from then. Extra keyword arguments go into our part (a row's
    owner, version, and ``record``).
    """
    meta: dict[str, Any] = {}
    own: dict[str, Any] = {'kind': kind, 'misfire_grace': misfire_grace, 'overlap': overlap, 'runs': runs, **ours}
    if late_from is not None:
        own['late_from'] = late_from
    if kind == 'interval':
        assert interval is not None
        meta['interval'] = max(1, round(interval))  # rq-scheduler reads whole seconds; we read our exact one
        own['interval'] = float(interval)
    elif kind == 'cron':
        meta.update(cron_string=cron_string, use_local_timezone=use_local_timezone)
        own['timezone'] = timezone
    if repeat is not None:
        meta['repeat'] = repeat
    meta[keys.META_KEY] = own
    return meta


class JobBuilder:
    """Builds the job hashes of one scheduler: its connection, job class, serializer, default queue and rule of
    which callables may run."""

    def __init__(
        self,
        connection: Redis,
        job_class: type[Job],
        serializer: Serializer,
        *,
        default_queue: str,
        queue_class_name: str | None,
        refusal: Refusal | None,
    ) -> None:
        self.connection = connection
        self.job_class = job_class
        self.serializer = serializer
        self.default_queue = default_queue
        self.queue_class_name = queue_class_name
        self.refusal = refusal
        self.signer: fast_moves.Signer | None = None
        """Marks the plain one-offs the move script may take whole (``fast_moves``); None: marks none."""

    def create(
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
        on_stopped: Any = None,
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
        origin = validated_queue_name(queue_name or self.default_queue, 'queue_name')
        if isinstance(func, str) and '.' not in func:
            raise ValueError(f'func: expected a dotted path like "myapp.tasks.send", got {func!r}')
        try:
            job = self.job_class.create(
                func,
                args=tuple(args) if args is not None else None,  # a tuple, as RQ and rq-scheduler store them
                kwargs=kwargs,
                connection=self.connection,
                result_ttl=validated_ttl(result_ttl, 'result_ttl', allow_zero=True),
                ttl=validated_ttl(ttl, 'ttl', allow_zero=False),
                id=id,
                description=description,
                timeout=validated_ttl(timeout, 'timeout', allow_zero=False),
                meta=dict(meta) if meta else {},  # a copy: the caller's dict is never changed
                depends_on=depends_on,
                on_success=on_success,
                on_failure=on_failure,
                on_stopped=on_stopped,
                status=JobStatus.SCHEDULED,
                serializer=self.serializer,
            )
        except (TypeError, AttributeError) as exc:
            raise ValueError(f'func: {exc}') from exc
        self.check_callable(job)
        job.origin = origin
        if self.queue_class_name:
            job.meta['queue_class_name'] = self.queue_class_name
        if at_front:
            job.enqueue_at_front = True
        if commit:
            job.save()
        return job

    def save_and_schedule(self, job: Job, score: float) -> None:
        """Writes the job hash and its schedule entry in one transaction, waking the loop if it is earlier."""
        with self.connection.pipeline() as pipe:
            if self.signer is not None and fast_moves.eligible(job):
                mapping = job.to_dict()
                mapping[keys.FAST_MARK_FIELD] = self.signer.mark(job.id, mapping)
                pipe.hset(job.key, mapping=mapping)  # what job.save() writes, and the mark
            else:
                job.save(pipeline=pipe)
                pipe.hdel(job.key, keys.FAST_MARK_FIELD)  # a mark of an earlier job of this id is no longer true
            pipe.eval(scripts.SCHEDULE, 3, *keys.WAKEUP_KEYS, job.id, format_score(score), '')
            pipe.execute()

    def from_reserved(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
        """The job of ``enqueue_at``/``enqueue_in``: rq-scheduler's reserved keyword arguments are its options."""
        options = {name: kwargs.pop(name, None) for name in RESERVED_KWARGS}
        return self.create(
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

    def one_off(
        self, func: Any, policies: Mapping[str, Any], options: dict[str, Any], retry: tuple[object, object]
    ) -> Job:
        """The (unsaved) job of ``Scheduler.schedule()`` without an interval: run policies are for periodic jobs."""
        run_policy.check_names(policies)
        if policies:
            raise ValueError(f'{min(policies)}: only a periodic job (with an interval) has run policies')
        return self.give_retries(self.create(func, commit=False, **options), *retry)

    def template(
        self,
        func: Any,
        meta: dict[str, Any],
        *,
        repeat: object,
        misfire_grace: object,
        overlap: object,
        options: dict[str, Any],
        retry: tuple[object, object] = (0, None),
        policies: Mapping[str, Any] | None = None,
    ) -> Job:
        """Validates and builds (unsaved) the template of a periodic job of the API; ``meta`` from
        ``template_meta``, completed here with the validated repeat, misfire grace, overlap, ``retry``
        (``(retries, retry_delays)``) and run policies (``run_policy.api_meta``'s arguments)."""
        remaining = validated_repeat(repeat)
        run_policy.check_names(policies or {})
        policy_meta = run_policy.api_meta(**(policies or {}))
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(f'overlap: expected one of {OVERLAP_POLICIES}, got {overlap!r}')
        grace = None if misfire_grace is None else limits.to_seconds(misfire_grace, 'misfire_grace', at_most=None)
        if options['depends_on'] is not None:
            raise ValueError('depends_on: not supported for periodic jobs (each run would wait on one old job)')
        job = self.create(func, commit=False, **options)
        job.meta.update(meta)
        job.meta[keys.META_KEY].update({'misfire_grace': grace, 'overlap': overlap, 'runs': 0, **policy_meta})
        if remaining is not None:
            job.meta['repeat'] = remaining
        return self.give_retries(job, *retry)

    @staticmethod
    def give_retries(job: Job, retries_: object, retry_delays: object) -> Job:
        """Validates a retry policy and gives it to ``job``: RQ's retry fields (a one-off's run, a manual run) and
        our part of its meta (read by the loop for each occurrence of a template, and by ``capture``)."""
        count, delays = retries.validated(retries_, retry_delays)
        if count:
            retries.apply(job, count, delays)
            job.meta.setdefault(keys.META_KEY, {}).update({'retries': count, 'retry_delays': delays})
        return job

    def extra_run(self, template: Job, **callbacks: Any) -> Job:
        """An unsaved run of a template of ours, now and outside its schedule ("run now", an early
        ``enqueue_job``): its own id, the template's options, none of its scheduling meta; ``callbacks`` are RQ's
        ``on_success``, ``on_failure`` and ``on_stopped``."""
        meta = {name: value for name, value in template.meta.items() if name not in keys.SCHEDULING_META_KEYS}
        meta[keys.META_KEY] = {'template': template.id, 'run_now': True}
        run = self.create(
            template.func_name, args=template.args, kwargs=template.kwargs, commit=False,
            result_ttl=template.result_ttl, ttl=template.ttl,
            id=keys.manual_run_id(template.id, round(time.time() * 1000)), description=template.description,
            queue_name=template.origin, timeout=template.timeout, meta=meta, at_front=bool(template.enqueue_at_front),
            **callbacks,
        )  # fmt: skip
        # A run by hand is tried as often as a scheduled one: the policy is the schedule's, not the slot's.
        return self.give_retries(run, *retries.of_meta(template.meta.get(keys.META_KEY) or {}))

    def slot_run(self, template: Job, fire_time: float, **callbacks: Any) -> Job:
        """An unsaved run of a template of ours for one of its slots (a backfill): the slot's occurrence id, as the
        loop would have given it."""
        run = self.extra_run(template, **callbacks)
        run.id = keys.occurrence_id(template.id, round(fire_time * 1000))
        run.meta[keys.META_KEY] = {'template': template.id, 'fire_time': fire_time}
        return run

    def enqueue_once(self, run: Job, queue_key: str, enqueued_at: str) -> bool:
        """Enqueues ``run`` unless its job hash exists (checked and written in one Lua call, so two callers at once
        enqueue it once); True if it was enqueued."""
        mapping = {**run.to_dict(), 'status': 'queued', 'enqueued_at': enqueued_at}
        flat = [item for pair in mapping.items() for item in pair]
        push = 'LPUSH' if run.enqueue_at_front else 'RPUSH'
        job_keys = [keys.job_key(run.id), queue_key, keys.QUEUES_SET_KEY]
        return bool(self.connection.eval(scripts.ENQUEUE_ONCE, 3, *job_keys, run.id, push, *flat))

    def check_callable(self, job: Job) -> None:
        """The loop's own check, at call time: a refused job raises here instead of becoming a dead letter."""
        if self.refusal is None:
            return
        if job.instance is not None:
            raise ValueError(
                f'func: a bound method of {type(job.instance).__name__} cannot be checked against '
                'ALLOWED_CALLABLES; schedule a module-level function'
            )
        reason = self.refusal(cast(str, job.func_name))
        if reason:
            raise ValueError(f'func: {reason}')
        if problem := vetting.job_callbacks_problem(job, self.refusal):
            raise ValueError(f'on_success/on_failure/on_stopped: {problem}')

    def check_stored_callable(self, job_id: str) -> None:
        """ValueError if the job stored under ``job_id`` calls what the allow-list refuses, its function or one of
        its callbacks (read, never run)."""
        if self.refusal is None:
            return
        fields = (b'data', *vetting.CALLBACK_FIELDS)
        values = cast(list[bytes | None], self.connection.hmget(keys.job_key(job_id), fields))
        raw = {field: value for field, value in zip(fields, values) if value is not None}
        if b'data' not in raw:
            return
        if problem := vetting.payload_problem(raw, self.serializer, self.refusal):
            raise ValueError(f'job_id: {job_id} would not run: {problem}')

    def handles(self, job_ids: list[str]) -> list[Job]:
        """Unloaded jobs of these ids (``refresh()`` loads one), built without a round trip.

        Built without a serializer and given ours after: RQ checks a serializer passed to ``Job()`` against its
        protocol, which costs more than moving the job did. Only the first is built by ``Job()``; the others are
        copies of its state with their own id (and their own copies of its containers): ``Job()`` costs more than
        the fast path's move.
        """
        if not job_ids:
            return []
        first = self.job_class(job_ids[0], connection=self.connection)
        first.serializer = self.serializer
        state = getattr(first, '__dict__', None)
        if state is None or '_id' not in state:  # a job class of its own shape: built one by one
            return [first, *(self._handle(job_id) for job_id in job_ids[1:])]
        containers = [name for name, value in state.items() if isinstance(value, (dict, list, set))]
        handles = [first]
        make = object.__new__
        with _collector_paused():
            for job_id in job_ids[1:]:
                handle = make(self.job_class)
                copy = handle.__dict__
                copy.update(state)
                copy['_id'] = job_id
                for name in containers:
                    copy[name] = state[name].copy()
                handles.append(handle)
        return handles

    def _handle(self, job_id: str) -> Job:
        handle = self.job_class(job_id, connection=self.connection)
        handle.serializer = self.serializer
        return handle


class HandlesAsMoved:
    """The handles ``enqueue_jobs()`` returns: those of each fast batch built while Redis moves the next (``build``,
    a pass's ``as_moved``), the others once the pass is over (``of``)."""

    def __init__(self, jobs: JobBuilder) -> None:
        self.jobs = jobs
        self.built: dict[str, Job] = {}

    def build(self, job_ids: list[str]) -> None:
        self.built.update(zip(job_ids, self.jobs.handles(job_ids)))

    def of(self, job_ids: list[str]) -> list[Job]:
        """The handles of ``job_ids``, in their order."""
        built = self.built
        rest = iter(self.jobs.handles([job_id for job_id in job_ids if job_id not in built]))
        return [built[job_id] if job_id in built else next(rest) for job_id in job_ids]


@contextmanager
def _collector_paused() -> Iterator[None]:
    # Thousands of new objects that hold no cycle: the cyclic collector would walk the growing list again and again,
    # half the cost of building it. Left as found (another thread may pause it too; it ends up enabled).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
