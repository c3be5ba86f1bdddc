"""The status page against hostile Redis data and hostile requests: it always renders, and buttons act exactly."""

from __future__ import annotations

import html
import json
import math
import re
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import fakeredis
import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rq import Queue, SimpleWorker
from rq.job import Job

from django_rq_scheduled import Scheduler, owners, servers, status_views
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.status import _text
from django_rq_scheduled.models import CronJob
from tests import tasks
from tests.redis_server import RedisServer, has_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
DEAD, SCHEDULE, INSTANCES, LOCK = keys.DEAD_LETTERS_KEY, keys.SCHEDULED_JOBS_KEY, keys.INSTANCES_KEY, keys.LOCK_KEY


@pytest.fixture
def superuser(client, redis_url):
    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def status_url() -> str:
    return reverse('admin:django_rq_scheduled_schedulerstatus_changelist')


def server_name(client) -> str:
    return client.get(status_url()).context['servers'][0]['name']


def rendered(client) -> str:
    response = client.get(status_url())
    assert response.status_code == 200
    return response.content.decode()


def snapshot(connection) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing in Redis changed."""
    return {key: connection.dump(key) for key in connection.keys('*')}


@pytest.fixture
def finished_job(connection) -> str:
    """The id of a job that was scheduled, moved onto its queue, and run by a worker."""
    scheduler = Scheduler(connection=connection)
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), tasks.add, 1, 2, job_id='finished-job')
    assert [job.id for job in scheduler.enqueue_jobs()] == ['finished-job']
    SimpleWorker([Queue('default', connection=connection)], connection=connection).work(burst=True)
    assert Job.fetch('finished-job', connection=connection).get_status() == 'finished'
    return 'finished-job'


# -- retry re-schedules dead letters only -----------------------------------------------------------------------


def test_retrying_a_finished_job_through_the_api_changes_nothing(connection, finished_job):
    before = snapshot(connection)
    assert Scheduler(connection=connection).retry_dead_letter(finished_job) is False
    assert snapshot(connection) == before


def test_retrying_a_finished_job_through_the_page_changes_nothing(superuser, connection, finished_job):
    server = server_name(superuser)
    before = snapshot(connection)
    response = superuser.post(status_url(), {'server': server, 'job_id': finished_job, 'action': 'retry'}, follow=True)
    assert response.status_code == 200
    assert f'“{finished_job}” was not a dead letter.' in response.content.decode()
    assert snapshot(connection) == before


def test_retrying_a_dead_letter_schedules_it_now_and_wakes_the_loop(connection):
    scheduler = Scheduler(connection=connection)
    connection.hset(keys.DEAD_LETTERS_KEY, 'poisoned', '{"reason": "corrupt", "score": 1, "at": 2}')
    connection.set(keys.NEXT_WAKEUP_KEY, datetime(2031, 1, 1, tzinfo=UTC).timestamp())
    assert scheduler.retry_dead_letter('poisoned') is True
    assert 'poisoned' in scheduler and scheduler.dead_letters() == {}
    assert connection.llen(keys.WAKEUP_KEY) == 1


# -- hostile data: the page renders, shows what it can, escaped -------------------------------------------------


def dead_letter(field: str | bytes, value: str | bytes):
    return lambda r: r.hset(DEAD, field, value)


def scheduled(member: str | bytes, score: float):
    return lambda r: r.zadd(SCHEDULE, {member: score})


def instance(name: bytes, lock: bytes | None = None, **fields: str | bytes):
    def write(r):
        r.zadd(INSTANCES, {name: time.time()})
        r.hset(keys.INSTANCE_KEY_PREFIX.encode() + name, mapping=fields)
        if lock is not None:
            r.set(LOCK, lock)

    return write


def times(score: str, at: str) -> str:
    return f'{{"reason": "bad times", "score": {score}, "at": {at}}}'


HOSTILE_DATA = [
    pytest.param(dead_letter('json-list', '[1,2]'), ['json-list', '[1,2]'], id='dead-letter-json-list'),
    pytest.param(dead_letter('json-string', '"x"'), ['json-string', '&quot;x&quot;'], id='dead-letter-json-string'),
    pytest.param(dead_letter('json-number', '3'), ['json-number'], id='dead-letter-json-number'),
    pytest.param(dead_letter('json-null', 'null'), ['json-null'], id='dead-letter-json-null'),
    pytest.param(
        dead_letter('not-json', '<script>alert(1)</script>'),
        ['not-json', '&lt;script&gt;alert(1)&lt;/script&gt;'],
        id='dead-letter-not-json',
    ),
    pytest.param(
        dead_letter('not-utf8', b'\xff\xfe<b>'), ['not-utf8', r'\xff\xfe&lt;b&gt;'], id='dead-letter-not-utf8'
    ),
    pytest.param(dead_letter('inf', times('Infinity', '-Infinity')), ['inf', 'bad times'], id='dead-letter-infinity'),
    pytest.param(dead_letter('nan', times('NaN', 'NaN')), ['nan', 'bad times'], id='dead-letter-nan'),
    pytest.param(dead_letter('huge', times('1e400', '1' + '0' * 400)), ['huge', 'bad times'], id='dead-letter-1e400'),
    pytest.param(dead_letter('future', times('1e15', '1e15')), ['future', '1e+15'], id='dead-letter-far-future'),
    pytest.param(dead_letter('past', times('-1e15', '-1e15')), ['past', '-1e+15'], id='dead-letter-far-past'),
    pytest.param(
        dead_letter('odd', '{"reason": {"<i>": [1]}, "score": "soon", "at": true}'),
        ['odd', '&lt;i&gt;'],
        id='dead-letter-reason-not-text',
    ),
    pytest.param(
        dead_letter(b'bad\xff<i>', '{"reason": "undecodable"}'), [r'bad\xff&lt;i&gt;'], id='dead-letter-field-not-utf8'
    ),
    pytest.param(scheduled('at-inf', math.inf), ['at-inf', 'inf'], id='schedule-score-inf'),
    pytest.param(scheduled('at-minus-inf', -math.inf), ['at-minus-inf', '-inf'], id='schedule-score-minus-inf'),
    pytest.param(scheduled('at-1e15', 1e15), ['at-1e15', '1e+15'], id='schedule-score-1e15'),
    pytest.param(scheduled('at-minus-1e15', -1e15), ['at-minus-1e15', '-1e+15'], id='schedule-score-minus-1e15'),
    pytest.param(scheduled(b'bad\xff<i>', 1e9), [r'bad\xff&lt;i&gt;'], id='schedule-member-not-utf8'),
    pytest.param(
        instance(b'\xffnode', hostname=b'\xfe<b>', pid='x', last_heartbeat='soon', leader_since='NaN'),
        [r'\xffnode', r'\xfe&lt;b&gt;'],
        id='instance-name-and-fields-not-utf8',
    ),
    pytest.param(
        instance(b'node-1', hostname='h1', last_heartbeat='inf', leader_since='1e15', role=b'\xff'),
        ['node-1', 'h1'],
        id='instance-times-out-of-range',
    ),
    pytest.param(
        instance(b'node-2', hostname='h2', last_heartbeat='-1e15', leader_since='-inf'),
        ['node-2', 'h2'],
        id='instance-times-far-past',
    ),
    pytest.param(
        instance(b'\xfeleader', lock=b'drqs|\xfeleader|nonce', hostname='leader-host', leader_since='1e400'),
        [r'\xfeleader', 'leader-host'],
        id='leader-name-not-utf8',
    ),
    pytest.param(lambda r: r.set(LOCK, b'\xff\xfe'), ['an rq-scheduler process holds the lock'], id='lock-not-utf8'),
    pytest.param(lambda r: r.set(LOCK, b'drqs|'), ['none: no scheduler is running'], id='lock-empty-name'),
]


@pytest.mark.parametrize(('write', 'shown'), HOSTILE_DATA)
def test_hostile_data_is_shown_escaped(superuser, connection, redis_url, write, shown):
    write(connection)
    page = rendered(superuser)
    for text in shown:
        assert text in page
    assert '<script>alert' not in page and '<b>' not in page and '<i>' not in page
    assert redis_url not in page


NOT_A_ROW_S_TEMPLATE_ID = [
    'api-job', 'drqs-cronjob-007', 'drqs-cronjob- 1', 'drqs-cronjob-+1', 'drqs-cronjob-' + '9' * 30,
    'drqs-cronjob--1', 'drqs-cronjob-', 'drqs-nomodel-1', 'drqs-scheduledjob-1_at_1', 'drqs-repeatablejob-x',
]  # fmt: skip


@pytest.mark.parametrize('member', NOT_A_ROW_S_TEMPLATE_ID)
def test_only_the_exact_template_id_of_a_row_names_it(member):
    assert owners.owner_of(member) is None


def test_a_row_s_template_id_names_its_model_and_key():
    assert owners.owner_of('drqs-cronjob-7') == (CronJob, 7)


def test_names_of_rows_are_shown_escaped(superuser, connection):
    row = CronJob.objects.create(name='<script>alert(1)</script>', callable='tests.tasks.add', cron_string='0 0 * * *')
    for member in NOT_A_ROW_S_TEMPLATE_ID:
        connection.zadd(SCHEDULE, {member: 2e9})
    page = rendered(superuser)
    assert '&lt;script&gt;alert(1)&lt;/script&gt;</a> <span class="drqs-kind quiet">(cron job)</span>' in page
    assert '<script>alert' not in page
    assert page.count('drqs-no-row') == 2 * len(NOT_A_ROW_S_TEMPLATE_ID)  # in both lists
    assert row.template_id.encode().hex() not in {form['member'] for form in forms_in(page, 'drqs-unowned')}


WRONG_TYPES = [
    pytest.param(DEAD, lambda r, key: r.set(key, 'x'), id='dead-letters-a-string'),
    pytest.param(INSTANCES, lambda r, key: r.rpush(key, 'x'), id='instances-a-list'),
    pytest.param(SCHEDULE, lambda r, key: r.hset(key, 'x', '1'), id='schedule-a-hash'),
    pytest.param(LOCK, lambda r, key: r.hset(key, 'x', '1'), id='lock-a-hash'),
    pytest.param(keys.instance_key('node'), lambda r, key: r.set(key, 'x'), id='instance-a-string'),
]


@pytest.mark.parametrize(('key', 'write'), WRONG_TYPES)
def test_a_key_of_the_wrong_type_is_reported_and_the_rest_shown(superuser, connection, key, write):
    connection.hset(DEAD, 'still-shown', '{"reason": "r"}')
    connection.zadd(SCHEDULE, {'still-shown': 1})
    connection.zadd(INSTANCES, {'node': 1})
    connection.delete(key)
    write(connection, key)
    page = rendered(superuser)
    problems = re.search(r'<ul class="errorlist drqs-problems">(.*?)</ul>', page, re.S)
    assert problems and key in problems.group(1) and 'WRONGTYPE' in problems.group(1)
    assert 'still-shown' in page


# -- buttons act on exactly the member they show, whatever its bytes ---------------------------------------------


def forms_in(page: str, table_id: str) -> list[dict[str, object]]:
    """The hidden fields and the action buttons of each form in one table of the page."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    forms = []
    for form in re.findall(r'<form.*?</form>', table, re.S):
        fields = {name: html.unescape(value) for name, value in re.findall(r'name="(\w+)" value="([^"]*)"', form)}
        fields['actions'] = re.findall(r'<button type="submit" name="action" value="(\w+)"', form)
        forms.append(fields)
    return forms


