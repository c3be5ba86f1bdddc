"""Defaults and limits of the scheduler's options, and the rule for each: one place for the ``Scheduler``, the
``rqscheduler`` command and the system checks.

Each rule returns why a value is refused (None when it is fine); callers put the option's name in front.
"""

from __future__ import annotations

import math
from datetime import timedelta

MIN_SECONDS = 0.001
"""The schedule's precision: no duration may round to less than a millisecond."""
MAX_SECONDS = 86_400
"""A lease or a sleep of more than a day is a typo, and Redis refuses huge expiries."""
MAX_BATCH_SIZE = 50_000
"""Per Lua call: larger batches would block Redis for too long."""
MAX_NAME_LENGTH = 200
MAX_ERROR_CHARS = 8_000
"""Of a failed run's error text (headline and traceback) recorded by the worker: its end is kept when cut."""

MAX_RETRIES = 100
"""Retries of one run: more is a loop, not a retry."""
MAX_RETRY_DELAYS = 100
"""Entries of a schedule's list of retry delays (the last one is used for every later retry)."""
MAX_RETRY_DELAY = MAX_SECONDS
MAX_JITTER = MAX_SECONDS
"""Seconds a run may be held back at random after its slot (never up to the next slot)."""
DEFAULT_CATCHUP_LIMIT = 100
MAX_CATCHUP_LIMIT = 10_000
"""Missed slots run one by one after downtime (catch-up ``all``); older ones are recorded as skipped."""
ON_TIME_SECONDS = 5.0
"""A slot the loop reaches at most this late is on time; a later one was missed (what catch-up is about)."""
CATCHUP_RUNS_PER_MOVE = 100
"""Missed slots run by one move with catch-up ``all``: the template stays due at the next one, so one move (one Lua
call) stays small whatever the downtime."""
SKIPPED_RECORDS_PER_MOVE = 100
"""Skipped slots one move records one by one (the newest); older ones make one summary record."""
MAX_SLOTS_COUNTED = 1_000
"""Of a cron string's skipped slots, counted for a summary record (each costs a cron evaluation): "more than"."""
MAX_BACKFILL_SLOTS = 10_000
"""Slots one backfill enqueues unless told otherwise (``--max``)."""
OVERLAP_POLICIES = ('allow', 'skip', 'buffer_one', 'cancel_other')
CATCHUP_POLICIES = ('latest', 'none', 'all')

MAX_PAUSED_SCAN = 2_000
"""Due entries of paused queues one read of the due jobs steps over at most (one Lua call): the read goes on in
further calls, so Redis is never blocked long by a large paused backlog."""
MAX_PAUSE_REASON = 500
"""Characters of the reason given for a pause."""

PLAN_AHEAD_FROM = 100
"""Entries due at one instant from which the loop reads and plans them before it (``plan_ahead``)."""
PLAN_AHEAD_MAX_ENTRIES = 50_000
"""Entries one plan ahead holds at most (the rest is planned at the instant): bounds the memory a plan takes (about
2.3 KB a run until its instant, 115 MB at most)."""
PLAN_AHEAD_MAX_LEAD = 30.0
"""Seconds before an instant the loop starts planning its entries, at most."""
PLAN_AHEAD_STEP = 0.05
"""Seconds the loop plans ahead at a time: a pass runs between two steps, so jobs due meanwhile move on time."""
PLAN_AHEAD_SECONDS_PER_ENTRY = 0.0004
"""The lead before an instant per entry due at it: about twice what planning one costs on a busy 2-core machine."""
PLAN_AHEAD_TOLERANCE = 1.0
"""Seconds after its instant a plan made ahead may still be applied; later, the entries are planned again."""
DEFAULT_LEASE_TTL = 5.0
DEFAULT_BATCH_SIZE = 500
VETTED_PAYLOADS = 100_000
"""At most this many vetted payloads a mover remembers (a periodic template's payload is vetted once, not per run)."""
VETTED_FOR = 600.0
"""Seconds a mover trusts a payload's vetting before it asks the allow-list again (a predicate may change)."""


def seconds_problem(value: object, *, at_most: float | None = MAX_SECONDS) -> str | None:
    """Why ``value`` is no duration (a number of seconds or a timedelta) from a millisecond to ``at_most``."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f'expected a number of seconds or a timedelta, got {value!r}'
    if value <= 0:
        return f'must be greater than zero, got {value!r}'
    if round(float(value), 3) < MIN_SECONDS:
        return f'must be at least {MIN_SECONDS} (millisecond precision), got {value!r}'
    if at_most is not None and value > at_most:
        return f'must be at most {at_most:,} seconds, got {value!r}'
    return None


def to_seconds(value: object, argument: str, *, at_most: float | None = MAX_SECONDS) -> float:
    """``value`` in seconds, rounded to the millisecond; ValueError (naming ``argument``) if it is refused."""
    problem = seconds_problem(value, at_most=at_most)
    if problem:
        raise ValueError(f'{argument}: {problem}')
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    assert isinstance(seconds, (int, float))
    return round(float(seconds), 3)


def retry_delays_problem(value: object) -> str | None:
    """Why ``value`` is no list of retry delays: whole seconds from 0 to MAX_RETRY_DELAY, at most MAX_RETRY_DELAYS."""
    if not isinstance(value, list):
        return f'expected a list of seconds, e.g. [10, 60, 300], got {value!r}'
    if len(value) > MAX_RETRY_DELAYS:
        return f'at most {MAX_RETRY_DELAYS} delays, got {len(value)}'
    for delay in value:
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_RETRY_DELAY:
            return f'each delay must be a whole number of seconds from 0 to {MAX_RETRY_DELAY:,}, got {delay!r}'
    return None


def batch_size_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        return f'must be a whole number of jobs from 1 to {MAX_BATCH_SIZE:,}, got {value!r}'
    return None


def instance_name_problem(value: object) -> str | None:
    """Why ``value`` cannot name a scheduler instance: it takes 1 to MAX_NAME_LENGTH printable characters."""
    printable = isinstance(value, str) and all(ord(c) >= 32 and ord(c) != 127 for c in value)
    if not (printable and isinstance(value, str) and value.strip() and len(value) <= MAX_NAME_LENGTH):
        return f'expected 1 to {MAX_NAME_LENGTH} printable characters, got {value!r}'
    return None
