"""Every setting of the app, with its default, read lazily from the ``RQ_SCHEDULED`` dict in Django settings."""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .core.allowlist import AllowList
from .core.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE_TTL,
    MAX_BATCH_SIZE,
    MAX_SECONDS,
    MIN_SECONDS,
    seconds_problem,
    to_seconds,
)


@dataclass(frozen=True)
class Setting:
    default: Any
    help: str
    """What the setting does, in the docs' words: the settings reference is rendered from it."""


_SECONDS_RANGE = f'{MIN_SECONDS} to {MAX_SECONDS:,}'
MIN_TOKEN_LENGTH, MAX_TOKEN_LENGTH = 32, 1024

SETTINGS: dict[str, Setting] = {
    'INTERVAL': Setting(
        1.0,
        f'Longest sleep of the loop between two looks at the schedule, in seconds ({_SECONDS_RANGE}). The loop also '
        'wakes at the next due time and when a producer schedules something earlier, so this only bounds the '
        "lateness of jobs written by other programs (e.g. rq-scheduler's client), and how often a standby looks "
        'for a dead leader.',
    ),
    'LEASE_TTL': Setting(
        DEFAULT_LEASE_TTL,
        f'Lifetime of the leader lease in seconds ({_SECONDS_RANGE}): a standby takes over at most this long after '
        'the leader died.',
    ),
    'BATCH_SIZE': Setting(
        DEFAULT_BATCH_SIZE, f'How many due jobs are moved per atomic batch (1 to {MAX_BATCH_SIZE:,}).'
    ),
    'TIMEZONE': Setting(None, 'Time zone of cron jobs that name none (an IANA name); ``None`` means ``TIME_ZONE``.'),
    'ALLOWED_CALLABLES': Setting(
        None,
        "Dotted-path patterns of the callables that may run, e.g. ``['myapp.tasks.*']``: ``*`` matches within one "
        'dotted segment, and the function must be defined in the module the path names (see :doc:`security`). '
        '``None`` allows any importable callable. Checked when a row is saved, synced or run now, by the '
        '``Scheduler`` API, and before each enqueue.',
    ),
    'RECONCILE_INTERVAL': Setting(
        60,
        'Seconds between two reconciliations of the database with Redis by ``manage.py rqscheduler``: each reads the '
        'rows changed since the last one and the next slice of a rolling sweep (see :doc:`models`).',
    ),
    'RECONCILE_SWEEP_ROWS': Setting(
        1000,
        'Rows (and entries of the versions hash) each periodic reconciliation verifies besides the changed ones, '
        'from a rolling cursor (1 to 100,000): a full sweep of N rows takes N / RECONCILE_SWEEP_ROWS passes. '
        'It finds what no save reported (raw SQL); see :doc:`models` and :doc:`capacity`.',
    ),
    'RUN_HISTORY_DAYS': Setting(
        30,
        'Days a finished run stays in the run history (``Run`` rows); ``0`` keeps no history (the summary fields of '
        'each schedule are kept). See :doc:`runs`.',
    ),
    'RUN_HISTORY_PER_SCHEDULE': Setting(
        1000, 'Runs kept per schedule, the newest; older ones are pruned. ``0`` keeps no history. See :doc:`runs`.'
    ),
    'SCHEDULES': Setting(
        {},
        'Schedules declared in code: a dict from schedule name to its definition (``callable``, exactly one of '
        '``cron``, ``interval`` with ``unit``, or ``at``, and any row option). ``manage.py schedules sync`` and the '
        'leader, when it starts leading, make them rows. See :doc:`code`.',
    ),
    'PRUNE_CODE_SCHEDULES': Setting(
        False,
        'Whether a sync deletes the rows of schedules removed from code (``False``: they are disabled and kept with '
        'their run history).',
    ),
    'DEFAULT_MISFIRE_GRACE': Setting(
        None, 'Misfire grace (seconds) of new rows whose form leaves it empty; ``None`` means "always run once".'
    ),
    'HEALTH_MAX_LATENESS': Setting(
        60,
        f'Seconds a due job may wait in the schedule before the health check fails ({_SECONDS_RANGE}); '
        '``manage.py schedules health --max-lateness`` overrides it. See :doc:`monitoring`.',
    ),
    'HEALTH_TOKEN': Setting(
        None,
        f'A secret that lets a request without a staff login read the health view, sent as ``Authorization: Bearer '
        f'<token>``: a string of {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH:,} visible ASCII characters, e.g. from '
        '``python -c "import secrets; print(secrets.token_urlsafe(32))"``. ``None`` lets staff users only. See '
        ':doc:`monitoring`.',
    ),
    'ALERT_AFTER_FAILURES': Setting(
        3,
        'Failed runs in a row after which a schedule is failing: the leader sends ``schedule_failing`` and the '
        '``ALERTS`` notifiers tell of it once, then ``schedule_recovered`` at its next success (1 to 1,000,000). '
        'See :doc:`alerts`.',
    ),
    'ALERTS': Setting(
        [],
        "Where the leader tells of failing and recovered schedules, and pings a dead-man's switch: a list of "
        "notifiers, e.g. ``[{'notifier': 'mail_admins'}, {'notifier': 'webhook', 'url': 'https://...'}]``. See "
        ':doc:`alerts`.',
    ),
    'ADMIN_BASE_URL': Setting(
        None,
        "The admin's scheme and host, e.g. ``'https://ops.example.com'``, put before the links of alerts to a "
        "schedule's runs; ``None`` leaves them as paths (``/admin/...``).",
    ),
}
DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in SETTINGS.items()}

