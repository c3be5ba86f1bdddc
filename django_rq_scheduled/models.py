"""One-off, repeatable and cron jobs as Django models; ``sync`` keeps Redis in line with them after commit.

Each model says what its template is (``first_due``, ``schedule_meta``); sync asks, and never tests which model a
row is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone as django_timezone
from django.utils.translation import gettext_lazy as _

from . import conf, task_calls, validators
from .choices import FROM_DATABASE, UNIT_SECONDS, IntervalUnit, Overlap, Source
from .core import cron, keys, scores
from .core.jobs import TEMPLATE_FORMAT
from .policies import RetryPolicy, RunPolicy
from .querysets import LOOP_FIELDS, ScheduleQuerySet
from .row_validation import RowValidation, whole
from .runs import Run, RunSummary
from .unsynced import UnsyncedRow  # noqa: F401 (a model of the app)

__all__ = ['SCHEDULE_MODELS', 'CronJob', 'RepeatableJob', 'Run', 'ScheduleBase', 'ScheduledJob', 'SchedulerStatus']


def default_timezone() -> str:
    return conf.default_timezone()


def default_misfire_grace() -> int | None:
    return conf.get_setting('DEFAULT_MISFIRE_GRACE')


def latest_schedule_time(moment: datetime) -> datetime:
    """The latest time a schedule may run (conf.py), naive when ``moment`` is (USE_TZ off)."""
    latest = conf.LATEST_SCHEDULE_TIME
    return latest if django_timezone.is_aware(moment) else django_timezone.make_naive(latest, latest.tzinfo)


def _aware(value: datetime) -> datetime:
    return value if django_timezone.is_aware(value) else django_timezone.make_aware(value)


def _until_the_limit(due: datetime | None) -> datetime | None:
    return due if due is not None and due <= conf.LATEST_SCHEDULE_TIME else None


def _slot_time(due: float) -> datetime | None:
    # Compared as a number: a datetime past the limit may be past year 9999 (OverflowError).
    return datetime.fromtimestamp(due, tz=scores.UTC) if due <= conf.LATEST_SCHEDULE_TIME.timestamp() else None


def check_constraint(condition: Q, name: str) -> models.CheckConstraint:
    import django

    if django.VERSION >= (5, 1):
        return models.CheckConstraint(condition=condition, name=name)
    return models.CheckConstraint(check=condition, name=name)  # type: ignore[call-arg,unused-ignore]


class ScheduleBase(RowValidation, RunSummary, RetryPolicy):
    """What every kind of schedule shares: what to run, where, with which RQ options, run feedback and the summary
    of its runs' outcomes (``RunSummary``)."""

    name = models.CharField(_('name'), max_length=128, unique=True, help_text=_('A unique name for this schedule.'))
    callable = models.CharField(
        _('callable'),
        max_length=255,
        validators=[validators.validate_callable],
        help_text=_('Dotted path of the function to run, e.g. "myapp.tasks.send_report".'),
    )
    args = models.JSONField(
        _('positional arguments'),
        default=list,
        blank=True,
        validators=[validators.validate_args],
        help_text=_('A JSON list of positional arguments.'),
    )
    kwargs = models.JSONField(
        _('keyword arguments'),
        default=dict,
        blank=True,
        validators=[validators.validate_kwargs],
        help_text=_('A JSON object of keyword arguments.'),
    )
    queue = models.CharField(
        _('queue'),
        max_length=255,
        default='default',
        validators=[validators.validate_queue],
        help_text=_('The RQ queue (a key of RQ_QUEUES) the job is enqueued on.'),
    )
    enabled = models.BooleanField(_('enabled'), default=True, help_text=_('Disabled schedules do not run.'))
    timeout = models.PositiveIntegerField(
        _('timeout'), null=True, blank=True, help_text=_("Seconds a run may take; empty for the queue's default.")
    )
    result_ttl = models.IntegerField(
        _('result TTL'),
        null=True,
        blank=True,
        help_text=_("Seconds a run's result is kept; -1 for ever, empty for RQ's default (500)."),
    )
    ttl = models.PositiveIntegerField(
        _('TTL'), null=True, blank=True, help_text=_('Seconds a run may wait in its queue before it is discarded.')
    )
    at_front = models.BooleanField(
        _('at front'), default=False, help_text=_('Put runs at the front of their queue instead of the back.')
    )
    description = models.CharField(_('description'), max_length=255, blank=True, help_text=_('Free text.'))
    misfire_grace = models.PositiveIntegerField(
        _('misfire grace'),
        null=True,
        blank=True,
        default=default_misfire_grace,
        help_text=_(
            'Seconds a run may be late (after downtime) and still run; later runs are skipped. Empty: always run once.'
        ),
    )
    overlap = models.CharField(
        _('overlap'),
        max_length=12,
        choices=Overlap.choices,
        default=Overlap.ALLOW,
        help_text=_('What to do when a run is due while the previous one is still queued or running.'),
    )
    next_run = models.DateTimeField(
        _('next run'), null=True, blank=True, editable=False, help_text=_('When the next run is due.')
    )
    last_run = models.DateTimeField(
        _('last run'), null=True, blank=True, editable=False, help_text=_('When the last run was enqueued.')
    )
    run_count = models.PositiveIntegerField(
        _('run count'),
        default=0,
        editable=False,
        help_text=_('How many scheduled runs have been enqueued (runs started with "run now" are extra).'),
    )
    created = models.DateTimeField(_('created'), auto_now_add=True, help_text=_('When this schedule was created.'))
    modified = models.DateTimeField(_('modified'), auto_now=True, help_text=_('When this schedule was last changed.'))
    source = models.CharField(
        _('source'), max_length=4, choices=Source.choices, default=FROM_DATABASE, editable=False,
        help_text=_('Where the schedule is defined: in the database (the admin, the ORM) or in code.'),
    )  # fmt: skip
    code_version = models.CharField(
        _('code version'), max_length=16, blank=True, editable=False,
        help_text=_('Digest of its declaration in code at the last sync; empty once removed from code.'),
    )  # fmt: skip

    objects = ScheduleQuerySet.as_manager()

    is_periodic: ClassVar[bool] = True
    """False for one-off schedules: they run once, whatever is edited after."""

    DEFINITION_FIELDS: tuple[str, ...] = (
        'callable', 'args', 'kwargs', 'queue', 'timeout', 'result_ttl', 'ttl', 'at_front', 'description',
        'misfire_grace', 'overlap', *RetryPolicy.RETRY_FIELDS,
    )  # fmt: skip

    class Meta:
        abstract = True
        ordering = ['name']
        base_manager_name = 'objects'
        # Only the failing rows: the banner's count and the "failing" filter read them, and a run that succeeds
        # after a success changes nothing in it.
        indexes = [
            models.Index(
                fields=['consecutive_failures'], condition=Q(consecutive_failures__gt=0), name='drqs_%(class)s_failing'
            ),
            models.Index(fields=['modified'], name='drqs_%(class)s_modified'),  # rows changed: ``reconciliation``
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Saves the row, never the loop's feedback: an edit of an instance loaded before a run cannot undo the run.

        On an existing row the fields the loop owns (``LOOP_FIELDS``) are left out of the UPDATE, whatever this
        instance holds for them; they are written by the loop alone (``record_feedback``).
        """
        if not self._state.adding and kwargs.get('update_fields') is None and not kwargs.get('force_insert'):
            kwargs['update_fields'] = [
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name not in LOOP_FIELDS
            ]
        super().save(*args, **kwargs)

    def natural_key(self) -> tuple[str]:
        return (self.name,)

    # -- what sync needs --------------------------------------------------------------------------------------

    @property
    def template_id(self) -> str:
        return keys.template_id(self._meta.model_name or '', self.pk)

    @property
    def owner(self) -> str:
        return keys.owner_id(self._meta.label_lower, self.pk)

    @property
    def is_finished(self) -> bool:
        return False

    @classmethod
    def finished_q(cls) -> Q:
        """The rows that ran their last run, as a query."""
        raise NotImplementedError

    def first_due(self, now: datetime, *, begun: bool = False) -> datetime | None:
        """When the row's template is next due, or None when it has nothing left to run before the latest schedule
        time (conf.py). ``begun``: whether the schedule ran or skipped a slot already."""
        raise NotImplementedError

    def schedule_meta(self) -> dict[str, Any]:
        """What makes this kind of schedule: ``core.jobs.template_meta``'s kind and timing arguments."""
        raise NotImplementedError

    @classmethod
    def policy_fields(cls) -> tuple[str, ...]:
        return cls.RETRY_FIELDS

    def policy_meta(self) -> dict[str, Any]:
        """The policies the loop applies to each run (``policies``), for our part of the template's meta."""
        return self.retry_meta()

    def policy_errors(self) -> dict[str, Any]:
        return self.retry_errors()

    def definition(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.DEFINITION_FIELDS}
        values['template_format'] = TEMPLATE_FORMAT
        values.update(task_calls.definition_of(self.callable))
        return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in values.items()}

    def version(self) -> str:
        """A digest of the definition: Redis holds it per template, so drift is found without reading templates."""
        encoded = json.dumps(self.definition(), sort_keys=True, default=str).encode()
        return hashlib.sha1(encoded, usedforsecurity=False).hexdigest()[:16]

    # -- the ORM API for views --------------------------------------------------------------------------------

    def enable(self) -> None:
        type(self).objects.filter(pk=self.pk).enable()
        self.enabled = True

    def disable(self) -> None:
        type(self).objects.filter(pk=self.pk).disable()
        self.enabled = False

    def run_now(self) -> Any:
        """Enqueues one run now, without moving the next scheduled one; returns the RQ job."""
        from .servers import run_now

        return run_now(self)

    def next_runs(self, count: int = 5, after: datetime | None = None) -> list[datetime]:
        """The next ``count`` fire times (aware UTC), for previews."""
        raise NotImplementedError


