"""The leader's reconciliation state on each Redis server (``keys.RECONCILE_KEY``): the epoch of the full pass the
periodic passes follow, the watermark of changed rows, and the cursors of the rolling sweep (``reconciliation``).

A full pass begins a new epoch and ends by writing a fresh state; a periodic pass writes the state only if the epoch
it read is still there, so a flush during a pass is never covered by that pass's watermark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast
from uuid import uuid4

from redis import Redis
from redis.exceptions import ResponseError

from .core import keys, scripts
from .models import SCHEDULE_MODELS


def begin_epoch(connection: Redis) -> str:
    """A new state holding only a new epoch: a periodic pass meanwhile sees no watermark and does a full pass."""
    epoch = uuid4().hex
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(keys.RECONCILE_KEY)  # ours; foreign data there (another type) would fail every pass
        pipe.hset(keys.RECONCILE_KEY, 'epoch', epoch)
        pipe.execute()
    return epoch


@dataclass
class ReconcileState:
    """What the periodic pass of one server goes on from (``keys.RECONCILE_KEY``)."""

    epoch: str
    watermark: float
    """Epoch seconds: when the last pass that completed began."""
    model: int = 0
    """The rolling sweep's model (an index of SCHEDULE_MODELS) ..."""
    after: str = ''
    """... and the primary key it verified last ('' = from the start)."""
    orphans: int = 0
    """The HSCAN cursor of the versions hash."""
    sweep_began: float = 0.0
    swept_at: float = 0.0
    """When the last complete verification of every row (a full pass or a rolling sweep) began."""

    @classmethod
    def parse(cls, raw: dict[bytes, bytes]) -> ReconcileState | None:
        """The state, or None if there is none or it cannot be read (someone else's data: a full pass rewrites it)."""
        try:
            state = cls(
                epoch=raw[b'epoch'].decode(),
                watermark=float(raw[b'watermark']),
                model=int(raw.get(b'model', 0)) % len(SCHEDULE_MODELS),
                after=raw.get(b'after', b'').decode(),
                orphans=max(0, int(raw.get(b'orphans', 0))),
                sweep_began=float(raw.get(b'sweep_began', 0)),
                swept_at=float(raw.get(b'swept_at', 0)),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
        return state if all(map(math.isfinite, (state.watermark, state.sweep_began, state.swept_at))) else None

    def fields(self) -> list[Any]:
        values = {
            'watermark': repr(self.watermark), 'model': self.model, 'after': self.after, 'orphans': self.orphans,
            'sweep_began': repr(self.sweep_began), 'swept_at': repr(self.swept_at),
        }  # fmt: skip
        return [item for pair in values.items() for item in pair]


def read_state(connection: Redis) -> ReconcileState | None:
    try:
        raw = connection.hgetall(keys.RECONCILE_KEY)
    except ResponseError:
        return None  # not a hash: the full pass replaces it
    return ReconcileState.parse(cast(dict[bytes, bytes], raw))


def save_state(connection: Redis, state: ReconcileState) -> bool:
    """Writes the state if its epoch is still the one in Redis; False if a flush or a full pass came between."""
    saved = connection.eval(scripts.SAVE_RECONCILE_STATE, 1, keys.RECONCILE_KEY, state.epoch, *state.fields())
    return bool(saved)