# The limits of INTERVAL, LEASE_TTL and BATCH_SIZE are the scheduler's: see core/limits.py.

# Limits of what a schedule row may hold, the same on every database.
# Redis scores are UTC epoch seconds: earlier times are negative, and some platforms cannot convert them back.
# The latest time leaves Python's datetimes (year 9999) room for the arithmetic of intervals and previews.
EARLIEST_SCHEDULE_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_SCHEDULE_TIME = datetime(9000, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)
MAX_INTERVAL_SECONDS = 36_525 * 86_400  # 100 years of 365.25 days
# Levels of lists and objects in args and kwargs ([] is one level): deep enough for any real argument, and
# checked without recursion; deeper values break Python's recursive JSON encoder and decoder.
MAX_JSON_DEPTH = 100
# Of the run history's settings: a century of days, a million runs per schedule.
RUN_HISTORY_LIMITS = {'RUN_HISTORY_DAYS': 36_500, 'RUN_HISTORY_PER_SCHEDULE': 1_000_000}
MAX_RECONCILE_SWEEP_ROWS = 100_000
MAX_ALERT_AFTER_FAILURES = 1_000_000
# Python refuses to convert longer integers to text (sys.int_info.default_max_str_digits), so JSON cannot hold them.
MAX_JSON_INTEGER_DIGITS = 4300


def get_setting(name: str) -> Any:
    """The value of ``RQ_SCHEDULED[name]``, or its default. Read at call time, never at import."""
    from django.conf import settings

    if name not in DEFAULTS:
        raise KeyError(f'unknown django_rq_scheduled setting {name!r}')
    return getattr(settings, 'RQ_SCHEDULED', {}).get(name, DEFAULTS[name])


def reconcile_sweep_rows() -> int:
    """RECONCILE_SWEEP_ROWS as set, or its default if it is malformed (check E002 says so)."""
    rows = get_setting('RECONCILE_SWEEP_ROWS')
    if reconcile_sweep_rows_problem(rows):
        return int(DEFAULTS['RECONCILE_SWEEP_ROWS'])
    return int(rows)


def reconcile_sweep_rows_problem(rows: Any) -> str | None:
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_RECONCILE_SWEEP_ROWS:
        return f'RECONCILE_SWEEP_ROWS must be a whole number from 1 to {MAX_RECONCILE_SWEEP_ROWS:,}, got {rows!r}'
    return None


def default_timezone() -> str:
    from django.conf import settings

    return get_setting('TIMEZONE') or getattr(settings, 'TIME_ZONE', None) or 'UTC'


def allow_list() -> AllowList:
    """The ``ALLOWED_CALLABLES`` rule as set now; a malformed setting allows nothing (check E002 says why)."""
    patterns = get_setting('ALLOWED_CALLABLES')
    if patterns is None:
        return _allow_list(None)
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        return _allow_list(())
    return _allow_list(tuple(pattern for pattern in patterns if isinstance(pattern, str) and pattern))


def fast_move_key() -> str | None:
    """The key of the marks that let the loop move a plain one-off whole in Redis: derived from SECRET_KEY (never
    sent to Redis itself), so producers and the loop of one project agree on it. None without a SECRET_KEY."""
    from django.conf import settings

    secret = getattr(settings, 'SECRET_KEY', None)
    if not secret:
        return None
    return hmac.new(str(secret).encode(), b'django_rq_scheduled.fast_one_off_moves', 'sha256').hexdigest()


TASK_BRIDGE = 'django_rq_scheduled.task_calls.enqueue_task'
"""The job that enqueues a Django Task into a backend other than RQ's: allowed whatever the patterns say, because it
checks the task it is given against them itself."""


@functools.lru_cache(maxsize=16)
def _allow_list(patterns: tuple[str, ...] | None) -> AllowList:
    return AllowList(patterns, trusted=(TASK_BRIDGE,))


def callable_allowed(path: Any) -> bool:
    """Whether ``ALLOWED_CALLABLES`` (when set) lets the callable at ``path`` run."""
    return allow_list()(path)


def seconds_setting(name: str) -> float:
    """A setting of seconds as set now; a malformed one has its default (check E002 says why)."""
    value = get_setting(name)
    return to_seconds(DEFAULTS[name] if seconds_problem(value) else value, name)


def health_token_problem(value: Any) -> str | None:
    """Why ``value`` cannot be the ``HEALTH_TOKEN``: None, or a string long enough not to be guessed."""
    if value is None:
        return None
    visible = isinstance(value, str) and value.isascii() and value.isprintable() and ' ' not in value
    if not visible or not MIN_TOKEN_LENGTH <= len(value) <= MAX_TOKEN_LENGTH:
        shown = f'{len(value)} characters' if isinstance(value, str) else type(value).__name__
        return (
            f'HEALTH_TOKEN must be None or a string of {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH:,} visible ASCII '
            f'characters, got {shown}'
        )
    return None


def health_token() -> str | None:
    """The ``HEALTH_TOKEN`` as set now; a malformed one lets no request in (check E002 says why)."""
    token = get_setting('HEALTH_TOKEN')
    return None if health_token_problem(token) else token
