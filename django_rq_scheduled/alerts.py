"""Alerts: a schedule that starts failing (``ALERT_AFTER_FAILURES`` failed runs in a row) and its first success
after that, told once per change of state to the receivers of ``schedule_failing`` and ``schedule_recovered`` and to
the notifiers of ``ALERTS``; the runs' steps to the notifiers that follow runs (Sentry Crons); the leader's
heartbeat.

``history`` calls in twice per batch: ``mark_state_changes()`` in its transaction, before the summaries take the
runs, and ``announce()`` once it is committed. A change of state is read from the transition that moved the count of
failures across the threshold, so a record read twice (which makes no transition) alerts nobody twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.urls import NoReverseMatch, reverse

from . import alert_config
from .conf import MAX_ALERT_AFTER_FAILURES, SETTINGS, get_setting
from .notifiers import FAILING, RECOVERED, Alert, Heartbeat, MailAdmins, Notifier, Webhook
from .runs import FAILURE_STATUSES, FINISHED
from .sentry_crons import SentryCrons
from .signals import schedule_failing, schedule_recovered

if TYPE_CHECKING:
    from django.db.models import Model

    from .core.scheduler import Scheduler
    from .history import Transition

logger = logging.getLogger(__name__)

SIGNALS = {FAILING: schedule_failing, RECOVERED: schedule_recovered}
KINDS: dict[str, type[Notifier]] = {
    'mail_admins': MailAdmins, 'webhook': Webhook, 'heartbeat': Heartbeat, 'sentry_crons': SentryCrons,
}  # fmt: skip


@dataclass(frozen=True)
class StateChange:
    """What a transition changed: the event, the failures in a row it reached or ended, the last error then."""

    event: str
    failures: int
    last_error: str


def alert_after_failures() -> int:
    value = get_setting('ALERT_AFTER_FAILURES')
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ALERT_AFTER_FAILURES:
        return int(SETTINGS['ALERT_AFTER_FAILURES'].default)  # system check E002 reports it
    return value


# -- in the batch's transaction ----------------------------------------------------------------------------------


def mark_state_changes(transitions: Sequence[Transition]) -> None:
    """Sets ``alert`` on the transitions that change their schedule's state. Counts from each row's summary as it
    is before the batch, the way ``RunSummary.remember()`` will: a failure adds one, a success starts over."""
    threshold = alert_after_failures()
    streaks: dict[int, tuple[int, str]] = {}  # by id(): a batch holds one instance per row
    for transition in transitions:
        row = transition.row
        key = id(row)
        failures, error = streaks.get(key) or (row.consecutive_failures, row.last_error)
        if transition.status == FINISHED:
            if failures >= threshold:
                transition.alert = StateChange(RECOVERED, failures, error)
            failures = 0
        elif transition.status in FAILURE_STATUSES:
            failures, error = failures + 1, (transition.run.error_headline or transition.run.reason)[:255]
            if failures == threshold:
                transition.alert = StateChange(FAILING, failures, error)
        streaks[key] = failures, error


def wants_whole_rows(model: type[Model]) -> bool:
    """Whether the rows of ``model`` go to someone who may read any field: a receiver, or Sentry's monitors."""
    return any(signal.has_listeners(model) for signal in SIGNALS.values()) or any(
        notifier.follows_runs for notifier in active()
    )


# -- after it commits --------------------------------------------------------------------------------------------


def announce(transitions: Iterable[Transition]) -> None:
    """The runs' steps to the notifiers that follow runs; each change of state to its signal's receivers and to
    every notifier. Nothing here waits on a receiver of the notifiers: they queue their work."""
    notifiers = active()
    followers = [notifier for notifier in notifiers if notifier.follows_runs]
    for transition in transitions:
        for notifier in followers:
            _tell(notifier.run_moved, transition.row, transition.run, transition.status)
        if transition.alert is not None:
            _send_signal(transition)
            alert = alert_of(transition)
            for notifier in notifiers:
                _tell(notifier.alert, alert)


def _tell(method: Any, *args: Any) -> None:
    try:
        method(*args)
    except Exception:  # a notifier's bug must not stop the signals, nor the other notifiers
        logger.exception('The alert notifier %r failed', method)


def _send_signal(transition: Transition) -> None:
    change = transition.alert
    assert change is not None
    signal = SIGNALS[change.event]
    if not signal.has_listeners(type(transition.row)):
        return
    run = transition.run.as_run()
    for receiver, result in signal.send_robust(sender=type(transition.row), schedule=transition.row, run=run):
        if isinstance(result, Exception):
            logger.error('A receiver of %s (%r) raised for %s', change.event, receiver, run, exc_info=result)


def alert_of(transition: Transition) -> Alert:
    row, run, change = transition.row, transition.run, transition.alert
    assert change is not None
    return Alert(
        event=change.event,
        schedule_kind=str(row._meta.model_name),
        schedule_id=row.pk,
        schedule_name=row.name,
        failures=change.failures,
        last_error=change.last_error,
        runs_url=runs_url(row),
        run={
            'id': run.pk, 'job_id': run.rq_job_id, 'status': transition.status, 'trigger': run.trigger,
            'queue': run.queue, 'reason': run.reason, 'error': run.error_headline,
            **{name: _iso(getattr(run, name)) for name in ('fire_time', 'enqueued_at', 'started_at', 'ended_at')},
        },
    )  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def runs_url(row: Model) -> str | None:
    """The admin's list of the runs of ``row``, after ``ADMIN_BASE_URL`` if set; None without the admin."""
    try:
        path = reverse('admin:django_rq_scheduled_run_changelist')
    except NoReverseMatch:
        return None
    base = get_setting('ADMIN_BASE_URL')
    base = base.rstrip('/') if isinstance(base, str) else ''
    return f'{base}{path}?kind={row._meta.model_name}&schedule_id={row.pk}'


# -- the notifiers of ALERTS -------------------------------------------------------------------------------------

_built: dict[str, list[Notifier]] = {}
_building = threading.Lock()


def active() -> list[Notifier]:
    """The notifiers ``ALERTS`` sets now, each with its outbox: built once per value of the setting, so their
    queues and threads last; entries with a problem are left out (logged here, reported by the system checks)."""
    config = get_setting('ALERTS')
    key = repr(config)
    notifiers = _built.get(key)
    if notifiers is None:
        with _building:
            notifiers = _built.get(key)
            if notifiers is None:
                for _, problem in alert_config.problems(config):
                    logger.error('%s; left out (manage.py check reports it)', problem)
                notifiers = [KINDS[entry['notifier']](entry) for entry in alert_config.parsed(config)]
                _built.clear()  # the setting changed (tests): the old outboxes finish their work and idle
                _built[key] = notifiers
    return notifiers


def beat(scheduler: Scheduler) -> None:
    """A tick hook: the heartbeat notifiers ping, each at its own pace. The loop calls its tick hooks only while it
    leads, after it moved the due jobs."""
    now = time.monotonic()
    for notifier in active():
        notifier.beat(now)


def beat_while_leading(schedulers: Iterable[Scheduler]) -> None:
    for scheduler in schedulers:
        scheduler.tick_hooks.append(beat)


def wait_for_deliveries(timeout: float = 30.0) -> bool:
    """Waits until the notifiers' queued deliveries are made (tests, benchmarks); returns whether they all were."""
    deadline = time.monotonic() + timeout
    return all(notifier.outbox.wait(max(0.0, deadline - time.monotonic())) for notifier in active())
