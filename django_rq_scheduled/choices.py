"""The choices of the schedule fields: what to do on overlap and after downtime, and the units of an interval with
their seconds."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Overlap(models.TextChoices):
    ALLOW = 'allow', _('Allow: enqueue every run')
    SKIP = 'skip', _('Skip a run while the previous one is queued or running')
    BUFFER_ONE = 'buffer_one', _('Buffer one: keep one run waiting until the previous one ends')
    CANCEL_OTHER = 'cancel_other', _('Cancel other: cancel or stop the previous run, then run the new one')


class Catchup(models.TextChoices):
    LATEST = 'latest', _('Latest: one run for all the slots missed')
    NONE = 'none', _('None: skip every slot missed')
    ALL = 'all', _('All: each slot missed once, oldest first, up to the catch-up limit')


FROM_DATABASE, FROM_CODE = 'db', 'code'


class Source(models.TextChoices):
    DATABASE = FROM_DATABASE, _('database')
    CODE = FROM_CODE, _('code')


class IntervalUnit(models.TextChoices):
    SECONDS = 'seconds', _('seconds')
    MINUTES = 'minutes', _('minutes')
    HOURS = 'hours', _('hours')
    DAYS = 'days', _('days')
    WEEKS = 'weeks', _('weeks')


UNIT_SECONDS = {'seconds': 1, 'minutes': 60, 'hours': 3600, 'days': 86400, 'weeks': 604800}
