"""Fuzzed rows of every model, saved through ``objects.create`` on a real Redis, and fuzzed command options.

Each input is either refused with errors on the fields at fault and nothing written to the database or Redis,
or accepted, stored exactly as given, and synced to a template that carries the row's definition.
"""

from __future__ import annotations

import operator
from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.management.commands.rqscheduler import Command
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text no database stores as given: NUL (PostgreSQL), lone surrogates (UTF-8), control characters, long runs.
hostile_text = st.one_of(
    st.text(st.characters(codec=None, categories=['Cs', 'Cc', 'Ll']), min_size=1, max_size=12),
    st.sampled_from(['\x00', 'tests.tasks.add\x00', '\ud800', 'default\udfff', 'x' * 300, 'UTC\n', '* ' * 300]),
)
hostile_numbers = st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**63, 10**30, -(10**30)])


def nested_list(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


json_leaves = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5), hostile_text, st.none()
)
hostile_json = st.one_of(
    st.recursive(
        json_leaves,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
        max_leaves=8,
    ),
    st.integers(min_value=95, max_value=105).map(nested_list),
)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2)),
)
aware_times = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.sampled_from([UTC])
)
# Past the schedule's limits (1970 to 9000) and close to Python's own (years 1 and 9999).
extreme_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from([UTC])
)


def storable_text(max_size):
    """Text without NUL or lone surrogates (UTF-8 has none): hostile_text has them."""
    return st.text(st.characters(codec='utf-8', exclude_characters='\x00'), max_size=max_size)


