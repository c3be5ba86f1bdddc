"""The system checks of the alert settings: each hostile value is reported with its stable id, naming the entry and
the key, and never repeating a secret or a URL whole."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from django_rq_scheduled import alert_config, alerts
from django_rq_scheduled.sentry_crons import MAX_SLUG, monitor_config, monitor_slug

WEBHOOK = {'notifier': 'webhook', 'url': 'https://hooks.example.com/T0KEN'}


def alert_checks(config: dict) -> list[tuple[str, str]]:
    with override_settings(RQ_SCHEDULED=config):
        return [(m.id, m.msg) for m in run_checks() if m.id.startswith('django_rq_scheduled.')]


def test_valid_alert_settings_pass():
    config = {
        'ALERT_AFTER_FAILURES': 1,
        'ADMIN_BASE_URL': 'https://ops.example.com',
        'ALERTS': [
            {'notifier': 'mail_admins'},
            {**WEBHOOK, 'secret': 's3cret', 'timeout': 2.5, 'retries': 0, 'backoff': 0},
            {'notifier': 'heartbeat', 'url': 'http://127.0.0.1:8000/ping', 'every': 30},
            {'notifier': 'sentry_crons', 'monitor_config': False},
        ],
    }
    assert alert_checks(config) == []


@pytest.mark.parametrize(
    ('alerts_value', 'expected_id', 'words'),
    [
        ({'notifier': 'mail_admins'}, 'E010', "ALERTS'] must be a list"),
        ('mail_admins', 'E010', 'got str'),
        (['mail_admins'], 'E011', "ALERTS'][0] must be a dict"),
        ([{'notifier': 'pager'}], 'E011', "'notifier' must be one of"),
        ([{}], 'E011', "'notifier' must be one of"),
        ([{'notifier': 'webhook'}], 'E012', "[0] (webhook): 'url' is required"),
        ([{'notifier': 'heartbeat'}], 'E012', "'url' is required"),
        ([{'notifier': 'webhook', 'url': 'file:///etc/passwd'}], 'E012', "got a 'file' URL"),
        ([{'notifier': 'webhook', 'url': 'ftp://example.com/x'}], 'E012', "got a 'ftp' URL"),
        ([{'notifier': 'webhook', 'url': 'http:///path-only'}], 'E012', 'with a host'),
        ([{'notifier': 'webhook', 'url': 42}], 'E012', 'got int'),
        ([{**WEBHOOK, 'timeout': -1}], 'E012', "'timeout' must be a number of seconds above 0"),
        ([{**WEBHOOK, 'timeout': 0}], 'E012', "'timeout'"),
        ([{**WEBHOOK, 'timeout': float('nan')}], 'E012', "'timeout'"),
        ([{**WEBHOOK, 'retries': -1}], 'E012', "'retries' must be a whole number from 0 to 10"),
        ([{**WEBHOOK, 'retries': 1.5}], 'E012', "'retries'"),
        ([{**WEBHOOK, 'retries': True}], 'E012', "'retries'"),
        ([{**WEBHOOK, 'backoff': -0.5}], 'E012', "'backoff'"),
        ([{**WEBHOOK, 'secret': ''}], 'E012', "'secret' must be None or a non-empty string"),
        ([{**WEBHOOK, 'retry': 3}], 'E012', "unknown key 'retry'"),
        ([{'notifier': 'heartbeat', 'url': 'http://x.example', 'every': -60}], 'E012', "'every' must be"),
        ([{'notifier': 'heartbeat', 'url': 'http://x.example', 'every': 0}], 'E012', "'every' must be"),
        ([{'notifier': 'sentry_crons', 'monitor_config': 'yes'}], 'E012', "'monitor_config' must be True or False"),
    ],
)
def test_hostile_alerts_are_reported_by_a_system_check(alerts_value, expected_id, words):
    [(check_id, message)] = alert_checks({'ALERTS': alerts_value})
    assert check_id == f'django_rq_scheduled.{expected_id}'
    assert words in message, message


def test_the_messages_repeat_no_secret_and_no_url_whole():
    secret_url = 'file:///var/secret-token'
    found = alert_checks({'ALERTS': [{'notifier': 'webhook', 'url': secret_url, 'secret': 7}]})
    assert [check_id for check_id, _ in found] == ['django_rq_scheduled.E012'] * 2
    assert all('secret-token' not in message and '7' not in message.split(':')[-1] for _, message in found)


def test_every_problem_of_every_entry_is_reported():
    found = alert_checks({'ALERTS': [{'notifier': 'webhook', 'timeout': -1, 'retries': -1}, 'x', {'notifier': 1}]})
    assert sorted(check_id[-4:] for check_id, _ in found) == ['E011', 'E011', 'E012', 'E012', 'E012']


@pytest.mark.parametrize('value', [0, -3, 1.5, True, '3', 10**9])
def test_alert_after_failures_must_be_one_or_more(value):
    [(check_id, message)] = alert_checks({'ALERT_AFTER_FAILURES': value})
    assert check_id == 'django_rq_scheduled.E002' and 'ALERT_AFTER_FAILURES' in message
    with override_settings(RQ_SCHEDULED={'ALERT_AFTER_FAILURES': value}):
        assert alerts.alert_after_failures() == 3  # the leader keeps the default meanwhile


@pytest.mark.parametrize('value', ['ops.example.com', 'javascript:alert(1)', 3])
def test_admin_base_url_must_be_an_http_url(value):
    [(check_id, message)] = alert_checks({'ADMIN_BASE_URL': value})
    assert check_id == 'django_rq_scheduled.E002' and 'ADMIN_BASE_URL' in message


def test_entries_with_a_problem_are_left_out_by_the_leader(caplog):
    config = [{'notifier': 'mail_admins'}, {'notifier': 'webhook', 'url': 'file:///x'}, 'junk']
    assert [entry['notifier'] for entry in alert_config.parsed(config)] == ['mail_admins']
    with override_settings(RQ_SCHEDULED={'ALERTS': config}):
        assert [type(notifier).__name__ for notifier in alerts.active()] == ['MailAdmins']
    assert "got a 'file' URL; left out" in caplog.text
    assert alert_config.parsed('not a list') == []


def test_sentry_monitor_slugs_are_unique_readable_and_bounded():
    class Row:
        class _meta:
            model_name = 'cronjob'

        pk = 123456789
        name = 'The nightly report for every customer, in full, with its attachments'
        cron_string = '0 7 * * 1-5'
        timezone = 'Europe/Paris'

    slug = monitor_slug(Row)
    assert slug.startswith('cronjob-123456789-the-nightly-report') and len(slug) <= MAX_SLUG
    assert monitor_config(Row) == {'schedule': {'type': 'crontab', 'value': '0 7 * * 1-5'}, 'timezone': 'Europe/Paris'}
    Row.name = '!!!'
    assert monitor_slug(Row) == 'cronjob-123456789'
    Row.cron_string = '*/10 * * * * *'  # seconds: no crontab Sentry reads
    assert monitor_config(Row) is None
