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
    # Dotted-path patterns (fnmatch, e.g. 'myapp.tasks.*') of the callables that rows may run; None allows any
    # importable callable. Checked when a row is saved and again when a job is enqueued.
    'ALLOWED_CALLABLES': None,
    # Seconds between two reconciliations of the database with Redis by `manage.py rqscheduler`.
    'RECONCILE_INTERVAL': 60,
    # Misfire grace (seconds) of new rows whose form leaves it empty; None means "always run once".
    'DEFAULT_MISFIRE_GRACE': None,
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


def callable_allowed(path: str) -> bool:
    """Whether ``ALLOWED_CALLABLES`` (when set) lets rows run the callable at ``path``."""
    from fnmatch import fnmatchcase

    patterns = get_setting('ALLOWED_CALLABLES')
    return patterns is None or any(fnmatchcase(path, pattern) for pattern in patterns)
