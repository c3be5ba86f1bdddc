"""The app's signals, and its receivers: rows are validated before they are written, and synced to Redis after the
transaction commits."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import Signal
from django.utils import timezone

from . import sync, unsynced
from .models import SCHEDULE_MODELS
from .pending import note_unsynced, rows_committed, schedule_sync

logger = logging.getLogger(__name__)

# Sent by the leader (``manage.py rqscheduler``) as it reads runs in, after their rows are committed, with the
# keyword arguments ``schedule`` (the row) and ``run`` (its ``Run``); the sender is the schedule's model. A receiver
# that raises is logged and stops nothing.
run_finished = Signal()
"""A run of a schedule finished."""
run_failed = Signal()
"""A run failed (raised, timed out, lost its worker) or was stopped."""
run_skipped = Signal()
"""An occurrence was not run: the previous run still going (overlap), or too late (misfire grace)."""

# Sent by the leader once per change of state, not per run, with the same keyword arguments: ``run`` is the run
# that changed it. See docs/alerts.rst.
schedule_failing = Signal()
"""A schedule's failed runs in a row reached ``ALERT_AFTER_FAILURES``."""
schedule_recovered = Signal()
"""A failing schedule's first success."""


def validate_before_save(sender: type, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    # pre_save also runs for fixtures (raw=True) and for plain ORM saves, which never call full_clean().
    if raw:
        _fill_timestamps(instance)
    instance.full_clean(validate_unique=False, validate_constraints=False)


def _fill_timestamps(instance: Any) -> None:
    """Fixtures skip auto_now(_add); a hand-written fixture without ``created``/``modified`` still loads."""
    now = timezone.now()
    instance.created = instance.created or now
    instance.modified = instance.modified or now


def sync_after_save(sender: type, instance: Any, using: str, created: bool = False, **kwargs: Any) -> None:
    schedule_sync(sender, [instance.pk], using, created=created)


def sync_after_delete(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    schedule_sync(sender, [instance.pk], using)


def sync_committed_rows(sender: Any, pks: list[Any], using: str, created: Any = (), **kwargs: Any) -> None:
    try:
        sync.sync_rows(sender, pks, using=using, created=created)
    except Exception as exc:
        # The rows are committed: raising now would not undo them, only fail the request that saved them (Redis
        # out of memory, read-only, away...). Reconciliation brings Redis in line later.
        logger.exception(
            'Saved %d %s rows, but could not bring them into Redis; the scheduler (manage.py rqscheduler) does so '
            'at its next reconciliation once Redis answers',
            len(pks),
            sender.__name__,
        )
        note_unsynced(sender, pks, exc)
        unsynced.note(sender, pks, using)


def connect() -> None:
    rows_committed.connect(sync_committed_rows, dispatch_uid='django_rq_scheduled.sync')
    for model in SCHEDULE_MODELS:
        uid = f'django_rq_scheduled.{model.__name__}'
        pre_save.connect(validate_before_save, sender=model, dispatch_uid=f'{uid}.validate')
        post_save.connect(sync_after_save, sender=model, dispatch_uid=f'{uid}.sync')
        post_delete.connect(sync_after_delete, sender=model, dispatch_uid=f'{uid}.delete')
