"""Every setting of the app, with its default, read lazily from the ``RQ_SCHEDULED`` dict in Django settings."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    # Longest sleep of the loop between two looks at the schedule, in seconds. The loop also wakes at the next
    # due time and when a producer schedules something earlier, so this only bounds the lateness of jobs written
    # by other programs (e.g. rq-scheduler's client), and how often a standby looks for a dead leader.
    'INTERVAL': 1.0,
    # Lifetime of the leader lease in seconds: a standby takes over at most this long after the leader died.
    'LEASE_TTL': 5.0,
    # How many due jobs are moved per atomic batch.
    'BATCH_SIZE': 500,
    # Time zone of cron jobs that name none (an IANA name); None means settings.TIME_ZONE.
    'TIMEZONE': None,
}


def get_setting(name: str) -> Any:
    """The value of ``RQ_SCHEDULED[name]``, or its default. Read at call time, never at import."""
    from django.conf import settings

    if name not in DEFAULTS:
        raise KeyError(f'unknown django_rq_scheduled setting {name!r}')
    return getattr(settings, 'RQ_SCHEDULED', {}).get(name, DEFAULTS[name])


def default_timezone() -> str:
    from django.conf import settings

    return get_setting('TIMEZONE') or getattr(settings, 'TIME_ZONE', None) or 'UTC'
