"""The scheduling policies of a schedule row: retries of each run (every kind), and for periodic schedules the
jitter, the window of validity and what to do with the slots missed during downtime (catch-up).

Each policy is a field group mixed into the models, with its rules and the part of the template's meta it becomes
(``policy_meta``): the loop applies them when it plans a move (``core.moves``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone as django_timezone
from django.utils.translation import gettext_lazy as _

from .choices import Catchup
from .core import limits
from .row_validation import naive_time_errors, whole


def _retry_delays_validator(value: Any) -> None:
    problem = limits.retry_delays_problem(value)
    if problem:
        raise ValidationError(
            _('Enter a JSON list of seconds, e.g. [10, 60, 300]: %(problem)s.') % {'problem': problem}
        )


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class RetryPolicy(models.Model):
    """How often a failed run is tried again, and after how long."""

    retries = models.PositiveSmallIntegerField(
        _('retries'),
        default=0,
        validators=[MaxValueValidator(limits.MAX_RETRIES)],
        help_text=_('How many times a failed run is tried again (0: never).'),
    )
    retry_delays = models.JSONField(
        _('retry delays'),
        default=list,
        blank=True,
        validators=[_retry_delays_validator],
        help_text=_(
            'Seconds to wait before each retry, as a JSON list, e.g. [10, 60, 300]; the last is used for the later '
            'retries. Empty: retry at once.'
        ),
    )

    RETRY_FIELDS: tuple[str, ...] = ('retries', 'retry_delays')

    class Meta:
        abstract = True

    def retry_errors(self) -> dict[str, Any]:
        # Django runs no field validator on an "empty" value ('', None, {}, ()), so those are refused here.
        if not isinstance(self.retry_delays, list):
            return {'retry_delays': [_('Enter a JSON list of seconds, e.g. [10, 60, 300], or [] for none.')]}
        return {}

    def retry_meta(self) -> dict[str, Any]:
        """Our part of the template's meta that the loop reads; defaults are left out (older templates lack them)."""
        if not self.retries:
            return {}
        return {'retries': self.retries, 'retry_delays': list(self.retry_delays or [])}


class RunPolicy(models.Model):
    """What a periodic schedule adds to its retries (mixed in before ``RetryPolicy``): jitter, a window of validity
    and the catch-up after downtime."""

    jitter = models.PositiveIntegerField(
        _('jitter'),
        default=0,
        validators=[MaxValueValidator(limits.MAX_JITTER)],
        help_text=_(
            'Each run is enqueued up to this many seconds after its slot, at random (never as late as the next slot), '
            'so that schedules due together spread out. 0: no jitter.'
        ),
    )
    valid_from = models.DateTimeField(
        _('valid from'), null=True, blank=True, help_text=_('No run before this time. Empty: from now.')
    )
    valid_until = models.DateTimeField(
        _('valid until'),
        null=True,
        blank=True,
        help_text=_('No run after this time; the schedule is then finished. Empty: for ever.'),
    )
    catchup = models.CharField(
        _('catch-up'),
        max_length=8,
        choices=Catchup.choices,
        default=Catchup.LATEST,
        help_text=_(
            'What to do with the slots missed while the scheduler was down or paused. Slots later than the misfire '
            'grace are skipped in any case.'
        ),
    )
    catchup_limit = models.PositiveIntegerField(
        _('catch-up limit'),
        default=limits.DEFAULT_CATCHUP_LIMIT,
        validators=[MinValueValidator(1), MaxValueValidator(limits.MAX_CATCHUP_LIMIT)],
        help_text=_('With catch-up "all": at most this many missed slots run (the newest); older ones are skipped.'),
    )

    RUN_POLICY_FIELDS: tuple[str, ...] = ('jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit')

    class Meta:
        abstract = True

    # -- the window of validity (the loop applies it to each slot: core.run_policy) ----------------------------

    def window_closed(self, now: datetime | None = None) -> bool:
        """Whether the window is over: the schedule is finished (extending ``valid_until`` reopens it)."""
        until = _aware(self.valid_until)
        return until is not None and until < (now or django_timezone.now())

    @staticmethod
    def window_closed_q() -> Q:
        return Q(valid_until__lt=Now())

    def within_window(
        self, due: datetime | None, at_or_after: Callable[[datetime], datetime | None]
    ) -> datetime | None:
        """``due``, or the first slot at or after ``valid_from`` (slots before it are none); None after the window."""
        start, until = _aware(self.valid_from), _aware(self.valid_until)
        if due is not None and start is not None and due < start:
            due = at_or_after(start)
        if due is not None and until is not None and due > until:
            return None
        return due

    def window_after(self, after: datetime) -> datetime:
        """The moment the next runs strictly after ``after`` are counted from: the window's start at the earliest."""
        start = _aware(self.valid_from)
        if start is not None and django_timezone.is_aware(after) and after < start:
            return start - timedelta(milliseconds=1)
        return after

    def within_window_only(self, runs: list[datetime]) -> list[datetime]:
        until = _aware(self.valid_until)
        return [run for run in runs if until is None or run <= until]

    def first_due(self, now: datetime, *, begun: bool = False) -> datetime | None:
        return self.within_window(self._first_slot(now, begun=begun), self._slot_at_or_after)

    def next_runs(self, count: int = 5, after: datetime | None = None) -> list[datetime]:
        """The next ``count`` fire times (aware UTC) within the window of validity, for previews."""
        return self.within_window_only(self._next_slots(count, self.window_after(after or django_timezone.now())))

    def _first_slot(self, now: datetime, *, begun: bool) -> datetime | None:
        raise NotImplementedError

    def _slot_at_or_after(self, moment: datetime) -> datetime | None:
        raise NotImplementedError

    def _next_slots(self, count: int, after: datetime) -> list[datetime]:
        raise NotImplementedError

    def run_policy_errors(self) -> dict[str, Any]:
        errors: dict[str, Any] = naive_time_errors(self, 'valid_from', 'valid_until')
        start, end = self.valid_from, self.valid_until
        if isinstance(start, datetime) and isinstance(end, datetime) and _comparable(start, end) and end <= start:
            errors['valid_until'] = [_('Enter a time after "valid from".')]
        if whole(self.catchup_limit) and self.catchup_limit < 1:
            errors['catchup_limit'] = [_('Enter at least 1 slot.')]
        return errors

    def run_policy_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.jitter:
            meta['jitter'] = self.jitter
        if self.valid_from is not None:
            meta['valid_from'] = _epoch(self.valid_from)
        if self.valid_until is not None:
            meta['valid_until'] = _epoch(self.valid_until)
        if self.catchup != Catchup.LATEST:
            meta['catchup'] = self.catchup
            meta['catchup_limit'] = self.catchup_limit
        return meta


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if django_timezone.is_aware(value) else django_timezone.make_aware(value)


def _comparable(first: datetime, second: datetime) -> bool:
    return (first.tzinfo is None) == (second.tzinfo is None)