class ScheduledJob(ScheduleBase):
    """A job that runs once, at ``scheduled_time``."""

    scheduled_time = models.DateTimeField(
        _('scheduled time'), help_text=_('When to run. A time in the past runs at once when saved.')
    )
    has_run = models.BooleanField(
        _('has run'), default=False, editable=False, help_text=_('Whether the job has been enqueued.')
    )

    DEFINITION_FIELDS = (*ScheduleBase.DEFINITION_FIELDS, 'scheduled_time')
    ROW_FIELDS = ('name', 'scheduled_time')  # many one-offs of a bulk differ in their time alone
    is_periodic = False

    class Meta(ScheduleBase.Meta):
        verbose_name = _('scheduled job')
        verbose_name_plural = _('scheduled jobs')

    @property
    def is_finished(self) -> bool:
        return self.has_run

    @classmethod
    def finished_q(cls) -> Q:
        return Q(has_run=True)

    def first_due(self, now: datetime, *, begun: bool = False) -> datetime | None:
        return _until_the_limit(_aware(self.scheduled_time))

    def schedule_meta(self) -> dict[str, Any]:
        return {'kind': 'once'}

    def row_field_errors(self) -> dict[str, Any]:
        return {**super().row_field_errors(), **self._naive_time_error('scheduled_time')}

    def next_runs(self, count: int = 5, after: datetime | None = None) -> list[datetime]:
        return [] if self.has_run or not self.scheduled_time else [self.scheduled_time][:count]


