"""The run records in Redis read into facts: the loop's records of its decisions (``keys.RUNS_KEY``, via
``feedback``) and the workers' outcome records (``keys.OUTCOMES_KEY``, written by ``core.capture``). ``history``
writes the facts into runs.

The leader reads tens of thousands of these a second: each is parsed with the JSON module's C scanner directly and
its fact built in one call, with the same result (or the same refusal) as ``json.loads`` and keyword arguments.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from . import attempts
from .core import capture, keys, overlap
from .models import SCHEDULE_MODELS, ScheduleBase
from .runs import BY_SCHEDULE, CANCELED, QUEUED, SKIPPED

logger = logging.getLogger(__name__)

MAX_TEXT = 255
"""Of the runs' short text columns (queue, reason, worker, job id)."""
UTC = timezone.utc
SKIP_REASONS = {
    'skipped_misfire': 'misfire grace',
    'skipped_overlap': 'overlap',
    overlap.SKIPPED_WAITING: overlap.WAITING_REASON,
    'skipped_catchup': 'catch-up',
}
REPORTED_STATUSES = frozenset({capture.SUCCESS, capture.FAILURE, capture.STOPPED, capture.RETRYING})
MODELS_BY_NAME = {model._meta.model_name: model for model in SCHEDULE_MODELS}


@dataclass(slots=True)
class Fact:
    """What one record says about one run."""

    job_id: str
    model: type[ScheduleBase]
    pk: Any
    status: str
    trigger: str = BY_SCHEDULE
    queue: str = ''
    reason: str = ''
    fire_time: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str = ''
    error: str = ''
    reported: bool = False
    """From the run's own worker (its callback), so it corrects what the leader only inferred."""
    attempts: int | None = None
    """The attempt the worker reported on (absolute, so a record read twice counts once)."""
    retrying: bool = False
    """A failed attempt RQ tries again: the run goes back to queued, and has not ended (``attempts``)."""
    delay: float | None = None
    """The jitter delay the loop chose for the run."""


# What json.loads runs, without its checks of the text's encoding and margins (typeshed does not declare it).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``: a record as its writers write it (UTF-8, its value from the first character to the
    last) is handed to the C scanner directly; anything else goes through ``json.loads`` for its result or error."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (UnicodeDecodeError, StopIteration, ValueError, TypeError):
        pass
    return json.loads(raw)


def decision_fact(record: dict[str, Any], model: type[ScheduleBase], pk: Any, at: Any = None) -> Fact | None:
    """The run a loop record (``keys.RUNS_KEY``) tells of: enqueued or skipped; None for other records. ``at``: the
    record's ``at`` as a datetime, when the caller has it already."""
    outcome, template = record.get('outcome'), record['schedule']
    fire_time = epoch_time(record.get('fire_time'))
    if at is None:
        at = epoch_time(record.get('at'))
    queue = column_text(record.get('queue'))
    if outcome == 'enqueued':
        job_id = _job_id(record.get('job'))
        return Fact(job_id, model, pk, QUEUED, BY_SCHEDULE, queue, '', fire_time, at, delay=_delay(record))
    if outcome == overlap.CANCELED_OVERLAP:  # the previous run, replaced by a newer one (fire time: its own row's)
        job_id = _job_id(record.get('canceled'))
        return Fact(job_id, model, pk, CANCELED, BY_SCHEDULE, queue, overlap.REPLACED_REASON, ended_at=at)
    if outcome in SKIP_REASONS and fire_time is not None:
        job_id = keys.occurrence_id(template, round(fire_time.timestamp() * 1000)) if model.is_periodic else template
        reason = column_text(record.get('reason')) or SKIP_REASONS[outcome]
        return Fact(_job_id(job_id), model, pk, SKIPPED, BY_SCHEDULE, queue, reason, fire_time, ended_at=at)
    return None


def _delay(record: dict[str, Any]) -> float | None:
    delay = record.get('delay')
    if type(delay) is float or type(delay) is int:  # not bool
        return float(delay) if 0 <= delay < 10**9 else None  # NaN and inf fail both
    return None


def _job_id(value: Any) -> str:
    """A run's job id from a record: RQ's rule, and what the column holds (ValueError otherwise)."""
    if not keys.is_job_id(value) or len(value) > MAX_TEXT:
        raise ValueError(f'job id: {str(value)[:80]!r}')
    return cast(str, value)


def outcome_fact(raw: bytes | str) -> Fact | None:
    """The run a worker's record (``keys.OUTCOMES_KEY``) tells of, or None (logged) for a record no run can take."""
    try:
        record = loads(raw)
        job_id = record['job']
        origin = keys.run_origin(job_id) if isinstance(job_id, str) else None
        if origin is None:
            raise ValueError(f'{job_id!r} is no run of a schedule row')
        template, trigger, fire_ms = origin
        model, pk = schedule_of(template)
        status = record['status']
        if status not in REPORTED_STATUSES:
            raise ValueError(f'status {status!r}')
        get = record.get
        retrying = status == capture.RETRYING
        reason = column_text(attempts.reason_of(get('reason'), retrying))
        return Fact(
            job_id, model, pk, QUEUED if retrying else status, trigger, column_text(get('queue')),
            reason, epoch_time(fire_ms / 1000 if fire_ms is not None else None), None, epoch_time(get('started')),
            epoch_time(get('ended')), column_text(get('worker')), column_text(get('error'), limit=None), True,
            attempts.number(get('attempt')), retrying,
        )  # fmt: skip
    except Exception as exc:
        logger.warning('Dropping a malformed run outcome %r: %r', raw[:200], exc)
        return None


@functools.lru_cache(maxsize=10_000)  # records name the same few rows again and again
def schedule_of(template: str) -> tuple[type[ScheduleBase], Any]:
    """The model and primary key of a row's template id (KeyError or ValidationError if no row can have it)."""
    model_name, pk = keys.template_owner(template) or ('', '')
    model = MODELS_BY_NAME[model_name]
    return model, row_pk(model, pk)


MAX_PLAIN_PK_DIGITS = 18
"""Digits of a primary key taken as it is: every such number fits the rows' keys (BigAutoField, the app's
``default_auto_field``: up to 2**63 - 1)."""


def row_pk(model: type[ScheduleBase], raw: str) -> Any:
    """The primary key a record names, as the column holds it; ValidationError if no row can have it (a number
    beyond the column's range would fail the whole batch's query, not just this record)."""
    if type(raw) is str and len(raw) <= MAX_PLAIN_PK_DIGITS and raw.isascii() and raw.isdigit():
        return int(raw)  # what the field's checks give, at a tenth of their cost: one-offs name a new row each time
    return _checked_pk(model, raw)


@functools.lru_cache(maxsize=10_000)
def _checked_pk(model: type[ScheduleBase], raw: str) -> Any:
    field = model._meta.pk
    value = field.to_python(raw)
    field.run_validators(value)
    return value


def epoch_time(epoch: Any) -> datetime | None:
    if type(epoch) is float or type(epoch) is int:  # not bool, nor anything else that claims to be a number
        # The time zone given by position: by keyword, CPython parses the arguments at twice the cost.
        return datetime.fromtimestamp(epoch, UTC)  # OverflowError, ValueError or OSError if out of range
    if epoch is None:
        return None
    raise ValueError(f'time: {epoch!r}')


def column_text(value: Any, limit: int | None = MAX_TEXT) -> str:
    """A text of a record as a column can hold it: cut to ``limit``, without NUL (PostgreSQL refuses it, and one
    such record would fail every batch after it)."""
    if not isinstance(value, str):
        return ''
    return value.replace('\x00', '\\x00')[:limit]