VALID = {
    'name': st.from_regex(r'[a-z0-9 _-]{1,40}', fullmatch=True),
    'callable': st.sampled_from(['tests.tasks.add', 'tests.tasks.record']),
    'args': st.lists(st.one_of(st.integers(), storable_text(5)), max_size=3),
    'kwargs': st.dictionaries(st.from_regex(r'[a-z_]{1,6}', fullmatch=True), st.integers(), max_size=3),
    'queue': st.sampled_from(['default', 'high']),
    'enabled': st.booleans(),
    'timeout': st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    'result_ttl': st.one_of(st.none(), st.integers(min_value=-1, max_value=10**6)),
    'ttl': st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    'at_front': st.booleans(),
    'description': storable_text(100),
    'misfire_grace': st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
    'overlap': st.sampled_from(['allow', 'skip']),
    'scheduled_time': aware_times,
    'interval': st.integers(min_value=1, max_value=5000),  # 5000 weeks: within the longest interval
    'interval_unit': st.sampled_from(['seconds', 'minutes', 'hours', 'days', 'weeks']),
    'repeat': st.one_of(st.none(), st.integers(min_value=1, max_value=100)),
    'cron_string': st.sampled_from(['* * * * *', '0 3 * * *', '*/5 * * * *', '30 2 * * 1-5', '0 0 1 1 *']),
    'timezone': st.sampled_from(['UTC', 'Europe/Paris', 'America/New_York', 'Australia/Sydney']),
    'retries': st.integers(min_value=0, max_value=100),
    'retry_delays': st.lists(st.integers(min_value=0, max_value=86_400), max_size=5),
    'jitter': st.integers(min_value=0, max_value=86_400),
    'valid_from': st.one_of(
        st.none(), st.datetimes(datetime(2001, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC))
    ),
    'valid_until': st.one_of(
        st.none(), st.datetimes(datetime(2050, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC))
    ),
    'catchup': st.sampled_from(['latest', 'none', 'all']),
    'catchup_limit': st.integers(min_value=1, max_value=10_000),
}
cron_fields = st.sampled_from(['*', '*/5', '0', '1-5', '7', '59', '61', '*/0', 'a', '?', '1,2', '-1'])
EDGES = {
    'name': st.one_of(st.text(max_size=140), st.just('')),
    'callable': st.one_of(st.sampled_from(['tests.tasks.nope', 'os.getcwd', '', 'tests']), st.text(max_size=15)),
    'args': st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    'kwargs': st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), st.integers())),
    'queue': st.sampled_from(['nope', '', 'DEFAULT']),
    'interval_unit': st.one_of(st.sampled_from(['years', 'second', '']), st.text(max_size=5)),
    'cron_string': st.lists(cron_fields, min_size=0, max_size=7).map(' '.join),
    'timezone': st.one_of(st.sampled_from(['Mars/Base', '', '../etc', 'utc']), st.text(max_size=8)),
    'scheduled_time': st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)),  # naive
    'interval': st.integers(min_value=5000, max_value=10**6),  # over 100 years in weeks
    'retries': st.integers(min_value=101, max_value=10**6),
    'retry_delays': st.one_of(
        st.lists(st.integers(min_value=-(10**6), max_value=10**6), min_size=1, max_size=3),
        st.lists(st.just(1), min_size=101, max_size=102),
        st.lists(st.floats(), min_size=1, max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    ),
    'jitter': st.integers(min_value=86_401, max_value=10**9),
    'valid_from': st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)),  # naive
    'valid_until': st.datetimes(datetime(2001, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC)),  # maybe early
    'catchup': st.sampled_from(['LATEST', 'every', '']),
    'catchup_limit': st.integers(min_value=-5, max_value=10**6),
}
TEXT_FIELDS = (
    'name', 'callable', 'queue', 'description', 'overlap', 'interval_unit', 'cron_string', 'timezone', 'catchup',
)  # fmt: skip
NUMBER_FIELDS = (
    'timeout',
    'result_ttl',
    'ttl',
    'misfire_grace',
    'interval',
    'repeat',
    'retries',
    'jitter',
    'catchup_limit',
)
WINDOW = frozenset({'valid_from', 'valid_until'})
"""A window is refused as a whole (its end before its start): either end being wild may blame the other."""
# What the database or Python's datetimes cannot hold, by the kind of field.
HOSTILE = {
    **dict.fromkeys(TEXT_FIELDS, hostile_text),
    **dict.fromkeys(NUMBER_FIELDS, hostile_numbers),
    'args': hostile_json.map(lambda value: [value]),
    'kwargs': hostile_json.map(lambda value: {'a': value}),
    'scheduled_time': extreme_times,
    'valid_from': extreme_times,
    'valid_until': extreme_times,
    'retry_delays': hostile_json.map(lambda value: [value]),
}
REQUIRED = {
    ScheduledJob: ('name', 'callable', 'scheduled_time'),
    RepeatableJob: ('name', 'callable', 'scheduled_time', 'interval'),
    CronJob: ('name', 'callable', 'cron_string'),
}
COMMON = (
    'args', 'kwargs', 'queue', 'enabled', 'timeout', 'result_ttl', 'ttl', 'at_front', 'description',
    'misfire_grace', 'overlap', 'retries', 'retry_delays',
)  # fmt: skip
PERIODIC = ('jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit')
OPTIONAL = {
    ScheduledJob: COMMON,
    RepeatableJob: (*COMMON, *PERIODIC, 'interval_unit', 'repeat'),
    CronJob: (*COMMON, *PERIODIC, 'timezone', 'repeat'),
}


def wild(name):
    """Any value for the field: a valid one, an edge of its own, junk of any type, or what no database holds."""
    return st.one_of(VALID[name], EDGES.get(name, junk), junk, HOSTILE.get(name, junk))


def hostile(name):
    return HOSTILE[name]


def rows(model, replace=wild, at_least=0):
    """A valid row with up to two fields replaced by ``replace(field)`` values, and the names of those fields."""
    names = [name for name in (*REQUIRED[model], *OPTIONAL[model]) if replace is wild or name in HOSTILE]
    base = st.fixed_dictionaries(
        {name: VALID[name] for name in REQUIRED[model]}, optional={name: VALID[name] for name in OPTIONAL[model]}
    )
    perturbed = st.lists(st.sampled_from(names), min_size=at_least, max_size=2, unique=True)
    return st.tuples(base, perturbed).flatmap(
        lambda pair: st.fixed_dictionaries({name: replace(name) for name in pair[1]}).map(
            lambda wild_values: ({**pair[0], **wild_values}, set(pair[1]))
        )
    )


