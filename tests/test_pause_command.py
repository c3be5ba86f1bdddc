"""``manage.py schedules pause | resume``: output, exit codes, what Redis holds afterwards, and Redis down."""

from __future__ import annotations

import json

import pytest

from django_rq_scheduled.core import keys, limits
from tests.redis_server import free_port
from tests.test_schedules_command import schedules

pytestmark = [pytest.mark.django_db(transaction=True)]


def paused(connection) -> dict[str, dict]:
    return {scope.decode(): json.loads(raw) for scope, raw in connection.hgetall(keys.PAUSED_KEY).items()}


def test_pause_everything_then_again_keeps_who_and_when_and_takes_the_new_reason(connection):
    status, out, err = schedules('pause', '--reason', 'deploy')
    assert (status, err) == (0, '')
    assert 'Redis of queues default, high: every queue paused.' in out
    assert 'every queue is paused, by ' in out and ': deploy.' in out
    first = paused(connection)[keys.PAUSE_ALL]
    assert first['reason'] == 'deploy' and '(manage.py schedules)' in first['by']

    status, out, _ = schedules('pause', '--reason', 'migration')
    assert status == 0 and 'every queue was paused already' in out
    assert paused(connection)[keys.PAUSE_ALL] == {**first, 'reason': 'migration'}


def test_pause_and_resume_one_queue(connection):
    status, out, _ = schedules('pause', '--queue', 'high', '--queue', 'high')
    assert status == 0 and out.strip() == 'Redis of queues default, high: queue high paused.'
    assert list(paused(connection)) == ['high']
    status, out, _ = schedules('resume', '--queue', 'high')
    assert status == 0 and out.strip() == 'Redis of queues default, high: queue high resumed.'
    assert not connection.exists(keys.PAUSED_KEY)
    assert connection.lrange(keys.WAKEUP_KEY, 0, -1) == [b'1']  # the leader is woken


def test_resuming_a_queue_while_everything_is_paused_says_everything_stays_paused(connection):
    schedules('pause', '--reason', 'deploy')
    status, out, _ = schedules('resume', '--queue', 'default')
    assert status == 0
    assert 'queue default was not paused on its own.' in out and 'every queue is paused, by ' in out
    assert list(paused(connection)) == [keys.PAUSE_ALL]
    schedules('pause', '--queue', 'high')
    status, out, _ = schedules('resume')
    assert status == 0 and 'every queue resumed.' in out and 'queue high resumed.' in out
    assert not connection.exists(keys.PAUSED_KEY)


def test_an_unknown_queue_or_a_reason_too_long_exits_1_and_pauses_nothing(connection):
    status, out, err = schedules('pause', '--queue', 'high', '--queue', 'nope')
    assert (status, out) == (1, '') and "unknown queue(s) 'nope'" in err and 'Nothing was paused.' in err
    status, _, err = schedules('pause', '--reason', 'x' * (limits.MAX_PAUSE_REASON + 1))
    assert status == 1 and err.startswith('reason: expected at most')
    status, _, err = schedules('resume', '--queue', 'nope')
    assert status == 1 and 'Nothing was resumed.' in err
    assert not connection.exists(keys.PAUSED_KEY)


def test_redis_down_exits_1_with_a_clear_error_that_does_not_show_the_url(settings):
    settings.RQ_QUEUES = {'default': {'URL': f'redis://:hunter2-secret@127.0.0.1:{free_port()}/0'}}
    for subcommand in ('pause', 'resume'):
        status, out, err = schedules(subcommand)
        assert status == 1 and out == ''
        assert err.strip().startswith('Redis of queues default: Redis failed (ConnectionError); nothing')
        assert 'hunter2' not in err


def test_a_pause_key_someone_else_wrote_as_a_string_fails_the_command_clearly(connection):
    connection.set(keys.PAUSED_KEY, 'junk')
    status, _, err = schedules('pause')
    assert status == 1 and 'WRONGTYPE' in err
    assert connection.get(keys.PAUSED_KEY) == b'junk'
