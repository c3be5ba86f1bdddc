"""Rows whose after-commit sync failed, remembered in the database until the leader's next reconciliation syncs them.

A row saved or deleted while Redis did not answer the process that wrote it is brought in line at the first pass
that Redis answers, whether or not the leader noticed the outage. ``modified`` finds the rows changed since the last
pass too, but a deleted row has no ``modified`` left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import DatabaseError, models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

logger = logging.getLogger(__name__)


class UnsyncedRow(models.Model):
    """One schedule row whose sync failed after its transaction committed (written outside that transaction)."""

    model = models.CharField(_('model'), max_length=100, help_text=_('The schedule model, as app_label.model.'))
    object_pk = models.CharField(_('primary key'), max_length=64)
    noted = models.DateTimeField(_('noted'), default=timezone.now)

    class Meta:
        verbose_name = _('unsynced schedule row')
        verbose_name_plural = _('unsynced schedule rows')
        default_permissions = ()

    def __str__(self) -> str:
        return f'{self.model} {self.object_pk}'


def note(model: type[models.Model], pks: Iterable[Any], using: str) -> None:
    """Remembers rows whose sync failed; if the database refuses too, the modified watermark and the sweep remain."""
    label = model._meta.label_lower
    try:
        UnsyncedRow.objects.using(using).bulk_create([UnsyncedRow(model=label, object_pk=str(pk)) for pk in pks])
    except DatabaseError:
        logger.exception('Could not remember the %s rows whose sync failed; reconciliation finds them later', label)
