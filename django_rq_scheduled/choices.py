"""The choices of the schedule fields: what to do on overlap, and the units of an interval with their seconds."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Overlap(models.TextChoices):
    ALLOW = 'allow', _('Allow: enqueue every run')
    SKIP = 'skip', _('Skip a run while the previous one is queued or running')


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
