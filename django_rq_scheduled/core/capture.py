"""Outcome capture on the worker side: RQ callbacks on the runs of schedule rows, one Redis command per run.

The callbacks are named in the job hash of every template a row owns (``callbacks()``), so each occurrence, one-off
and manual run carries them. They run in whichever process RQ runs callbacks (the work horse; the process cleaning
up an abandoned job) and need no Django settings: a plain ``rq worker`` that can import this package records as
much as django-rq's ``rqworker``. A callback appends one compact record to ``keys.OUTCOMES_KEY``; the leader reads
the records into ``Run`` rows (``django_rq_scheduled.history``).

RQ takes one callback per event. A job that needs its own as well (a Django Task's: its backend's callbacks send
``task_finished``) names them in its meta (``keys.CHAINED_CALLBACKS_META_KEY``), and ours calls them after recording:
the record is written whatever they do, and an error of theirs is logged, never changing the run's outcome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, RedisError
from rq import Callback
from rq.job import Job
from rq.utils import import_attribute

from . import keys, scripts

logger = logging.getLogger(__name__)

SUCCESS, FAILURE, STOPPED = 'finished', 'failed', 'stopped'
RETRYING = 'retrying'
"""A failed attempt that RQ tries again (the job has retries left): the run goes on, it has not failed."""
CHAINABLE = {
    'on_success': 'django_tasks_rq.backend.success_callback',
    'on_failure': 'django_tasks_rq.backend.failed_callback',
}
"""The callbacks ours may call after recording, by event: those of django-tasks-rq's backend (``task_calls``)."""
WORKER_DIED = 'worker died'
TIMEOUT = 'timeout'
_REASONS = {'AbandonedJobError': WORKER_DIED, 'JobTimeoutException': TIMEOUT, 'HorseMonitorTimeoutException': TIMEOUT}


def callbacks() -> dict[str, Any]:
    """The ``on_success``, ``on_failure`` and ``on_stopped`` options that make RQ report a run's outcome."""
    return {
        'on_success': Callback(f'{__name__}.record_success'),
        'on_failure': Callback(f'{__name__}.record_failure'),
        'on_stopped': Callback(f'{__name__}.record_stopped'),
    }


def record_success(job: Job, connection: Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    _append(connection, job, outcome(job, SUCCESS))
    _call_chained(job, 'on_success', connection, result, *args, **kwargs)


def record_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
    *args: Any,
    **kwargs: Any,
) -> None:
    name = exc_type.__name__ if exc_type is not None else ''
    # RQ calls this before it decides to retry (the worker, and the cleanup of an abandoned job, alike): it retries
    # a job with retries left, so that is the record's status.
    status = RETRYING if will_retry(job) else FAILURE
    _append(
        connection, job, outcome(job, status, reason=_REASONS.get(name, ''), error=error_text(exc_type, exc_value, tb))
    )
    _call_chained(job, 'on_failure', connection, exc_type, exc_value, tb, *args, **kwargs)


def record_stopped(job: Job, connection: Redis, *args: Any, **kwargs: Any) -> None:
    _append(connection, job, outcome(job, STOPPED, reason='stopped by hand'))
    _call_chained(job, 'on_stopped', connection, *args, **kwargs)


def _call_chained(job: Job, event: str, *arguments: Any, **options: Any) -> None:
    chain = job.meta.get(keys.CHAINED_CALLBACKS_META_KEY)
    path = chain.get(event) if isinstance(chain, dict) else None
    if path is None:
        return
    if path != CHAINABLE.get(event):  # meta is anyone's to write who can write to Redis: call nothing else
        logger.warning('Job %s names a callback to chain that is not one we chain (%r); not called', job.id, path)
        return
    try:
        import_attribute(path)(job, *arguments, **options)
    except Exception:  # theirs to fix; the outcome is recorded already
        logger.exception('The %s callback %s of job %s failed', event, path, job.id)


def outcome(job: Job, status: str, *, reason: str = '', error: str = '') -> dict[str, Any]:
    """The record of one run's end (or of one of its attempts): what the leader needs to find its ``Run`` and
    complete it."""
    return {
        'job': job.id,
        'status': status,
        'started': _epoch(job.started_at),
        'ended': time.time(),
        'worker': job.worker_name or '',
        'reason': reason,
        'error': error,
        'attempt': attempt(job),
    }


def will_retry(job: Job) -> bool:
    left = job.retries_left
    return isinstance(left, int) and left > 0


def attempt(job: Job) -> int:
    """Which attempt of its run ``job`` is making (1 for the first): RQ keeps the retries left, our meta the retries
    in all."""
    ours = job.meta.get(keys.META_KEY)
    total = ours.get('retries') if isinstance(ours, dict) else None
    if type(total) is not int or total <= 0:
        return 1
    left = job.retries_left if isinstance(job.retries_left, int) else 0
    return min(max(total - left, 0), total) + 1


def error_text(exc_type: type[BaseException] | None, exc_value: BaseException | None, tb: TracebackType | None) -> str:
    """``Type: message`` on the first line, then the traceback; at most MAX_ERROR_CHARS, its end kept when cut."""
    from .limits import MAX_ERROR_CHARS  # here: a plain rq worker's work horse imports this module for every job

    if exc_type is None:
        return ''
    headline = ''.join(traceback.format_exception_only(exc_type, exc_value)).strip()
    details = ''.join(traceback.format_exception(exc_type, exc_value, tb)) if tb is not None else ''
    text = f'{headline}\n{details}' if details else headline
    if len(text) <= MAX_ERROR_CHARS:
        return text
    marker = '\n[… cut …]\n'
    head = headline[: MAX_ERROR_CHARS // 4]
    return head + marker + text[-(MAX_ERROR_CHARS - len(head) - len(marker)) :]


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()  # RQ < 2 was naive UTC


_APPEND_SHA = hashlib.sha1(scripts.APPEND_OUTCOME.encode()).hexdigest()


def _append(connection: Redis, job: Job, record: dict[str, Any]) -> None:
    """One command per run (a script call; loaded first only after a Redis restart). A Redis error is logged, never
    raised: RQ would fail the user's job for an error of its callback."""
    arguments = (*scripts.APPEND_OUTCOME_KEYS, json.dumps(record), _template_of(job), job.id)
    try:
        try:
            connection.evalsha(_APPEND_SHA, len(scripts.APPEND_OUTCOME_KEYS), *arguments)
        except NoScriptError:
            connection.eval(scripts.APPEND_OUTCOME, len(scripts.APPEND_OUTCOME_KEYS), *arguments)
    except RedisError:
        logger.exception('Could not record the end of job %s (%s)', job.id, record.get('status'))


def _template_of(job: Job) -> str:
    ours = job.meta.get(keys.META_KEY)
    template = ours.get('template') if isinstance(ours, dict) else None
    return template if isinstance(template, str) else ''