def press(client, form: dict[str, object], action: str):
    data = {name: value for name, value in form.items() if name not in ('actions', 'csrfmiddlewaretoken')}
    return client.post(status_url(), {**data, 'action': action}, follow=True)


LOOKALIKES = [b'bad\xff', b'bad\xfe', 'bad\N{REPLACEMENT CHARACTER}'.encode(), b'has space']


def test_discard_removes_exactly_the_dead_letter_shown_whatever_its_bytes(superuser, connection):
    for field in LOOKALIKES:
        connection.hset(DEAD, field, '{"reason": "not a job id"}')
    forms = forms_in(rendered(superuser), 'drqs-dead-letters')
    assert len(forms) == len(LOOKALIKES) and all(form['actions'] == ['discard'] for form in forms)
    for field in LOOKALIKES:
        form = next(form for form in forms if form['member'] == field.hex())
        assert press(superuser, form, 'discard').status_code == 200
        assert field not in connection.hkeys(DEAD)
    assert connection.hlen(DEAD) == 0


def test_cancel_removes_exactly_the_unowned_entry_shown_whatever_its_bytes(superuser, connection):
    connection.zadd(SCHEDULE, {member: 2e9 for member in LOOKALIKES})
    forms = forms_in(rendered(superuser), 'drqs-unowned')
    form = next(form for form in forms if form['member'] == b'bad\xff'.hex())
    assert 'removed' in press(superuser, form, 'cancel').content.decode()
    assert sorted(connection.zrange(SCHEDULE, 0, -1)) == sorted(set(LOOKALIKES) - {b'bad\xff'})


