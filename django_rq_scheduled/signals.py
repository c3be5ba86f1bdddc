"""Receivers that validate rows before they are written and sync them to Redis after the transaction commits."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

logger = logging.getLogger(__name__)
_pending = threading.local()


def _pending_for(using: str) -> dict[type, set[Any]]:
    if not hasattr(_pending, 'by_alias'):
        _pending.by_alias = defaultdict(lambda: defaultdict(set))
    return _pending.by_alias[using]


def schedule_sync(model: type, pks: Iterable[Any], using: str) -> None:
    """Syncs these rows once the current transaction commits (at once outside a transaction).

    Rows of one transaction are synced together, in batches; a rolled-back transaction syncs nothing.
    """
    _pending_for(using)[model].update(pks)
    transaction.on_commit(partial(flush, using), using=using)


def flush(using: str) -> None:
    from .sync import sync_rows

    pending = _pending_for(using)
    batches = [(model, sorted(pks)) for model, pks in pending.items() if pks]
    pending.clear()
    for model, pks in batches:
        try:
            sync_rows(model, pks, using=using)
        except Exception:
            # The rows are committed: raising now would not undo them, only fail the request that saved them (Redis
            # out of memory, read-only, away...). Reconciliation brings Redis in line later.
            logger.exception('Could not sync %d %s rows to Redis; reconciliation will', len(pks), model.__name__)


def validate_before_save(sender: type, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    # pre_save also runs for fixtures (raw=True) and for plain ORM saves, which never call full_clean().
    if raw:
        _fill_timestamps(instance)
    instance.full_clean(validate_unique=False, validate_constraints=False)


def _fill_timestamps(instance: Any) -> None:
    """Fixtures skip auto_now(_add); a hand-written fixture without ``created``/``modified`` still loads."""
    from django.utils import timezone

    now = timezone.now()
    instance.created = instance.created or now
    instance.modified = instance.modified or now


def sync_after_save(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    schedule_sync(sender, [instance.pk], using)


def sync_after_delete(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    schedule_sync(sender, [instance.pk], using)


def connect() -> None:
    from .models import SCHEDULE_MODELS

    for model in SCHEDULE_MODELS:
        uid = f'django_rq_scheduled.{model.__name__}'
        pre_save.connect(validate_before_save, sender=model, dispatch_uid=f'{uid}.validate')
        post_save.connect(sync_after_save, sender=model, dispatch_uid=f'{uid}.sync')
        post_delete.connect(sync_after_delete, sender=model, dispatch_uid=f'{uid}.delete')
