"""``manage.py schedules health``: verdicts, reasons, the JSON report, and what others may have written in Redis."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from io import StringIO

import pytest
import redis
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.health import check
from django_rq_scheduled.models import CronJob
from tests.processes import ROOT, process_env
from tests.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def health(*options):
    """The exit status and output of ``manage.py schedules health``."""
    out = StringIO()
    try:
        call_command('schedules', 'health', *options, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def server_now(connection):
    seconds, microseconds = connection.time()
    return seconds + microseconds / 1e6


def lead(connection, name='leader-1', beat_age=0.0):
    """What a leading ``rqscheduler`` leaves in Redis: its token in the lock, its heartbeat in the instances set."""
    connection.set(keys.LOCK_KEY, keys.lease_token(name, 'nonce'), px=60_000)
    connection.zadd(keys.INSTANCES_KEY, {name: server_now(connection) - beat_age})


def schedule(connection, **ages):
    """Schedule entries due ``age`` seconds ago (negative: in the future), by the server's clock."""
    now = server_now(connection)
    connection.zadd(keys.SCHEDULED_JOBS_KEY, {member: now - age for member, age in ages.items()})


def test_healthy_when_a_leader_beats_and_nothing_waits(connection):
    lead(connection)
    schedule(connection, later=-3600, just_due=0.5)
    status, output = health()
    assert status == 0, output
    assert output.startswith('Healthy')


def test_no_leader_fails(connection):
    status, output = health()
    assert status == 1
    assert 'default, high: no leader' in output


def test_a_stale_heartbeat_fails(connection):
    lead(connection, beat_age=30)
    status, output = health()
    assert status == 1
    assert "stale heartbeat: the leader 'leader-1' last beat 30 s ago (more than 5 s)" in output


def test_a_leader_that_beats_seldom_is_given_three_of_its_beats(connection):
    lead(connection, beat_age=30)
    connection.set(keys.LEADER_BEAT_KEY, 20)  # rqscheduler --interval 60 --lease-ttl 60, where the setting is 5
    status, output = health()
    assert status == 0, output
    connection.set(keys.LEADER_BEAT_KEY, 8)
    status, output = health()
    assert status == 1 and 'more than 24 s' in output
    connection.set(keys.LEADER_BEAT_KEY, 0.2)  # beats more often than the setting says: the setting still counts
    status, output = health()
    assert status == 1 and 'more than 5 s' in output


@pytest.mark.parametrize('junk', [b'soon', b'nan', b'-5', b'0', b'1e300', b'inf'])
def test_a_beat_period_written_by_someone_else_falls_back_to_the_setting(connection, junk):
    lead(connection, beat_age=30)
    connection.set(keys.LEADER_BEAT_KEY, junk)
    status, output = health()
    assert status == 1 and 'more than 5 s' in output


def test_a_leader_records_how_often_it_beats(connection):
    scheduler = Scheduler(connection=connection, name='long-lease', lease_ttl=42, interval=60)
    scheduler.register_birth()
    assert scheduler.acquire_lock()
    assert float(connection.get(keys.LEADER_BEAT_KEY)) == 14
    scheduler.remove_lock()
    scheduler.register_death()


def test_a_beat_key_of_the_wrong_type_is_a_problem_not_a_crash(connection):
    lead(connection)
    connection.rpush(keys.LEADER_BEAT_KEY, 'x')
    status, output = health()
    assert status == 1 and keys.LEADER_BEAT_KEY in output


def test_an_overdue_backlog_fails_with_its_size_and_the_age_of_the_oldest(connection):
    lead(connection)
    schedule(connection, a=600, b=120, c=61, d=10, e=-60)
    status, output = health()
    assert status == 1
    reason = 'overdue backlog: 3 due job(s) waiting longer than 60 s (4 due in all); the oldest has waited 600 s'
    assert reason in output
    assert health('--max-lateness', '700')[0] == 0


def test_the_json_report(connection):
    lead(connection, beat_age=0.25)
    schedule(connection, a=90, b=5)
    status, output = health('--json')
    report = json.loads(output)
    assert status == 1 and report['verdict'] == 'unhealthy'
    (server,) = report['servers']
    assert server['name'] == 'default, high' and server['reachable'] is True and server['error'] is None
    assert server['leader'] == 'leader-1' and 0.2 < server['heartbeat_age'] < 5
    assert server['due'] == 2 and server['overdue'] == 1 and 90 <= server['oldest_due_age'] < 95
    assert server['dead_letters'] == 0
    assert report['max_lateness'] == 60 and report['strict'] is False
    assert report['warnings'] == [] and len(report['problems']) == 1