def test_retry_is_refused_for_a_member_that_is_no_job_id(superuser, connection):
    connection.hset(DEAD, b'bad\xff', '{"reason": "undecodable"}')
    before = snapshot(connection)
    response = superuser.post(
        status_url(), {'server': server_name(superuser), 'member': b'bad\xff'.hex(), 'action': 'retry'}, follow=True
    )
    assert 'cannot be retried' in response.content.decode()
    assert snapshot(connection) == before


def test_valid_dead_letters_keep_their_retry_button(superuser, connection):
    connection.hset(DEAD, 'poisoned', '{"reason": "corrupt"}')
    (form,) = forms_in(rendered(superuser), 'drqs-dead-letters')
    assert form['actions'] == ['retry', 'discard']
    assert 'scheduled again' in press(superuser, form, 'retry').content.decode()
    assert connection.zscore(SCHEDULE, 'poisoned') is not None and connection.hlen(DEAD) == 0


@pytest.fixture
def restricted(settings):
    """An allow-list, with the admin's schedulers (cached per RQ_QUEUES, reading it once) built afresh around it."""
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    servers._servers_for.cache_clear()
    yield
    servers._servers_for.cache_clear()


def test_retry_of_a_dead_letter_the_allow_list_refuses_says_why_and_changes_nothing(superuser, connection, restricted):
    Job.create(tasks.add, args=(1, 2), id='refused', connection=connection, on_failure=None).save()
    connection.hset(keys.job_key('refused'), 'failure_callback_name', 'os.system')
    connection.hset(DEAD, 'refused', '{"reason": "failure_callback_name refused"}')
    before = snapshot(connection)
    (form,) = forms_in(rendered(superuser), 'drqs-dead-letters')
    page = press(superuser, form, 'retry').content.decode()
    assert 'would not run: failure_callback_name refused' in html.unescape(page)
    assert snapshot(connection) == before


