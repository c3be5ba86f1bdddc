"""The after-commit buffer: rows saved, updated or deleted in a transaction, handed on together once it commits.

Rows of one transaction are announced together, per model, by the ``rows_committed`` signal (``signals`` syncs
them); a rolled-back transaction announces nothing. Outside a transaction they are announced at once.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.db import transaction
from django.dispatch import Signal

rows_committed = Signal()
"""Sent once per model and transaction with ``pks`` (sorted), ``created`` (those of them inserted in the transaction,
sorted) and ``using``; the sender is the model."""

_pending = threading.local()


def _pending_for(using: str, kind: str = 'by_alias') -> dict[type, set[Any]]:
    if not hasattr(_pending, kind):
        setattr(_pending, kind, defaultdict(lambda: defaultdict(set)))
    by_model: dict[type, set[Any]] = getattr(_pending, kind)[using]
    return by_model


def schedule_sync(model: type, pks: Iterable[Any], using: str, *, created: bool = False) -> None:
    """Announces these rows once the current transaction commits (at once outside a transaction); ``created``:
    they were inserted just now, so Redis cannot hold anything of theirs yet (their sync need not read it first)."""
    pks = list(pks)
    _pending_for(using)[model].update(pks)
    if created:
        _pending_for(using, 'created')[model].update(pks)
    transaction.on_commit(partial(flush, using), using=using)


def flush(using: str) -> None:
    pending, created = _pending_for(using), _pending_for(using, 'created')
    batches = [(model, sorted(pks), sorted(created.get(model, set()) & pks)) for model, pks in pending.items() if pks]
    pending.clear()
    created.clear()
    for model, pks, inserted in batches:
        rows_committed.send(sender=model, pks=pks, created=inserted, using=using)


_unsynced = threading.local()


def note_unsynced(model: type, pks: Iterable[Any], error: Exception) -> None:
    """Remembers, for this thread, rows committed but not brought into Redis (the admin tells whoever saved them)."""
    if not hasattr(_unsynced, 'errors'):
        _unsynced.errors = {}
    _unsynced.errors.update({(model, pk): error for pk in pks})


def unsynced_error(model: type, pk: Any) -> Exception | None:
    """Why this row, committed by this thread, is not in Redis yet (None if it is); asking forgets it."""
    errors: dict[tuple[type, Any], Exception] = getattr(_unsynced, 'errors', {})
    return errors.pop((model, pk), None)


_validated = threading.local()


def note_validated(model: type, versions: Iterable[str]) -> None:
    """Remembers, for this thread, versions of definitions that passed validation as rows of ``model`` were inserted:
    their sync after commit need not validate those rows again (``sync.sync_rows``). A version is a digest of the
    whole definition, so a version left over from a rolled-back transaction still names a valid definition."""
    if not hasattr(_validated, 'versions'):
        _validated.versions = defaultdict(set)
    _validated.versions[model].update(versions)


def take_validated(model: type) -> frozenset[str]:
    """The versions noted for ``model`` by this thread, forgotten as they are given."""
    versions: dict[type, set[str]] = getattr(_validated, 'versions', {})
    return frozenset(versions.pop(model, ()))