def test_dead_letters_and_failing_schedules_warn_and_fail_only_when_strict(connection):
    lead(connection)
    connection.hset(keys.DEAD_LETTERS_KEY, 'broken', json.dumps({'reason': 'unloadable', 'score': 1, 'at': 2}))
    row = CronJob.objects.create(name='flaky', callable='tests.tasks.add', cron_string='0 * * * *')
    paused = CronJob.objects.create(name='paused', callable='tests.tasks.add', cron_string='0 * * * *')
    CronJob.objects.filter(pk__in=[row.pk, paused.pk]).record_feedback(consecutive_failures=2)
    paused.disable()
    status, output = health()
    assert status == 0, output
    assert 'Warning: default, high: 1 dead letter(s)' in output
    assert 'Warning: 1 schedule(s) failing' in output  # the paused one is not counted
    status, output = health('--strict')
    assert status == 1 and 'Unhealthy' in output
    assert json.loads(health('--json')[1])['failing_schedules'] == 1


def test_redis_refusing_connections_is_a_problem(settings):
    settings.RQ_QUEUES = {'default': {'URL': f'redis://:hunter2-secret@127.0.0.1:{free_port()}/0'}}
    status, output = health('--json')
    report = json.loads(output)
    assert status == 1
    assert report['servers'][0]['reachable'] is False and report['servers'][0]['error'] == 'ConnectionError'
    assert report['problems'] == ['default: Redis unreachable (ConnectionError).']
    assert 'hunter2' not in output and '127.0.0.1' not in output


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers (a partition, a frozen host)."""
    listener = socket.create_server(('127.0.0.1', 0))
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for peer in accepted:
        peer.close()
    listener.close()


def test_redis_not_answering_is_a_problem_within_the_timeout(settings, silent_server, monkeypatch):
    from django_rq_scheduled.core import health as core_health

    monkeypatch.setattr(core_health, 'TIMEOUT', 0.5)
    settings.RQ_QUEUES = {'default': {'URL': f'redis://127.0.0.1:{silent_server}/0'}}  # no timeout of its own
    started = time.monotonic()
    status, output = health()
    assert status == 1 and 'default: Redis unreachable (TimeoutError).' in output
    assert time.monotonic() - started < 5


@pytest.mark.parametrize('key', [keys.LOCK_KEY, keys.INSTANCES_KEY, keys.SCHEDULED_JOBS_KEY, keys.DEAD_LETTERS_KEY])
def test_a_key_of_the_wrong_type_is_a_problem_and_the_rest_is_read(connection, key):
    lead(connection)
    schedule(connection, old=600)
    connection.delete(key)
    connection.sadd(key, 'someone-elses')
    status, output = health('--json')
    report = json.loads(output)
    assert status == 1
    assert f'default, high: {key} cannot be read (WRONGTYPE' in '\n'.join(report['problems'])
    if key != keys.SCHEDULED_JOBS_KEY:
        assert report['servers'][0]['oldest_due_age'] >= 600


@pytest.mark.parametrize(
    ('garbage', 'expected'),
    [
        ({'last_heartbeat': b'\xff\xfegarbage'}, 'has no heartbeat'),  # the hash is not what the check reads
        ({'score': float('-inf')}, 'last beat forever ago'),
        ({'score': time.time() + 86_400}, 'last beat -86,'),  # a day in the future: not to be trusted
    ],
)
def test_garbage_heartbeats_written_by_others_do_not_pass_for_fresh_ones(connection, garbage, expected):
    connection.set(keys.LOCK_KEY, keys.lease_token('leader-1', 'nonce'), px=60_000)
    if 'score' in garbage:
        connection.zadd(keys.INSTANCES_KEY, {'leader-1': garbage['score']})
    else:
        connection.hset(keys.instance_key('leader-1'), mapping=garbage)
    status, output = health()
    assert status == 1
    assert 'stale heartbeat' in output and expected in output


@pytest.mark.parametrize('lock', [b'1764260000.5', b'\xff\xfe\x00', b'drqs'])
def test_a_lock_not_held_by_a_scheduler_of_ours_is_a_problem(connection, lock):
    connection.set(keys.LOCK_KEY, lock)  # rq-scheduler writes a timestamp; anything else is someone else's
    status, output = health()
    assert status == 1
    assert 'held by another program (rq-scheduler?)' in output


def test_a_leader_name_is_shown_escaped_and_cut(connection):
    name = b'\xff' + b'x' * 5000
    connection.set(keys.LOCK_KEY, keys.LEASE_TOKEN_PREFIX.encode() + name + b'|nonce')
    connection.zadd(keys.INSTANCES_KEY, {name: server_now(connection)})
    report = json.loads(health('--json')[1])
    assert report['verdict'] == 'healthy'
    assert report['servers'][0]['leader'].startswith('\\xffxxx') and len(report['servers'][0]['leader']) == 200


def test_an_empty_project_is_unhealthy(settings):
    settings.RQ_QUEUES = {}
    status, output = health()
    assert status == 1 and 'RQ_QUEUES is empty' in output


@pytest.mark.parametrize('value', ['0', '-5', 'nan', 'inf', '-inf', '1e9', 'soon', ''])
def test_a_max_lateness_out_of_range_is_refused_naming_the_option(redis_url, value):
    with pytest.raises(CommandError, match='--max-lateness'):
        call_command('schedules', 'health', '--max-lateness', value)


def test_usage_errors_exit_2_and_unhealthy_exits_1_from_the_command_line(redis_url):
    def run(*arguments):
        command = [sys.executable, '-m', 'django', 'schedules', *arguments, '--settings', 'tests.settings']
        return subprocess.run(command, cwd=ROOT, env=process_env(redis_url), capture_output=True, text=True)

    refused = run('health', '--max-lateness', '-1')
    assert refused.returncode == 2 and 'argument --max-lateness: must be greater than zero' in refused.stderr
    assert run().returncode == 2  # no subcommand
    assert run('nonsense').returncode == 2
    unhealthy = run('health')
    assert unhealthy.returncode == 1 and 'no leader' in unhealthy.stdout


@pytest.mark.parametrize(
    ('config', 'fragment'),
    [
        ({'HEALTH_MAX_LATENESS': 0}, 'HEALTH_MAX_LATENESS'),
        ({'HEALTH_MAX_LATENESS': '60'}, 'HEALTH_MAX_LATENESS'),
        ({'HEALTH_MAX_LATENESS': float('nan')}, 'HEALTH_MAX_LATENESS'),
        ({'HEALTH_MAX_LATENESS': True}, 'HEALTH_MAX_LATENESS'),
        ({'HEALTH_MAX_LATENESS': 10**9}, 'HEALTH_MAX_LATENESS'),
        ({'HEALTH_TOKEN': ''}, 'HEALTH_TOKEN'),
        ({'HEALTH_TOKEN': 'short-secret'}, 'HEALTH_TOKEN'),
        ({'HEALTH_TOKEN': 'x' * 1025}, 'HEALTH_TOKEN'),
        ({'HEALTH_TOKEN': 'a secret with spaces in it, long enough'}, 'HEALTH_TOKEN'),
        ({'HEALTH_TOKEN': 'é' * 40}, 'HEALTH_TOKEN'),
        ({'HEALTH_TOKEN': 12345678901234567890123456789012345}, 'HEALTH_TOKEN'),
    ],
)
def test_bad_health_settings_are_reported_by_checks_without_the_token(config, fragment):
    with override_settings(RQ_SCHEDULED=config):
        messages = [m for m in run_checks() if m.id.startswith('django_rq_scheduled.')]
    assert [m.id for m in messages] == ['django_rq_scheduled.E002']
    assert fragment in messages[0].msg
    token = config.get('HEALTH_TOKEN')
    assert not (isinstance(token, str) and token and token in messages[0].msg)


def test_a_malformed_max_lateness_setting_falls_back_to_its_default(connection):
    with override_settings(RQ_SCHEDULED={'HEALTH_MAX_LATENESS': 'soon'}):
        assert check().max_lateness == 60


def test_good_health_settings_pass_the_checks():
    config = {'HEALTH_MAX_LATENESS': 300, 'HEALTH_TOKEN': 'k' * 43}
    with override_settings(RQ_SCHEDULED=config):
        assert [m.id for m in run_checks() if m.id.startswith('django_rq_scheduled.')] == []


def test_redis_refusing_the_whole_read_is_unreachable(connection, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise redis.AuthenticationError('invalid password for redis://:pw@host')

    monkeypatch.setattr(redis.client.Pipeline, 'execute', refuse)
    status, output = health()
    assert status == 1 and 'Redis unreachable (AuthenticationError)' in output and 'pw@' not in output


def test_a_time_command_renamed_away_falls_back_to_this_hosts_clock():
    from django_rq_scheduled.core.health import leadership_from

    beat = time.time() - 1
    replies = [
        keys.lease_token('lead', 'n').encode(),
        [(b'lead', beat)],
        [],
        0,
        None,
        {},
        redis.ResponseError('unknown command'),
    ]
    health, now, earliest = leadership_from(replies)
    assert health.problems == {} and health.leader == 'lead' and 0.5 < health.heartbeat_age < 5
    assert earliest is None and abs(now - time.time()) < 1
