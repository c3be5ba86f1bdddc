"""The ``sentry_crons`` notifier: each run of a schedule as Sentry Crons check-ins on a monitor per schedule
(``in_progress`` when it is enqueued and when it starts, then ``ok`` or ``error`` with its duration), through the
project's own ``sentry_sdk.init()``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.utils.text import slugify

from .notifiers import Notifier
from .runs import FAILURE_STATUSES, FINISHED, QUEUED, STARTED

logger = logging.getLogger(__name__)

MAX_SLUG = 50
"""Sentry's longest monitor slug."""
CHECK_IN_STATUSES = {QUEUED: 'in_progress', STARTED: 'in_progress', FINISHED: 'ok'}
CHECK_IN_STATUSES |= dict.fromkeys(FAILURE_STATUSES, 'error')
INTERVAL_UNITS = (('day', 86_400), ('hour', 3_600), ('minute', 60))
CHECK_IN_NAMESPACE = uuid.UUID('3a0c6f3e-6a5e-4f43-9a37-0f8f5c1c7d21')


class SentryCrons(Notifier):
    follows_runs = True

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self._told_inactive = False

    def run_moved(self, row: Any, run: Any, status: str) -> None:
        """A run of ``row`` reached ``status``; ``run``: a ``Run`` or the same attributes."""
        check_in = check_in_of(row, run, status, with_config=self.options['monitor_config'])
        if check_in is not None:
            self.outbox.post(lambda: self._capture(check_in), f'a check-in of {check_in["monitor_slug"]}')

    def _capture(self, check_in: dict[str, Any]) -> None:
        try:
            import sentry_sdk
            from sentry_sdk.crons import capture_checkin
        except ImportError:
            self._tell_inactive('sentry-sdk is not installed (pip install "django-rq-scheduled[sentry]")')
            return
        if not sentry_sdk.get_client().is_active():
            self._tell_inactive('sentry_sdk.init() was not called with a DSN in this process')
            return
        capture_checkin(**check_in)

    def _tell_inactive(self, why: str) -> None:
        if not self._told_inactive:
            logger.warning('ALERTS has a sentry_crons notifier, but %s: no check-in is sent', why)
        self._told_inactive = True


def check_in_of(row: Any, run: Any, status: str, *, with_config: bool = True) -> dict[str, Any] | None:
    """The keyword arguments of ``sentry_sdk.crons.capture_checkin()`` for a run that reached ``status``, or None
    for a status Sentry has no check-in for (skipped, canceled)."""
    check_in_status = CHECK_IN_STATUSES.get(status)
    if check_in_status is None:
        return None
    check_in: dict[str, Any] = {
        'monitor_slug': monitor_slug(row),
        'check_in_id': uuid.uuid5(CHECK_IN_NAMESPACE, run.rq_job_id).hex,  # the same for every step of a run
        'status': check_in_status,
    }
    if check_in_status != 'in_progress' and run.started_at and run.ended_at:
        check_in['duration'] = max(0.0, (run.ended_at - run.started_at).total_seconds())
    config = monitor_config(row) if with_config else None
    if config:
        check_in['monitor_config'] = config
    return check_in


def monitor_slug(row: Any) -> str:
    """``<kind>-<id>-<name>``: the kind and id keep it unique, the name (cut) makes it readable."""
    prefix = f'{row._meta.model_name}-{row.pk}'
    name = slugify(row.name)[: MAX_SLUG - len(prefix) - 1].strip('-_')
    return f'{prefix}-{name}' if name else prefix[:MAX_SLUG]


def monitor_config(row: Any) -> dict[str, Any] | None:
    """What lets Sentry create the monitor (and tell a missed run): a cron string of five fields, or an interval in
    whole minutes; None for one-off jobs and schedules Sentry cannot express (seconds)."""
    cron_string = getattr(row, 'cron_string', None)
    if isinstance(cron_string, str) and len(cron_string.split()) == 5:
        return {'schedule': {'type': 'crontab', 'value': cron_string}, 'timezone': row.timezone}
    seconds = getattr(row, 'interval_seconds', None)
    for unit, size in INTERVAL_UNITS:
        if isinstance(seconds, int) and seconds and seconds % size == 0:
            return {'schedule': {'type': 'interval', 'value': seconds // size, 'unit': unit}}
    return None