class PeriodicSchedule(RunPolicy, ScheduleBase):
    """What the periodic schedules share: a number of runs in total, and the policies of ``RunPolicy``."""

    repeat = models.PositiveIntegerField(
        _('repeat'),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_('How many runs in total; empty for ever.'),
    )

    DEFINITION_FIELDS = (*ScheduleBase.DEFINITION_FIELDS, *RunPolicy.RUN_POLICY_FIELDS)

    class Meta(ScheduleBase.Meta):
        abstract = True

    @classmethod
    def policy_fields(cls) -> tuple[str, ...]:
        return (*cls.RETRY_FIELDS, *cls.RUN_POLICY_FIELDS)

    def policy_meta(self) -> dict[str, Any]:
        return {**self.retry_meta(), **self.run_policy_meta()}

    def policy_errors(self) -> dict[str, Any]:
        return {**self.retry_errors(), **self.run_policy_errors()}

    @property
    def remaining_runs(self) -> int | None:
        return None if self.repeat is None else max(0, self.repeat - self.run_count)

    @property
    def is_finished(self) -> bool:
        return self.remaining_runs == 0 or self.window_closed()

    @classmethod
    def finished_q(cls) -> Q:
        return Q(repeat__isnull=False, run_count__gte=models.F('repeat')) | cls.window_closed_q()