def same_json(stored, given):
    """Equal as JSON, where PostgreSQL's jsonb gives a float of 1e16 or more back as an int of the same value."""
    if isinstance(given, float) and type(stored) is int:
        return float(stored) == given
    if isinstance(given, list) and isinstance(stored, list):
        return len(stored) == len(given) and all(map(same_json, stored, given))
    if isinstance(given, dict) and isinstance(stored, dict):
        return stored.keys() == given.keys() and all(same_json(stored[key], given[key]) for key in given)
    return stored == given


def check_row(model, row_and_wild_fields, connection):
    values, wild_fields = row_and_wild_fields
    if wild_fields & WINDOW:
        wild_fields = wild_fields | WINDOW
    model.objects.all().delete()
    connection.flushdb()
    try:
        row = model.objects.create(**values)
    except ValidationError as exc:
        event('refused')
        assert exc.message_dict, exc
        assert set(exc.message_dict) <= wild_fields, (exc.message_dict, values)  # the valid fields are never blamed
        assert model.objects.count() == 0
        assert connection.dbsize() == 0
        return
    event('accepted' if wild_fields else 'accepted (no wild field)')
    stored = model.objects.get(pk=row.pk)
    for name, value in values.items():
        same = same_json if name in ('args', 'kwargs') else operator.eq
        if name in wild_fields:  # a string a form would send may be converted, e.g. '5' for 5
            assert same(getattr(stored, name), getattr(row, name)), (name, value, getattr(stored, name))
            assert type(value) is str or same(getattr(stored, name), value) or name == 'callable', (name, value)
        else:
            assert same(getattr(stored, name), value), (name, value, getattr(stored, name))
    if not stored.enabled or stored.is_finished or stored.first_due(datetime.now(UTC)) is None:
        # e.g. a window of validity already over, or with no slot inside it: nothing to schedule
        assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is None
        return
    job = fetch_template(connection, row.template_id)
    assert job.func_name == stored.callable
    assert job.args == tuple(stored.args) and job.kwargs == stored.kwargs
    assert job.origin == stored.queue
    assert job.description == (stored.description or job.description)
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None


@FUZZ
@given(row=rows(ScheduledJob))
def test_scheduled_job_rows(connection, row):
    check_row(ScheduledJob, row, connection)


@FUZZ
@given(row=rows(RepeatableJob))
def test_repeatable_job_rows(connection, row):
    check_row(RepeatableJob, row, connection)


@FUZZ
@given(row=rows(CronJob))
def test_cron_job_rows(connection, row):
    check_row(CronJob, row, connection)


@pytest.mark.parametrize('model', [ScheduledJob, RepeatableJob, CronJob], ids=lambda model: model.__name__)
@FUZZ
@given(data=st.data())
def test_rows_with_values_no_database_holds(connection, model, data):
    check_row(model, data.draw(rows(model, hostile, at_least=1)), connection)


OPTIONS = ('--interval', '--lease-ttl', '--batch-size', '--queue', '--name')
option_values = st.one_of(
    st.text(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-5, max_value=10**7).map(str),
    st.sampled_from(['default', 'high', '0.0005', '1e-9', '1e400', '0x10', '1_000', 'a|b', 'x' * 300, ' ', 'bell\x07']),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(OPTIONS)), value=option_values)
def test_command_options(settings_for_command, option, value):
    command = Command()
    parser = command.create_parser('manage.py', 'rqscheduler')
    try:
        options = vars(parser.parse_args([option, value]))
        schedulers = command._build_schedulers(options)
    except CommandError as exc:
        event('refused')
        assert option in str(exc), str(exc)
        return
    event('accepted')
    [scheduler] = schedulers
    attribute = {'--interval': 'interval', '--lease-ttl': 'lease_ttl', '--batch-size': 'batch_size'}
    if option == '--queue':
        assert scheduler.queue_name == value
    elif option == '--name':
        assert scheduler.name == value
    elif option == '--batch-size':
        assert scheduler.batch_size == int(value)
    else:
        assert getattr(scheduler, attribute[option]) == round(float(value), 3)  # millisecond precision


@pytest.fixture
def settings_for_command(redis_url):
    return redis_url
