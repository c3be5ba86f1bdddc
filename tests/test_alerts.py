"""Alerts, with real parts: real RQ workers run failing jobs, the leader reads their outcomes in as
``manage.py rqscheduler`` does, and mails (locmem), webhooks (a local HTTP server) and Sentry check-ins (a local
stand-in for the DSN) go out; the heartbeat is pinged by a real ``rqscheduler`` process."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from django_rq_scheduled import alerts
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import RepeatableJob, Run
from django_rq_scheduled.notifiers import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Webhook,
    signature_headers,
    verify_signature,
)
from django_rq_scheduled.outbox import Outbox
from django_rq_scheduled.servers import run_now
from django_rq_scheduled.signals import schedule_failing, schedule_recovered
from tests.conftest import run_worker
from tests.http_servers import Hanging, Recorder, sentry_items
from tests.processes import OutputReader, kill, scheduler_process, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
SECRET = 'a-shared-secret-for-the-tests'


@pytest.fixture
def webhook_server():
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def alerting(settings, webhook_server, mailoutbox):
    settings.ADMINS = [('Ops', 'ops@example.com')]
    settings.RQ_SCHEDULED = {
        'ADMIN_BASE_URL': 'https://ops.example.com/',
        'ALERTS': [
            {'notifier': 'mail_admins'},
            {'notifier': 'webhook', 'url': f'{webhook_server.url}/hook', 'secret': SECRET, 'backoff': 0.05},
        ],
    }
    return mailoutbox


def failing_row(name: str = 'nightly import') -> RepeatableJob:
    """A schedule whose runs raise; its runs are started by hand (its first slot is an hour away)."""
    return RepeatableJob.objects.create(
        name=name, callable='tests.tasks.fail', args=['the disk is full'], interval=1, interval_unit='hours',
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


def runs_by_hand(row: RepeatableJob, count: int, url: str, leader: Any) -> None:
    for _ in range(count):
        run_now(row)
    run_worker(url)
    leader()
    assert alerts.wait_for_deliveries(30)


class Received:
    """Receivers of the alert signals, and a receiver that raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Run]] = []

    def failing(self, sender: type, schedule: Any, run: Run, **kwargs: Any) -> None:
        self.calls.append(('failing', schedule, run))

    def recovered(self, sender: type, schedule: Any, run: Run, **kwargs: Any) -> None:
        self.calls.append(('recovered', schedule, run))

    @staticmethod
    def broken(**kwargs: Any) -> None:
        raise RuntimeError('a receiver with a bug')


@pytest.fixture
def received():
    receivers = Received()
    pairs = [(schedule_failing, receivers.failing), (schedule_recovered, receivers.recovered)]
    for signal, receiver in pairs:
        signal.connect(Received.broken, weak=False)
        signal.connect(receiver, weak=False)
    yield receivers
    for signal, receiver in pairs:
        signal.disconnect(Received.broken)
        signal.disconnect(receiver)


