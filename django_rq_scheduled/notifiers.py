"""The built-in notifiers of ``ALERTS``: ``mail_admins``, ``webhook`` and ``heartbeat`` (``sentry_crons`` is in
sentry_crons.py). Each one delivers through an ``Outbox`` of its own, so it is called by the leader with plain data
and returns at once."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .outbox import Outbox

logger = logging.getLogger(__name__)

FAILING, RECOVERED = 'schedule_failing', 'schedule_recovered'
SIGNATURE_HEADER = 'X-Drqs-Signature'
TIMESTAMP_HEADER = 'X-Drqs-Timestamp'
EVENT_HEADER = 'X-Drqs-Event'
DELIVERY_HEADER = 'X-Drqs-Delivery'
SIGNATURE_TOLERANCE = 300
"""Seconds a signed delivery stays acceptable to ``verify_signature()``: older ones may be replays."""
USER_AGENT = 'django-rq-scheduled alerts'
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Alert:
    """A schedule that started failing or recovered, as plain data (the notifiers' threads read no database)."""

    event: str
    schedule_kind: str
    schedule_id: Any
    schedule_name: str
    failures: int
    """Failed runs in a row: the count reached (failing), or the streak this run ended (recovered)."""
    last_error: str
    runs_url: str | None
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def consecutive_failures(self) -> int:
        return self.failures if self.event == FAILING else 0

    def title(self) -> str:
        if self.event == FAILING:
            return f'Schedule {self.schedule_name!r} is failing: {self.failures} failed runs in a row'
        return f'Schedule {self.schedule_name!r} recovered after {self.failures} failed runs in a row'

    def payload(self) -> dict[str, Any]:
        schedule = {
            'kind': self.schedule_kind, 'id': self.schedule_id, 'name': self.schedule_name,
            'consecutive_failures': self.consecutive_failures, 'last_error': self.last_error,
            'runs_url': self.runs_url,
        }  # fmt: skip
        return {'event': self.event, 'failures': self.failures, 'schedule': schedule, 'run': self.run}


class Notifier:
    """Told of changes of state (``alert()``), of each run's steps (``run_moved()``) and of ticks (``beat()``);
    each returns at once, the work is queued in its outbox."""

    follows_runs = False

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.outbox = Outbox(f'drqs-alerts-{options["notifier"]}')

    def alert(self, alert: Alert) -> None:
        """A schedule changed state."""

    def run_moved(self, row: Any, run: Any, status: str) -> None:
        """A run of ``row`` reached ``status`` (told only if ``follows_runs``)."""

    def beat(self, now: float) -> None:
        """The leader ticked (``now``: monotonic seconds)."""


class MailAdmins(Notifier):
    """One mail to ``settings.ADMINS`` per change of state (Django's ``mail_admins``)."""

    def alert(self, alert: Alert) -> None:
        self.outbox.post(lambda: _mail(alert), f'the mail {alert.title()!r}')


def _mail(alert: Alert) -> None:
    from django.core.mail import mail_admins

    mail_admins(alert.title(), mail_text(alert), fail_silently=False)


def mail_text(alert: Alert) -> str:
    run = alert.run
    lines = [
        alert.title() + '.',
        '',
        f'Schedule: {alert.schedule_name} ({alert.schedule_kind} #{alert.schedule_id})',
        f'Last error: {alert.last_error or "(none)"}',
        f'Run: #{run.get("id")} {run.get("status")}, job {run.get("job_id")}',
    ]
    lines += [f'{name.replace("_", " ").capitalize()}: {run[name]}' for name in TIMES if run.get(name)]
    if alert.runs_url:
        lines += ['', f'Its runs: {alert.runs_url}']
    return '\n'.join(lines) + '\n'


TIMES = ('fire_time', 'enqueued_at', 'started_at', 'ended_at')


class Webhook(Notifier):
    """A JSON POST per change of state, retried with exponential backoff, signed when a secret is set."""

    def alert(self, alert: Alert) -> None:
        body = json.dumps(alert.payload(), default=str).encode()
        delivery = uuid.uuid4().hex
        self.outbox.post(lambda: self.deliver(body, alert.event, delivery), f'{alert.event} to {where(self.url)}')

    @property
    def url(self) -> str:
        return str(self.options['url'])

    def deliver(self, body: bytes, event: str, delivery: str) -> bool:
        """POSTs ``body`` until it is taken or the retries are spent; returns whether it was taken."""
        attempts = self.options['retries'] + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.options['backoff'] * 2 ** (attempt - 1))
            headers = {'Content-Type': 'application/json', EVENT_HEADER: event, DELIVERY_HEADER: delivery}
            if self.options['secret']:
                headers.update(signature_headers(self.options['secret'], body))
            status, problem = post(self.url, body, headers, self.options['timeout'])
            if status is not None and status < 300:
                return True
            if status is not None and status not in RETRIED_STATUSES:
                break  # the receiver refuses it: sending it again would not change its mind
        logger.error('Webhook %s did not take %s (%d attempts): %s', where(self.url), event, attempt + 1, problem)
        return False


def post(url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """One request (a POST with a body, a GET without): its HTTP status, or None and what went wrong."""
    request = urllib.request.Request(url, data=body, headers={'User-Agent': USER_AGENT, **headers})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, f'HTTP {response.status}'
    except urllib.error.HTTPError as exc:
        return exc.code, f'HTTP {exc.code}'
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, timed out, DNS, garbled
        return None, repr(exc)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead the signed body (or the leader) anywhere; a 3xx is an answer of its own.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(_NoRedirects)


def where(url: str) -> str:
    """A URL without its path and query, for logs: webhook URLs often carry a token."""
    parts = urlsplit(url)
    return f'{parts.scheme}://{parts.netloc.rpartition("@")[2]}'


def signature_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """``X-Drqs-Timestamp`` (Unix seconds) and ``X-Drqs-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed by
    the secret, of the timestamp, a dot and the body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b'.' + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: f'sha256={digest}'}


def verify_signature(
    secret: str, body: bytes, timestamp: str, signature: str, *, tolerance: float = SIGNATURE_TOLERANCE
) -> bool:
    """Whether a webhook delivery is genuine and fresh: for receivers written in Python."""
    try:
        age = abs(time.time() - int(timestamp))
    except (TypeError, ValueError):
        return False
    expected = signature_headers(secret, body, int(timestamp))[SIGNATURE_HEADER]
    return age <= tolerance and hmac.compare_digest(expected, signature)


class Heartbeat(Notifier):
    """A GET of the URL every ``every`` seconds while this process leads and its loop ticks: a dead-man's switch
    hears of a leader that died, hangs, or lost its Redis."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.outbox = Outbox('drqs-alerts-heartbeat', size=2)  # a ping that waits longer has no news to tell
        self._next = 0.0
        self._failing = False

    def beat(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.options['every']
        self.outbox.post(self.ping, f'a heartbeat to {where(self.options["url"])}')

    def ping(self) -> None:
        status, problem = post(self.options['url'], None, {}, self.options['timeout'])
        if status is not None and status < 300:
            if self._failing:
                logger.info('Heartbeat %s answers again', where(self.options['url']))
            self._failing = False
            return
        if not self._failing:  # once per streak: the next ping comes in a minute anyway
            logger.warning('Heartbeat %s failed: %s', where(self.options['url']), problem)
        self._failing = True
