"""The health view (``scheduler/health/``): the same verdict as the command, for staff and token holders only."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from tests.redis_server import RedisServer
from tests.test_health import health, lead, schedule

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

TOKEN = 'k7Qp-2xVb_9sLm3NwE8rTy4UiOa6SdFgHj1ZcX5vBn0'


@pytest.fixture
def url():
    return reverse('django_rq_scheduled:health')


@pytest.fixture
def token(settings):
    settings.RQ_SCHEDULED = {'HEALTH_TOKEN': TOKEN}
    return TOKEN


def bearer(value):
    return {'HTTP_AUTHORIZATION': f'Bearer {value}'}


def test_staff_get_200_when_healthy_and_503_with_the_reasons_when_not(client, connection, url):
    client.force_login(User.objects.create_user('ops', password='pw', is_staff=True))
    lead(connection)
    healthy = client.get(url)
    assert healthy.status_code == 200 and healthy.json()['verdict'] == 'healthy'
    schedule(connection, stuck=600)
    unhealthy = client.get(url)
    assert unhealthy.status_code == 503
    assert unhealthy.json()['problems'] == [
        'default, high: overdue backlog: 1 due job(s) waiting longer than 60 s (1 due in all); the oldest has '
        'waited 600 s.'
    ]


def test_no_leader_is_503(client, connection, url, token):
    response = client.get(url, **bearer(token))
    assert response.status_code == 503 and 'no leader' in response.json()['problems'][0]


def test_the_token_in_the_authorization_header_lets_in(client, connection, url, token):
    lead(connection)
    response = client.get(url, **bearer(token))
    assert response.status_code == 200
    assert response.json()['servers'][0]['leader'] == 'leader-1'


@pytest.mark.parametrize(
    'headers',
    [
        {},
        bearer('wrong'),
        bearer(TOKEN[:-1]),
        bearer(TOKEN + 'x'),
        bearer(''),
        {'HTTP_AUTHORIZATION': TOKEN},  # no scheme
        {'HTTP_AUTHORIZATION': f'Basic {TOKEN}'},
        bearer('é' * 43),
    ],
)
def test_others_get_403_and_no_detail(client, connection, url, token, headers):
    response = client.get(url, **headers)
    assert response.status_code == 403 and response.content == b''


def test_the_token_in_the_query_string_is_not_accepted(client, connection, url, token):
    lead(connection)
    assert client.get(url, {'token': token}).status_code == 403


def test_users_who_are_not_staff_get_403(client, connection, url):
    client.force_login(User.objects.create_user('visitor', password='pw'))
    assert client.get(url).status_code == 403
    client.force_login(User.objects.create_user('former', password='pw', is_staff=True, is_active=False))
    assert client.get(url).status_code == 403


@pytest.mark.parametrize('configured', [None, '', 'short', 'x' * 1025])
def test_no_token_or_a_malformed_one_turns_token_access_off(client, connection, url, settings, configured):
    settings.RQ_SCHEDULED = {'HEALTH_TOKEN': configured}
    for sent in ('', 'None', 'short', str(configured)):
        assert client.get(url, **bearer(sent)).status_code == 403


def test_get_only_and_never_cached(client, connection, url, token):
    lead(connection)
    response = client.get(url, **bearer(token))
    assert 'no-cache' in response['Cache-Control'] and 'no-store' in response['Cache-Control']
    assert client.post(url, **bearer(token)).status_code == 405
    assert client.put(url, **bearer(token)).status_code == 405
    assert 'no-cache' in client.get(url)['Cache-Control']  # refusals are not cached either


def test_the_report_never_shows_a_redis_url_or_password(client, url, token, settings):
    server = RedisServer(password='hunter2-very-secret').start()
    try:
        settings.RQ_QUEUES = {'default': {'URL': server.url}}
        first = client.get(url, **bearer(token))
        assert first.status_code == 503 and first.json()['servers'][0]['reachable'] is True
        server.stop()
        second = client.get(url, **bearer(token))
        assert second.status_code == 503 and second.json()['servers'][0]['error'] == 'ConnectionError'
        for response in (first, second):
            body = response.content.decode()
            assert 'hunter2' not in body and str(server.port) not in body and 'redis://' not in body
    finally:
        server.close()


def test_the_view_and_the_command_give_the_same_report(client, connection, url, token):
    lead(connection, beat_age=30)
    schedule(connection, stuck=600)
    view = client.get(url, **bearer(token)).json()
    command = json.loads(health('--json')[1])
    assert view['problems'] == command['problems'] and len(view['problems']) == 2
    assert view['verdict'] == command['verdict'] == 'unhealthy'
