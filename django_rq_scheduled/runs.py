"""Run history: one ``Run`` per occurrence of a schedule row (run, skipped or started by hand), and the summary of
its outcomes each schedule row keeps (``RunSummary``). Both are written by the leader alone (``history``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# The statuses and triggers as plain strings, for code (mypy reads the TextChoices members below as tuples).
QUEUED, STARTED, FINISHED, FAILED, STOPPED, CANCELED, SKIPPED = (
    'queued', 'started', 'finished', 'failed', 'stopped', 'canceled', 'skipped'
)  # fmt: skip
BY_SCHEDULE, BY_HAND = 'schedule', 'manual'


class RunStatus(models.TextChoices):
    QUEUED = QUEUED, _('queued')
    STARTED = STARTED, _('running')
    FINISHED = FINISHED, _('finished')
    FAILED = FAILED, _('failed')
    STOPPED = STOPPED, _('stopped')
    CANCELED = CANCELED, _('canceled')
    SKIPPED = SKIPPED, _('skipped')


OPEN_STATUSES = frozenset({QUEUED, STARTED})
"""A run in one of these may still change; any other status is its last."""
FAILURE_STATUSES = frozenset({FAILED, STOPPED})


class RunTrigger(models.TextChoices):
    SCHEDULE = BY_SCHEDULE, _('schedule')
    MANUAL = BY_HAND, _('by hand')


class RunQuerySet(models.QuerySet['Run']):
    def of_kind(self, model: type[models.Model]) -> RunQuerySet:
        return self.filter(schedule_type=ContentType.objects.get_for_model(model))

    def record_manual(self, row: models.Model, job_id: str, enqueued_at: datetime) -> Run:
        """The run of ``row`` just enqueued by hand (its outcome may have been read in already)."""
        run, _ = self.get_or_create(
            rq_job_id=job_id,
            defaults={
                'schedule_type': ContentType.objects.get_for_model(type(row)),
                'schedule_id': row.pk,
                'schedule_name': str(row),
                'trigger': BY_HAND,
                'queue': getattr(row, 'queue', ''),
                'enqueued_at': enqueued_at,
            },
        )
        return run


class Run(models.Model):
    """One occurrence of a schedule: when it was due, what became of it, and why."""

    schedule_type = models.ForeignKey(
        ContentType, on_delete=models.CASCADE, verbose_name=_('schedule kind'), related_name='+',
        db_index=False,  # drqs_run_schedule_newest starts with it: a second index would only slow every insert
    )  # fmt: skip
    schedule_id = models.PositiveBigIntegerField(_('schedule id'))
    schedule = GenericForeignKey('schedule_type', 'schedule_id')
    schedule_name = models.CharField(
        _('schedule name'), max_length=128, help_text=_("The schedule's name when the run was recorded.")
    )
    rq_job_id = models.CharField(
        _('RQ job id'),
        max_length=255,
        unique=True,
        help_text=_('The id of the RQ job of this run; a skipped run keeps the id it would have had.'),
    )
    queue = models.CharField(_('queue'), max_length=255, blank=True, help_text=_('The RQ queue the run went to.'))
    trigger = models.CharField(_('trigger'), max_length=8, choices=RunTrigger.choices, default=BY_SCHEDULE)
    status = models.CharField(_('status'), max_length=8, choices=RunStatus.choices, default=QUEUED)
    reason = models.CharField(
        _('reason'), max_length=255, blank=True, help_text=_('Why the run was skipped, stopped or failed, in words.')
    )
    fire_time = models.DateTimeField(
        _('fire time'), null=True, blank=True, help_text=_('The slot the run was due at; empty for runs by hand.')
    )
    delay = models.FloatField(
        _('jitter delay'), null=True, blank=True,
        help_text=_('Seconds the run was held back after its slot by the schedule\'s jitter.'),
    )  # fmt: skip
    enqueued_at = models.DateTimeField(_('enqueued at'), null=True, blank=True)
    started_at = models.DateTimeField(_('started at'), null=True, blank=True)
    ended_at = models.DateTimeField(_('ended at'), null=True, blank=True)
    worker = models.CharField(_('worker'), max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(
        _('attempts'), null=True, blank=True,
        help_text=_('How many times the job was started: more than 1 after retries; empty before its first start.'),
    )  # fmt: skip
    error = models.TextField(
        _('error'), blank=True, help_text=_("The exception's type and message, then its traceback (cut to 8,000).")
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        app_label = 'django_rq_scheduled'
        ordering = ['-id']
        verbose_name = _('run')
        verbose_name_plural = _('runs')
        indexes = [
            models.Index(fields=['schedule_type', 'schedule_id', '-id'], name='drqs_run_schedule_newest'),
            models.Index(fields=['status', 'ended_at'], name='drqs_run_status_ended'),
        ]
        default_permissions = ('view', 'delete')

    def __str__(self) -> str:
        return f'{self.schedule_name} {self.rq_job_id} ({self.get_status_display()})'

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def error_headline(self) -> str:
        return headline(self.error)


def headline(error: str) -> str:
    """The first line of a run's error: ``Type: message``."""
    return error.partition('\n')[0]


SUMMARY_FIELDS = frozenset(
    {
        'last_status', 'last_success_at', 'last_failure_at', 'consecutive_failures', 'success_count', 'failure_count',
        'last_error', 'recent_runs',
    }
)  # fmt: skip
RECENT_RUNS = 30
"""Runs a schedule row keeps as ``[id, status]`` pairs for its outcome strip: the admin draws it without a query."""


class RunSummary(models.Model):
    """What a schedule row keeps of its runs' outcomes, read-only, written as the leader reads them in."""

    runs: Any = GenericRelation(Run, content_type_field='schedule_type', object_id_field='schedule_id')
    last_status = models.CharField(
        _('last status'), max_length=8, choices=RunStatus.choices, blank=True, editable=False
    )
    last_success_at = models.DateTimeField(_('last success'), null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(_('last failure'), null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(_('consecutive failures'), default=0, editable=False)
    success_count = models.PositiveIntegerField(_('successes'), default=0, editable=False)
    failure_count = models.PositiveIntegerField(_('failures'), default=0, editable=False)
    last_error = models.CharField(
        _('last error'), max_length=255, blank=True, editable=False, help_text=_("The last failed run's error.")
    )
    recent_runs = models.JSONField(_('recent runs'), default=list, blank=True, editable=False)

    class Meta:
        abstract = True

    def remember(self, run: Any, status: str) -> None:
        """Folds a run that reached ``status`` into this summary (``run``: a ``Run``, or the same attributes)."""
        self.last_status = status
        moment = run.ended_at or timezone.now()
        if status == FINISHED:
            self.success_count += 1
            self.last_success_at = moment
            self.consecutive_failures = 0
        elif status in FAILURE_STATUSES:
            self.failure_count += 1
            self.last_failure_at = moment
            self.consecutive_failures += 1
            self.last_error = (run.error_headline or run.reason)[:255]
        if run.pk is None:
            return
        recent = self.recent_runs
        if len(recent) == RECENT_RUNS and run.pk < recent[0][0]:
            return  # older than the whole strip (its outcome read in late): it would be cut off again
        if not recent or recent[-1][0] < run.pk:
            recent = [*recent, [run.pk, status]]
        elif recent[-1][0] == run.pk:  # the newest run, a step further
            recent = [*recent[:-1], [run.pk, status]]
        else:  # a run shown already, or an older one read in late
            recent = sorted([entry for entry in recent if entry[0] != run.pk] + [[run.pk, status]])
        self.recent_runs = recent[-RECENT_RUNS:]