# -- hostile requests: nothing changes, the page answers --------------------------------------------------------

SERVER = object()  # replaced by the server's name in the test
HOSTILE_POSTS = [
    pytest.param({}, id='nothing'),
    pytest.param({'job_id': 'api-job', 'action': 'cancel'}, id='no-server'),
    pytest.param({'server': 'nope', 'job_id': 'api-job', 'action': 'cancel'}, id='unknown-server'),
    pytest.param({'server': SERVER, 'job_id': 'api-job'}, id='no-action'),
    pytest.param({'server': SERVER, 'job_id': 'api-job', 'action': 'explode'}, id='unknown-action'),
    pytest.param({'server': SERVER, 'action': 'cancel'}, id='no-job-id'),
    pytest.param({'server': SERVER, 'job_id': 'api-job\n', 'action': 'cancel'}, id='job-id-with-newline'),
    pytest.param({'server': SERVER, 'job_id': 'api-job\nx', 'action': 'retry'}, id='job-id-with-newline-retry'),
    pytest.param({'server': SERVER, 'job_id': 'x' * 10_000, 'action': 'cancel'}, id='job-id-10000-chars'),
    pytest.param({'server': SERVER, 'job_id': '<b>' * 3_334, 'action': 'retry'}, id='job-id-10000-chars-retry'),
    pytest.param({'server': SERVER, 'member': 'zz', 'action': 'discard'}, id='member-not-hex'),
    pytest.param({'server': SERVER, 'member': 'ff' * 10_000, 'action': 'cancel'}, id='member-10000-bytes'),
]


