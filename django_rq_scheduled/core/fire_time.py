"""The slot of the run in progress, for the job's own code: ``django_rq_scheduled.current_fire_time()``.

Read from the current RQ job's meta, so it needs neither Django settings nor Redis: a plain ``rq worker`` answers it.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from rq import get_current_job

from . import keys


def current_fire_time() -> datetime | None:
    """The slot the running job was scheduled for, as an aware UTC datetime.

    An occurrence of an interval or cron schedule: its slot (not when it was enqueued or started, and the same for
    each retry of it); a one-off schedule row: its scheduled time. None outside a job, in a run started by hand, and
    in any job the scheduler did not make from a schedule.
    """
    job = get_current_job()
    meta = getattr(job, 'meta', None)
    ours = meta.get(keys.META_KEY) if isinstance(meta, dict) else None
    if not isinstance(ours, dict) or ours.get('run_now'):
        return None
    stamp = ours.get('fire_time')
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        return None
    try:
        return datetime.fromtimestamp(stamp, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):  # a stamp no datetime holds: written by someone else
        return None