class RepeatableJob(PeriodicSchedule):
    """A job that runs every ``interval`` units from ``scheduled_time``, ``repeat`` times in total."""

    scheduled_time = models.DateTimeField(
        _('first run'), help_text=_('When the first run is due. A time at or before now runs at once when saved.')
    )
    interval = models.PositiveIntegerField(
        _('interval'), validators=[MinValueValidator(1)], help_text=_('How often to run, in the unit below.')
    )
    interval_unit = models.CharField(
        _('interval unit'), max_length=8, choices=IntervalUnit.choices, default=IntervalUnit.MINUTES,
        help_text=_('The unit of the interval.'),
    )  # fmt: skip

    DEFINITION_FIELDS = (*PeriodicSchedule.DEFINITION_FIELDS, 'scheduled_time', 'interval', 'interval_unit', 'repeat')

    class Meta(PeriodicSchedule.Meta):
        verbose_name = _('repeatable job')
        verbose_name_plural = _('repeatable jobs')
        constraints = [
            check_constraint(Q(interval__gt=0), 'drqs_repeatable_interval_positive'),
            check_constraint(Q(repeat__isnull=True) | Q(repeat__gt=0), 'drqs_repeatable_repeat_positive'),
        ]

    @property
    def interval_seconds(self) -> int:
        return self.interval * UNIT_SECONDS[self.interval_unit]

    def _first_slot(self, now: datetime, *, begun: bool) -> datetime | None:
        start = _aware(self.scheduled_time).timestamp()
        return _slot_time(scores.first_due_slot(start, self.interval_seconds, now.timestamp(), begun=begun))

    def _slot_at_or_after(self, moment: datetime) -> datetime | None:
        start = _aware(self.scheduled_time).timestamp()
        return _slot_time(scores.slot_at_or_after(start, self.interval_seconds, moment.timestamp()))

    def schedule_meta(self) -> dict[str, Any]:
        return {'kind': 'interval', 'interval': self.interval_seconds}

    def clean(self) -> None:
        super().clean()
        errors = self._naive_time_error('scheduled_time')
        if whole(self.interval) and self.interval <= 0:
            errors['interval'] = _('Enter an interval greater than zero.')
        elif self._too_long_interval():
            days = conf.MAX_INTERVAL_SECONDS // UNIT_SECONDS['days']
            errors['interval'] = _('Enter an interval of at most %(days)d days.') % {'days': days}
        if whole(self.repeat) and self.repeat <= 0:
            errors['repeat'] = _('Enter at least 1 run, or leave it empty to run for ever.')
        if errors:
            raise ValidationError(errors)

    def _too_long_interval(self) -> bool:
        known = whole(self.interval) and self._usable('interval') and self._usable('interval_unit')
        return known and self.interval_unit in UNIT_SECONDS and self.interval_seconds > conf.MAX_INTERVAL_SECONDS

    def _next_slots(self, count: int, after: datetime) -> list[datetime]:
        """The runs strictly after ``after``, none later than the latest schedule time (conf.py)."""
        if self.is_finished or not self.scheduled_time or not self.interval:
            return []
        start, step = self.scheduled_time, self.interval_seconds
        elapsed = (after - start).total_seconds()
        first = scores.slots_in(elapsed, step) + 1 if elapsed >= 0 else 0
        limit = count if self.remaining_runs is None else min(count, self.remaining_runs)
        # Whole seconds from the start: a slot past the limit is never built, so no datetime overflows.
        room = (latest_schedule_time(start) - start).total_seconds()
        slots = itertools.takewhile(lambda slot: slot * step <= room, range(first, first + limit))
        return [start + timedelta(seconds=slot * step) for slot in slots]