@pytest.mark.parametrize('data', HOSTILE_POSTS)
def test_hostile_posts_change_nothing(superuser, connection, data):
    Scheduler(connection=connection).enqueue_at(datetime(2031, 1, 1, tzinfo=UTC), tasks.add, job_id='api-job')
    data = {name: server_name(superuser) if value is SERVER else value for name, value in data.items()}
    before = snapshot(connection)
    response = superuser.post(status_url(), data)
    assert response.status_code == 302
    page = superuser.get(response['Location']).content.decode()
    assert snapshot(connection) == before
    assert 'class="error"' in page or 'class="warning"' in page
    assert 'x' * 200 not in page and '<b>' not in page


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client, connection, redis_url):
    connection.zadd(SCHEDULE, {'api-job': 2e9})
    client.force_login(User.objects.create_user('plain', password='pw'))
    before = snapshot(connection)
    for response in (
        client.get(status_url()),
        client.post(status_url(), {'server': 'default, high', 'job_id': 'api-job', 'action': 'cancel'}),
    ):
        assert response.status_code == 302 and '/login/' in response['Location']
    assert snapshot(connection) == before


def test_staff_without_the_change_permission_cannot_press_buttons(client, connection, redis_url):
    connection.zadd(SCHEDULE, {'api-job': 2e9})
    connection.hset(DEAD, 'poisoned', '{"reason": "r"}')
    user = User.objects.create_user('viewer', password='pw', is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename='view_schedulerstatus'))
    client.force_login(user)
    page = rendered(client)
    assert 'api-job' in page and 'poisoned' in page and '<form method="post"' not in page
    before = snapshot(connection)
    for action, job_id in (('cancel', 'api-job'), ('retry', 'poisoned'), ('discard', 'poisoned')):
        response = client.post(status_url(), {'server': 'default, high', 'job_id': job_id, 'action': action})
        assert response.status_code == 403
    assert snapshot(connection) == before


# -- a Redis that is down ---------------------------------------------------------------------------------------


@pytest.fixture
def down_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server binary to stop')
def test_a_redis_that_is_down_shows_an_error_for_its_server_only(superuser, settings, connection, down_server):
    settings.RQ_QUEUES = {'default': {'URL': settings.RQ_QUEUES['default']['URL']}, 'high': {'URL': down_server.url}}
    connection.hset(DEAD, 'still-shown', '{"reason": "r"}')
    rendered(superuser)  # the down server's client has a connection in its pool, which then breaks
    down_server.stop()
    response = superuser.get(status_url())
    page = response.content.decode()
    assert response.status_code == 200 and 'still-shown' in page
    (down,) = [server for server in response.context['servers'] if server['name'] == 'high']
    assert down['error'] and 'drqs-server-error' in page
    assert str(down_server.port) not in page and 'Traceback' not in page
    response = superuser.post(status_url(), {'server': 'high', 'job_id': 'api-job', 'action': 'cancel'})
    assert response.status_code == 302
    page = superuser.get(response['Location']).content.decode()
    assert 'class="error"' in page and str(down_server.port) not in page


