"""The banners above the schedule change lists: no leader, Redis unreachable, schedules failing; and their cost."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import User
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_rq_scheduled.core import keys
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from tests.redis_server import RedisServer
from tests.test_admin import changelist_costs
from tests.test_health import lead

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHANGE_LISTS = [
    f'admin:django_rq_scheduled_{model._meta.model_name}_changelist' for model in (ScheduledJob, RepeatableJob, CronJob)
]
NO_LEADER = 'No scheduler leads on default, high'


@pytest.fixture
def admin(client, redis_url):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def page(client, name='admin:django_rq_scheduled_cronjob_changelist', query=''):
    response = client.get(reverse(name) + query)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def cron(name, **extra):
    return CronJob.objects.create(name=name, callable='tests.tasks.add', cron_string='0 * * * *', **extra)


@pytest.mark.parametrize('change_list', CHANGE_LISTS)
def test_no_leader_banner_on_every_change_list(admin, connection, change_list):
    text = page(admin, change_list)
    assert NO_LEADER in text
    assert '<li class="drqs-banner error">' in text  # tells the banners from the messages of actions
    lead(connection)
    assert NO_LEADER not in page(admin, change_list)


def test_no_banner_while_a_leader_beats(admin, connection):
    cron('hourly')
    lead(connection)
    text = page(admin)
    assert 'No scheduler leads' not in text and 'stopped beating' not in text and 'failing' not in text.split('<h1')[0]
    assert 'Redis unreachable' not in text


def test_a_leader_that_stopped_beating_is_named(admin, connection):
    lead(connection, name='stuck-one', beat_age=120)
    assert 'The scheduler leading on default, high (stuck-one) has stopped beating' in page(admin)


def test_a_lock_held_by_rq_scheduler_is_no_leader_of_ours(admin, connection):
    connection.set(keys.LOCK_KEY, b'1764260000.5')
    assert 'held by another program (rq-scheduler?)' in page(admin)


def test_redis_unreachable_banner(admin, settings):
    server = RedisServer().start()
    settings.RQ_QUEUES = {'default': {'URL': server.url}}
    try:
        cron('listed')
        server.stop()
        text = page(admin)
        assert 'Redis unreachable on default: Redis did not answer' in text
        assert str(server.port) not in text
    finally:
        server.close()


def test_failing_banner_counts_enabled_failing_rows_and_links_to_the_failing_filter(admin, connection):
    lead(connection)
    failing = [cron('flaky'), cron('broken'), cron('paused-and-failing')]
    cron('fine')
    CronJob.objects.filter(pk__in=[row.pk for row in failing]).record_feedback(consecutive_failures=3)
    failing[-1].disable()
    text = page(admin)
    assert '<a href="?outcome=failing&enabled__exact=1">2 schedules failing: their last runs failed.</a>' in text
    response = admin.get(reverse(CHANGE_LISTS[2]) + '?outcome=failing&enabled__exact=1')
    assert sorted(row.name for row in response.context['cl'].result_list) == ['broken', 'flaky']
    assert 'schedules failing' not in page(admin, CHANGE_LISTS[0])  # counted per model


def test_the_banners_cost_one_count_query_and_no_round_trip_of_their_own(admin, connection):
    lead(connection)
    url = reverse(CHANGE_LISTS[2])
    for n in range(30):
        cron(f'row-{n}')
    queries, trips, _ = changelist_costs(admin, url)
    assert trips == 1  # the status column's round trip reads the leadership too
    with CaptureQueriesContext(db_connection) as captured:
        admin.get(url)
    counts = [q['sql'] for q in captured.captured_queries if 'consecutive_failures' in q['sql'] and 'COUNT' in q['sql']]
    assert len(counts) == 1 and len(captured) == queries <= 5  # 4 before the banners


def test_an_empty_change_list_reads_each_server_once(admin, connection, redis_url, settings):
    settings.RQ_QUEUES = {'default': {'URL': redis_url}, 'other': {'URL': redis_url.rsplit('/', 1)[0] + '/1'}}
    lead(connection)
    _, trips, _ = changelist_costs(admin, reverse(CHANGE_LISTS[0]))
    assert trips == 2
    text = page(admin, CHANGE_LISTS[0])
    assert 'No scheduler leads on other' in text and 'No scheduler leads on default' not in text


@pytest.mark.skipif(db_connection.vendor != 'sqlite', reason='the query plan of SQLite')
def test_the_failing_count_reads_an_index_of_the_failing_rows_only():
    query = CronJob.objects.failing().order_by().values('pk').query  # as count() reads it
    sql, params = query.sql_with_params()
    with db_connection.cursor() as cursor:
        cursor.execute(f'EXPLAIN QUERY PLAN {sql}', params)
        plan = ' '.join(str(row) for row in cursor.fetchall())
    assert 'drqs_cronjob_failing' in plan, plan