class CronJob(PeriodicSchedule):
    """A job that runs on a cron string, in a time zone."""

    cron_string = models.CharField(
        _('cron string'),
        max_length=255,
        help_text=_('Minute, hour, day of month, month, day of week (and optional seconds), e.g. "0 7 * * 1-5".'),
    )
    timezone = models.CharField(
        _('time zone'),
        max_length=64,
        default=default_timezone,
        validators=[validators.validate_timezone],
        help_text=_('The IANA time zone the cron string is read in, e.g. "Europe/Paris".'),
    )

    DEFINITION_FIELDS = (*PeriodicSchedule.DEFINITION_FIELDS, 'cron_string', 'timezone', 'repeat')

    class Meta(PeriodicSchedule.Meta):
        verbose_name = _('cron job')
        verbose_name_plural = _('cron jobs')
        constraints = [check_constraint(Q(repeat__isnull=True) | Q(repeat__gt=0), 'drqs_cron_repeat_positive')]

    def _first_slot(self, now: datetime, *, begun: bool) -> datetime | None:
        return _until_the_limit(cron.next_fire_time(self.cron_string, now, self.timezone))

    def _slot_at_or_after(self, moment: datetime) -> datetime | None:
        return _until_the_limit(
            cron.next_fire_time(self.cron_string, moment - timedelta(milliseconds=1), self.timezone)
        )

    def schedule_meta(self) -> dict[str, Any]:
        return {'kind': 'cron', 'cron_string': self.cron_string, 'timezone': self.timezone}

    def clean(self) -> None:
        super().clean()
        if whole(self.repeat) and self.repeat <= 0:
            raise ValidationError({'repeat': _('Enter at least 1 run, or leave it empty to run for ever.')})
        if not self._usable('cron_string') or not self._usable('timezone'):
            return  # clean_fields() reported it
        try:
            cron.get_zone(self.timezone)
        except cron.CronError:
            return  # the timezone field's own validator reports it
        try:
            validators.validate_cron_string(self.cron_string, self.timezone)
        except ValidationError as exc:
            raise ValidationError({'cron_string': exc.messages}) from exc

    def _next_slots(self, count: int, after: datetime) -> list[datetime]:
        if self.is_finished:
            return []
        limit = count if self.remaining_runs is None else min(count, self.remaining_runs)
        if limit <= 0 or after >= latest_schedule_time(after):
            return []
        runs = cron.next_fire_times(self.cron_string, after, self.timezone, limit)
        return [run for run in runs if run <= conf.LATEST_SCHEDULE_TIME]


SCHEDULE_MODELS: tuple[type[ScheduleBase], ...] = (ScheduledJob, RepeatableJob, CronJob)


class SchedulerStatus(models.Model):
    """No table: gives the admin's scheduler status page its place in the app index and its permissions."""

    class Meta:
        managed = False
        default_permissions = ('view', 'change')
        verbose_name = _('scheduler status')
        verbose_name_plural = _('scheduler status')

    def __str__(self) -> str:
        return str(self._meta.verbose_name)
