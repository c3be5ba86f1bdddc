"""The run policies of a periodic template (jitter, window of validity, catch-up), as our part of its meta holds
them: read for planning (a value of the wrong type names its key, so the template is dead-lettered, never a crash
loop), and validated for the ``Scheduler`` API (the message names the argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from . import limits
from .scores import floor_ms, to_score

LATEST, NONE, ALL = limits.CATCHUP_POLICIES


@dataclass(frozen=True)
class RunPolicy:
    """What planning needs of a template's run policies; defaults are those of a template without them."""

    jitter: float = 0.0
    valid_from: float | None = None
    valid_until: float | None = None
    catchup: str = LATEST
    catchup_limit: int = limits.DEFAULT_CATCHUP_LIMIT

    def before_window(self, slot: float) -> bool:
        return self.valid_from is not None and slot < self.valid_from

    def after_window(self, slot: float) -> bool:
        return self.valid_until is not None and slot > self.valid_until


class RunPolicies(TypedDict, total=False):
    """The run policies ``Scheduler.schedule()`` and ``cron()`` take as keyword arguments (``api_meta``)."""

    jitter: float
    valid_from: datetime | None
    valid_until: datetime | None
    catchup: str
    catchup_limit: int


DEFAULT = RunPolicy()
POLICY_KEYS = frozenset({'jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit'})


class PolicyError(ValueError):
    """A policy value no rule can apply; the message starts with the meta key (or the API argument)."""


def read(ours: dict[str, Any]) -> RunPolicy:
    """The run policies of our part of a template's meta; PolicyError naming the key for a value of the wrong type."""
    if not POLICY_KEYS.intersection(ours):
        return DEFAULT  # most templates: every policy at its default (the hot path of planning)
    valid_from, valid_until = _epoch(ours, 'valid_from'), _epoch(ours, 'valid_until')
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise PolicyError(f'valid_until: {valid_until!r} is not after valid_from {valid_from!r}')
    return RunPolicy(
        jitter=_jitter(ours.get('jitter', 0), 'jitter'),
        valid_from=valid_from,
        valid_until=valid_until,
        catchup=_catchup(ours.get('catchup', LATEST), 'catchup'),
        catchup_limit=_catchup_limit(ours.get('catchup_limit', limits.DEFAULT_CATCHUP_LIMIT), 'catchup_limit'),
    )


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _jitter(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    if not _number(value) or not 0 <= value <= limits.MAX_JITTER:
        raise PolicyError(f'{name}: expected seconds from 0 to {limits.MAX_JITTER:,}, got {value!r}')
    return float(value)


def _epoch(ours: dict[str, Any], name: str) -> float | None:
    value = ours.get(name)
    if value is None:
        return None
    if not _number(value):
        raise PolicyError(f'{name}: expected epoch seconds, got {value!r}')
    return float(value)


def _catchup(value: Any, name: str) -> str:
    if value is None:
        return LATEST
    if value not in limits.CATCHUP_POLICIES or not isinstance(value, str):
        raise PolicyError(f'{name}: expected one of {limits.CATCHUP_POLICIES}, got {value!r}')
    return value


def _catchup_limit(value: Any, name: str) -> int:
    if value is None:
        return limits.DEFAULT_CATCHUP_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.MAX_CATCHUP_LIMIT:
        raise PolicyError(
            f'{name}: expected a whole number of slots from 1 to {limits.MAX_CATCHUP_LIMIT:,}, got {value!r}'
        )
    return value


def check_names(policies: Mapping[str, Any]) -> None:
    """TypeError for a keyword argument that names no run policy (a typo must not pass silently)."""
    unknown = sorted(set(policies) - POLICY_KEYS)
    if unknown:
        raise TypeError(f'{unknown[0]}: not a keyword argument; run policies are {sorted(POLICY_KEYS)}')


def api_meta(
    *,
    jitter: object = 0,
    valid_from: object = None,
    valid_until: object = None,
    catchup: object = LATEST,
    catchup_limit: object = limits.DEFAULT_CATCHUP_LIMIT,
) -> dict[str, Any]:
    """Our meta for the run policies given to ``Scheduler.schedule()`` / ``cron()``, as a row's ``policy_meta``
    writes them (defaults left out); ValueError naming the argument."""
    meta: dict[str, Any] = {}
    seconds = _jitter(jitter, 'jitter')
    if seconds:
        meta['jitter'] = seconds
    for name, value in (('valid_from', valid_from), ('valid_until', valid_until)):
        if value is not None:
            if not isinstance(value, datetime):
                raise PolicyError(f'{name}: expected a datetime, got {type(value).__name__} {value!r}')
            meta[name] = to_score(value, name)
    if 'valid_from' in meta and 'valid_until' in meta and meta['valid_until'] <= meta['valid_from']:
        raise PolicyError('valid_until: must be after valid_from')
    policy = _catchup(catchup, 'catchup')
    limit = _catchup_limit(catchup_limit, 'catchup_limit')
    if policy != LATEST:
        meta.update(catchup=policy, catchup_limit=limit)
    return meta


def jitter_delay(policy: RunPolicy, slot: float, next_slot: float | None, random: Callable[[], float]) -> float:
    """A random delay in [0, jitter) seconds for ``slot``, whole milliseconds, that never reaches the next slot (nor
    goes past the end of the window): the slot's run is enqueued before the next slot is due."""
    bound = policy.jitter
    if next_slot is not None:
        bound = min(bound, next_slot - slot - limits.MIN_SECONDS)
    if policy.valid_until is not None:
        bound = min(bound, policy.valid_until - slot)
    if bound <= limits.MIN_SECONDS:
        return 0.0
    return min(floor_ms(random() * bound), floor_ms(bound - limits.MIN_SECONDS))