def verified(request: Any) -> dict[str, Any]:
    headers = request.headers
    assert verify_signature(SECRET, request.body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    return request.json()


def test_three_failures_in_a_row_alert_once_and_a_success_recovers_once(
    alerting, received, webhook_server, leader, redis_url, caplog
):
    row = failing_row()
    runs_by_hand(row, 2, redis_url, leader)
    assert (alerting, webhook_server.requests, received.calls) == ([], [], [])

    runs_by_hand(row, 1, redis_url, leader)  # the third failure in a row
    [mail] = alerting
    assert mail.to == ['ops@example.com']
    assert "Schedule 'nightly import' is failing: 3 failed runs in a row" in mail.subject
    assert 'Last error: ValueError: the disk is full' in mail.body
    runs_url = f'https://ops.example.com/admin/django_rq_scheduled/run/?kind=repeatablejob&schedule_id={row.pk}'
    assert runs_url in mail.body
    [delivery] = webhook_server.requests
    payload = verified(delivery)
    assert delivery.headers['X-Drqs-Event'] == 'schedule_failing'
    third = Run.objects.filter(status='failed').order_by('id').last()
    assert payload['event'] == 'schedule_failing' and payload['failures'] == 3
    assert payload['schedule'] == {
        'kind': 'repeatablejob', 'id': row.pk, 'name': 'nightly import', 'consecutive_failures': 3,
        'last_error': 'ValueError: the disk is full', 'runs_url': runs_url,
    }  # fmt: skip
    assert payload['run']['id'] == third.pk and payload['run']['status'] == 'failed'
    assert payload['run']['ended_at'] == third.ended_at.isoformat()
    [(event, schedule, run)] = received.calls
    assert (event, schedule.pk, schedule.consecutive_failures, run.pk) == ('failing', row.pk, 3, third.pk)
    assert schedule.get_deferred_fields() == set()  # a whole row: receivers may read any field
    assert 'a receiver with a bug' in caplog.text

    runs_by_hand(row, 1, redis_url, leader)  # a fourth: still failing, nothing new to tell
    assert (len(alerting), len(webhook_server.requests), len(received.calls)) == (1, 1, 1)

    RepeatableJob.objects.filter(pk=row.pk).update(callable='tests.tasks.add', args=[1, 1])
    runs_by_hand(row, 1, redis_url, leader)
    assert len(alerting) == 2 and 'recovered after 4 failed runs in a row' in alerting[1].subject
    payload = verified(webhook_server.requests[1])
    assert (payload['event'], payload['failures'], payload['schedule']['consecutive_failures']) == (
        'schedule_recovered', 4, 0
    )  # fmt: skip
    assert [call[0] for call in received.calls] == ['failing', 'recovered']


def test_failures_read_in_one_batch_alert_once(alerting, received, webhook_server, leader, redis_url):
    row = failing_row()
    runs_by_hand(row, 5, redis_url, leader)
    assert len(alerting) == 1 and len(webhook_server.requests) == 1
    assert [(event, run.pk) for event, _, run in received.calls] == [
        ('failing', row.runs.order_by('id')[2].pk)  # the third: the one that made it failing
    ]


def test_records_read_twice_send_no_alert_again(alerting, received, webhook_server, leader, redis_url, connection):
    row = failing_row()
    for _ in range(3):
        run_now(row)
    run_worker(redis_url)
    outcomes = connection.lrange(keys.OUTCOMES_KEY, 0, -1)
    leader()
    connection.rpush(keys.OUTCOMES_KEY, *outcomes)  # as if a crash had lost the trim
    leader()
    assert alerts.wait_for_deliveries(30)
    row.refresh_from_db()
    assert row.consecutive_failures == 3
    assert (len(alerting), len(webhook_server.requests), len(received.calls)) == (1, 1, 1)


def test_a_webhook_answering_500_is_retried_until_it_takes_the_delivery():
    server = Recorder(statuses=[500, 503])
    try:
        webhook = Webhook({'notifier': 'webhook', 'url': server.url, 'secret': None, 'timeout': 5, 'retries': 3,
                           'backoff': 0.05})  # fmt: skip
        assert webhook.deliver(b'{}', 'schedule_failing', 'delivery-1')
        assert [request.path for request in server.requests] == ['/', '/', '/']
        assert {request.headers[DELIVERY_HEADER] for request in server.requests} == {'delivery-1'}
        assert SIGNATURE_HEADER not in server.requests[0].headers  # no secret, no signature
        server.statuses = [400]
        assert not webhook.deliver(b'{}', 'schedule_failing', 'delivery-2')  # refused: not retried
        assert len(server.requests) == 4
        server.statuses = [500] * 10
        assert not webhook.deliver(b'{}', 'schedule_failing', 'delivery-3')  # 1 + 3 retries, then given up
        assert len(server.requests) == 8
    finally:
        server.close()


def test_a_hanging_webhook_does_not_hold_up_ingestion(settings, leader, redis_url):
    hanging = Hanging()
    settings.RQ_SCHEDULED = {
        'ALERT_AFTER_FAILURES': 1,
        'ALERTS': [{'notifier': 'webhook', 'url': hanging.url, 'timeout': 5, 'retries': 3}],
    }
    try:
        rows = [failing_row(f'failing {i}') for i in range(3)]
        for row in rows:
            run_now(row)
        run_worker(redis_url)
        started = time.monotonic()
        leader()  # three alerts to a server that never answers
        elapsed = time.monotonic() - started
        assert all(row.runs.get().status == 'failed' for row in rows)
        assert elapsed < 2.0, f'ingestion took {elapsed:.1f} s'
        [webhook] = alerts.active()
        assert not webhook.outbox.wait(0.5)  # its deliveries wait on the server, in their own thread
    finally:
        hanging.close()


def test_a_full_outbox_drops_with_a_warning_and_never_blocks(caplog):
    outbox = Outbox('drqs-test', size=1)
    release = threading.Event()
    assert outbox.post(release.wait, 'the first')  # taken by the thread at once, then stuck
    wait_for(lambda: outbox._queue.empty())
    assert outbox.post(lambda: None, 'the second')  # waits in the queue
    with caplog.at_level(logging.WARNING, logger='django_rq_scheduled.outbox'):
        started = time.monotonic()
        assert not outbox.post(lambda: None, 'the third')
        assert time.monotonic() - started < 0.1
    assert 'dropping the third' in caplog.text and outbox.dropped == 1
    release.set()
    assert outbox.wait(5)


def test_a_signature_verifies_only_with_its_secret_its_body_and_a_fresh_timestamp():
    body = b'{"event": "schedule_failing"}'
    headers = signature_headers(SECRET, body)
    stamp, signature = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert verify_signature(SECRET, body, stamp, signature)
    assert not verify_signature('another secret', body, stamp, signature)
    assert not verify_signature(SECRET, body + b' ', stamp, signature)
    old = signature_headers(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not verify_signature(SECRET, body, old[TIMESTAMP_HEADER], old[SIGNATURE_HEADER])  # a replay
    assert not verify_signature(SECRET, body, 'not a number', signature)


def test_the_heartbeat_is_pinged_by_the_leader_and_not_by_a_standby(redis_url, connection):
    server = Recorder()

    def beating(path: str) -> dict[str, str]:
        return {'DRQS_TEST_ALERTS': json.dumps([{'notifier': 'heartbeat', 'url': server.url + path, 'every': 1}])}

    first = scheduler_process(redis_url, name='first', env=beating('/first'))
    first_output = OutputReader(first)
    second = None
    try:
        wait_for(lambda: connection.get(keys.LOCK_KEY), timeout=30)
        second = scheduler_process(redis_url, name='second', env=beating('/second'))
        second_output = OutputReader(second)
        wait_for(lambda: len(server.at('/first')) >= 3, timeout=30)
        assert server.at('/second') == [], second_output.text
        assert {request.method for request in server.at('/first')} == {'GET'}
        assert stop(first) == 0
        wait_for(lambda: len(server.at('/second')) >= 2, timeout=60)  # the standby took over, and beats
        pings_of_the_first = len(server.at('/first'))
        time.sleep(1.5)
        assert len(server.at('/first')) == pings_of_the_first  # a stopped leader is silent
    finally:
        for process in (first, second):
            if process is not None:
                kill(process)
        server.close()
    assert 'Traceback' not in first_output.text


@pytest.fixture
def sentry():
    sentry_sdk = pytest.importorskip('sentry_sdk')
    server = Recorder()
    port = server.server_address[1]
    # No integration: sentry-sdk's RQ integration would patch RQ's enqueue for the rest of the run (it adds trace
    # headers to every job's meta, which tests/test_interop.py rightly refuses).
    sentry_sdk.init(
        dsn=f'http://public@127.0.0.1:{port}/1', default_integrations=False, auto_enabling_integrations=False
    )
    yield server
    sentry_sdk.get_client().close()
    sentry_sdk.init(default_integrations=False, auto_enabling_integrations=False)  # no DSN: inactive again
    server.close()


def test_sentry_crons_get_in_progress_then_ok_or_error_check_ins(sentry, settings, leader, redis_url):
    import sentry_sdk

    settings.RQ_SCHEDULED = {'ALERTS': [{'notifier': 'sentry_crons'}]}
    soon = datetime.now(UTC) + timedelta(milliseconds=100)
    common: dict[str, Any] = {'interval': 1, 'interval_unit': 'minutes', 'scheduled_time': soon}
    ok = RepeatableJob.objects.create(name='ok', callable='tests.tasks.add', args=[1, 2], **common)
    bad = RepeatableJob.objects.create(name='a bad one', callable='tests.tasks.fail', args=['no'], **common)
    time.sleep(0.2)
    leader()  # both enqueued
    run_worker(redis_url)
    leader()  # both ended
    assert alerts.wait_for_deliveries(30)
    sentry_sdk.flush(10)
    check_ins = sentry_items(sentry.requests)
    by_monitor: dict[str, list[dict[str, Any]]] = {}
    for check_in in check_ins:
        by_monitor.setdefault(check_in['monitor_slug'], []).append(check_in)
    assert set(by_monitor) == {f'repeatablejob-{ok.pk}-ok', f'repeatablejob-{bad.pk}-a-bad-one'}
    for row, final in ((ok, 'ok'), (bad, 'error')):
        steps = by_monitor[f'repeatablejob-{row.pk}-{"ok" if row is ok else "a-bad-one"}']
        assert [step['status'] for step in steps] == ['in_progress', final], steps
        assert len({step['check_in_id'] for step in steps}) == 1  # one check-in, updated
        assert steps[-1]['duration'] >= 0
        assert steps[0]['monitor_config'] == {'schedule': {'type': 'interval', 'value': 1, 'unit': 'minute'}}