# -- any bytes at all -------------------------------------------------------------------------------------------

FIELD_NAMES = st.sampled_from([b'hostname', b'pid', b'role', b'last_heartbeat', b'leader_since']) | st.binary(
    max_size=8
)
NUMBERISH = st.one_of(
    st.floats().map(lambda x: repr(x).encode()),
    st.sampled_from([b'inf', b'-inf', b'nan', b'1e400', b'1e15', b'-1e15', b'', b'\xff']),
    st.binary(max_size=8),
)
DEAD_LETTER_VALUES = st.one_of(
    st.binary(max_size=30),
    st.fixed_dictionaries(
        {'reason': st.text(max_size=10) | st.integers(), 'score': st.floats(), 'at': st.floats() | st.text(max_size=5)}
    ).map(lambda record: json.dumps(record).encode()),
    st.sampled_from([b'[1,2]', b'"x"', b'3', b'null', b'{"at": 1e400}', b'{"score": 1' + b'0' * 400 + b'}']),
)
TEMPLATE_IDS = st.sampled_from(
    [b'drqs-cronjob-1', b'drqs-cronjob-007', b'drqs-cronjob-' + b'9' * 30, b'drqs-cronjob--1', b'drqs-cronjob-',
     b'drqs-nomodel-1', b'drqs-scheduledjob-1_at_1', b'drqs-repeatablejob-x']
)  # fmt: skip
"""Members that look like the template ids of rows, none of which the page may trust blindly."""
LOCKS = st.none() | st.binary(max_size=20) | st.binary(max_size=10).map(lambda name: b'drqs|' + name + b'|nonce')


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dead=st.dictionaries(st.binary(max_size=12), DEAD_LETTER_VALUES, max_size=5),
    schedule=st.dictionaries(st.binary(min_size=1, max_size=12) | TEMPLATE_IDS, st.floats(allow_nan=False), max_size=5),
    instances=st.dictionaries(st.binary(max_size=8), st.dictionaries(FIELD_NAMES, NUMBERISH, max_size=4), max_size=3),
    lock=LOCKS,
    strings=st.sets(st.sampled_from([DEAD, SCHEDULE, INSTANCES])),
)
def test_any_bytes_render(dead, schedule, instances, lock, strings):
    """Whatever the four keys and the instance hashes hold, the page renders and encodes as UTF-8."""
    connection = fakeredis.FakeRedis()
    if dead:
        connection.hset(DEAD, mapping=dead)
    if schedule:
        connection.zadd(SCHEDULE, schedule)
    for name, fields in instances.items():
        connection.zadd(INSTANCES, {name: 1})
        if fields:
            connection.hset(keys.INSTANCE_KEY_PREFIX.encode() + name, mapping=fields)
    if lock is not None:
        connection.set(LOCK, lock)
    for key in strings:
        connection.delete(key)
        connection.set(key, b'\xff')
    request = RequestFactory().get(status_url())
    request.user = AnonymousUser()
    server = status_views._server_context(request, 'default', SimpleNamespace(connection=connection))
    context = {'servers': [server], 'can_change': True, 'opts': CronJob._meta}
    render_to_string('admin/django_rq_scheduled/status.html', context).encode('utf-8')
    assert {_text(key) for key in strings} <= set(server['status'].problems)


def test_the_dead_letters_api_reads_members_that_are_not_utf8(connection):
    connection.hset(DEAD, b'bad\xff', b'{"reason": "\xfe"}')
    assert Scheduler(connection=connection).dead_letters() == {r'bad\xff': r'{"reason": "\xfe"}'}


def test_cancel_member_takes_bytes_only(connection):
    with pytest.raises(ValueError, match=r'^member: '):
        Scheduler(connection=connection).cancel_member('api-job')
