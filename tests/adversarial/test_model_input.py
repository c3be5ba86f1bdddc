"""Hostile input at every entry point of the models: a ValidationError on the field at fault, never a crash, and
nothing written to the database or Redis.

Each case names a model, a field and a value; every entry point (``objects.create``, ``full_clean``, ``save``,
``bulk_create``, ``update``, ``loaddata``, and the admin's add and change forms) must refuse it. Add a case here for
every kind of input found to crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.serializers.base import DeserializationError
from django.db.models import QuerySet
from django.urls import reverse

from django_rq_scheduled import conf
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduleBase, ScheduledJob
from django_rq_scheduled.sync import reconcile
from tests.admin_forms import POLICY_DEFAULTS

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
FUTURE = datetime(2031, 1, 1, tzinfo=UTC)
TEN_MB = 10_000_000
BASE: dict[type[ScheduleBase], dict[str, Any]] = {
    ScheduledJob: {'name': 'hostile', 'callable': 'tests.tasks.add', 'scheduled_time': FUTURE},
    RepeatableJob: {
        'name': 'hostile', 'callable': 'tests.tasks.add', 'scheduled_time': FUTURE, 'interval': 5,
        'interval_unit': 'minutes',
    },
    CronJob: {'name': 'hostile', 'callable': 'tests.tasks.add', 'cron_string': '*/5 * * * *', 'timezone': 'UTC'},
}  # fmt: skip


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep (``[]`` is one level), built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@dataclass(frozen=True)
class Case:
    id: str
    model: type[ScheduleBase]
    field: str
    value: Any
    extra: dict[str, Any] = field(default_factory=dict)  # other fields the case needs, e.g. a unit
    in_fixture: bool = True  # False: Django's fixture parser itself refuses the file (see the loaddata test)

    def values(self) -> dict[str, Any]:
        return {**BASE[self.model], **self.extra, self.field: self.value}

    def changes(self) -> dict[str, Any]:
        return {**self.extra, self.field: self.value}


def text_cases() -> list[Case]:
    """NUL, a lone surrogate and 10 MB in every text field; control characters in the name."""
    valid = {'name': 'job', 'callable': 'tests.tasks.add', 'queue': 'default', 'description': 'about'}
    cron_valid = {'cron_string': '*/5 * * * *', 'timezone': 'UTC'}
    cases = []
    for name, text in {**valid, **cron_valid}.items():
        cases += [
            Case(f'{name}-nul', CronJob, name, text + '\x00'),
            Case(f'{name}-surrogate', CronJob, name, text + '\ud800'),
            Case(f'{name}-10mb', CronJob, name, 'x' * TEN_MB),
        ]
    return [
        *cases,
        Case('interval_unit-nul', RepeatableJob, 'interval_unit', 'days\x00'),
        Case('interval_unit-surrogate', RepeatableJob, 'interval_unit', '\udfffdays'),
        Case('cron_string-10000-fields', CronJob, 'cron_string', ' '.join(['*'] * 10_000)),
        Case('name-newline', CronJob, 'name', 'two\nlines'),
        Case('name-bell', CronJob, 'name', 'bell\x07'),
        Case('name-escape', ScheduledJob, 'name', '\x1b[31mred'),
    ]


def json_cases() -> list[Case]:
    return [
        Case('args-nested-10000', CronJob, 'args', nested(10_000), in_fixture=False),
        Case('args-nested-101', CronJob, 'args', nested(101)),
        Case('kwargs-nested-10000', ScheduledJob, 'kwargs', {'deep': nested(10_000)}, in_fixture=False),
        Case('kwargs-objects-nested-101', CronJob, 'kwargs', {'a': json.loads('{"a": ' * 100 + '1' + '}' * 100)}),
        Case('args-cycle', CronJob, 'args', cycle(), in_fixture=False),
        Case('args-nan', CronJob, 'args', [float('nan')]),
        Case('args-infinity', RepeatableJob, 'args', [float('inf')]),
        Case('args-minus-infinity', CronJob, 'args', [1, [float('-inf')]]),
        Case('kwargs-nan', CronJob, 'kwargs', {'a': {'b': [float('nan')]}}),
        Case('args-surrogate', CronJob, 'args', ['\ud800']),
        Case('args-surrogate-key', CronJob, 'args', [{'\udc00': 1}]),
        Case('kwargs-surrogate', ScheduledJob, 'kwargs', {'a': 'x\udfff'}),
        Case('args-nul', CronJob, 'args', ['a\x00b']),
        Case('args-nul-key', CronJob, 'args', [{'a\x00': 1}]),
        Case('kwargs-nul', RepeatableJob, 'kwargs', {'a': ['\x00']}),
        Case('args-huge-integer', CronJob, 'args', [10**5000], in_fixture=False),
    ]


def number_cases() -> list[Case]:
    """Integers beyond what PostgreSQL's integer columns hold, checked the same on every database."""
    return [
        Case('timeout-2**31', CronJob, 'timeout', 2**31),
        Case('ttl-2**63', CronJob, 'ttl', 2**63),
        Case('misfire_grace-10**30', ScheduledJob, 'misfire_grace', 10**30),
        Case('result_ttl-below-int64', CronJob, 'result_ttl', -(2**63) - 1),
        Case('result_ttl-below-int32', CronJob, 'result_ttl', -(2**31) - 1),
        Case('repeat-2**31', CronJob, 'repeat', 2**31),
        Case('interval-2**31', RepeatableJob, 'interval', 2**31),
        Case('interval-10**30', RepeatableJob, 'interval', 10**30),
        Case('interval-over-100-years', RepeatableJob, 'interval', 5300, {'interval_unit': 'weeks'}),
        Case('interval-19000-years', RepeatableJob, 'interval', 10**6, {'interval_unit': 'weeks'}),
        Case('interval-days-over-100-years', RepeatableJob, 'interval', conf.MAX_INTERVAL_SECONDS // 86_400 + 1,
             {'interval_unit': 'days'}),
    ]  # fmt: skip


def choice_and_time_cases() -> list[Case]:
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    return [
        Case('interval_unit-years', RepeatableJob, 'interval_unit', 'years'),
        Case('overlap-never', CronJob, 'overlap', 'never'),
        Case('scheduled_time-9999', ScheduledJob, 'scheduled_time', datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        Case('scheduled_time-year-1', ScheduledJob, 'scheduled_time', datetime(1, 1, 1, tzinfo=UTC)),
        Case('scheduled_time-1969', ScheduledJob, 'scheduled_time', datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
        Case('scheduled_time-9001', ScheduledJob, 'scheduled_time', datetime(9001, 1, 1, tzinfo=UTC)),
        Case('scheduled_time-before-year-1-in-utc', ScheduledJob, 'scheduled_time', datetime(1, 1, 1, tzinfo=east)),
        Case('scheduled_time-after-9999-in-utc', ScheduledJob, 'scheduled_time', datetime.max.replace(tzinfo=west)),
        Case('repeatable-9999', RepeatableJob, 'scheduled_time', datetime(9999, 12, 31, tzinfo=UTC)),
        Case('repeatable-year-1', RepeatableJob, 'scheduled_time', datetime(1, 1, 1, tzinfo=UTC),
             {'interval': 5000, 'interval_unit': 'weeks'}),
    ]  # fmt: skip


CASES = text_cases() + json_cases() + number_cases() + choice_and_time_cases()
FIXTURE_CASES = [case for case in CASES if case.in_fixture]
IDS = [case.id for case in CASES]


def redis_state(connection: Any) -> dict[bytes, bytes]:
    return {key: connection.dump(key) for key in sorted(connection.keys('*'))}


def as_json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def refused_fields(action: Any) -> set[str]:
    with pytest.raises(ValidationError) as excinfo:
        action()
    return set(excinfo.value.message_dict)


# -- the ORM ----------------------------------------------------------------------------------------------------

ENTRY_POINTS = {
    'create': lambda model, values: model.objects.create(**values),
    'full_clean': lambda model, values: model(**values).full_clean(),
    'save': lambda model, values: model(**values).save(),
    'bulk_create': lambda model, values: model.objects.bulk_create([model(**values)]),
}


@pytest.mark.parametrize('entry', ENTRY_POINTS)
@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_orm_refuses_on_the_field(connection, case, entry):
    assert refused_fields(lambda: ENTRY_POINTS[entry](case.model, case.values())) == {case.field}
    assert case.model.objects.count() == 0
    assert connection.dbsize() == 0


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_update_refuses_on_the_field_and_changes_nothing(connection, case):
    row = case.model.objects.create(**BASE[case.model])
    before = redis_state(connection)
    assert refused_fields(lambda: case.model.objects.filter(pk=row.pk).update(**case.changes())) == {case.field}
    stored = case.model.objects.get()
    assert all(getattr(stored, name) == getattr(row, name) for name in BASE[case.model])
    assert redis_state(connection) == before


@pytest.mark.parametrize('case', FIXTURE_CASES, ids=[case.id for case in FIXTURE_CASES])
def test_loaddata_refuses_on_the_field(connection, tmp_path, case):
    fields = {name: as_json(value) for name, value in case.values().items()}
    fixture = tmp_path / 'hostile.json'
    fixture.write_text(json.dumps([{'model': case.model._meta.label_lower, 'fields': fields}]))
    assert refused_fields(lambda: call_command('loaddata', str(fixture), verbosity=0)) == {case.field}
    assert case.model.objects.count() == 0
    assert connection.dbsize() == 0


@pytest.mark.parametrize(
    'args_text', ['[' * 10_000 + ']' * 10_000, '[' + '9' * 5000 + ']'], ids=['nested-10000', 'integer-5000-digits']
)
def test_loaddata_of_json_python_cannot_read_fails_whole(connection, tmp_path, args_text):
    fields = json.dumps({**BASE[CronJob], 'args': 'ARGS'}).replace('"ARGS"', args_text)
    fixture = tmp_path / 'unreadable.json'
    fixture.write_text(f'[{{"model": "django_rq_scheduled.cronjob", "fields": {fields}}}]')
    with pytest.raises(DeserializationError):
        call_command('loaddata', str(fixture), verbosity=0)
    assert CronJob.objects.count() == 0
    assert connection.dbsize() == 0


def test_json_at_the_nesting_limit_is_accepted(connection):
    row = CronJob.objects.create(**{**BASE[CronJob], 'args': nested(conf.MAX_JSON_DEPTH)})
    assert CronJob.objects.get(pk=row.pk).args == nested(conf.MAX_JSON_DEPTH)
    assert connection.dbsize() > 0


# -- the admin --------------------------------------------------------------------------------------------------

FORM_DATA: dict[type[ScheduleBase], dict[str, str]] = {
    CronJob: {
        'name': 'typed', 'callable': 'tests.tasks.add', 'args': '[]', 'kwargs': '{}', 'queue': 'default',
        'enabled': 'on', 'cron_string': '*/5 * * * *', 'timezone': 'UTC', 'overlap': 'allow', **POLICY_DEFAULTS,
    },
    RepeatableJob: {
        'name': 'typed', 'callable': 'tests.tasks.add', 'args': '[]', 'kwargs': '{}', 'queue': 'default',
        'enabled': 'on', 'scheduled_time_0': '2031-01-01', 'scheduled_time_1': '00:00:00', 'interval': '5',
        'interval_unit': 'minutes', 'overlap': 'allow', **POLICY_DEFAULTS,
    },
}  # fmt: skip
ADMIN_CASES = [
    ('args-nested-10000', CronJob, 'args', '[' * 10_000 + ']' * 10_000),
    ('args-nested-150', CronJob, 'args', '[' * 150 + ']' * 150),
    ('kwargs-nested-10000', CronJob, 'kwargs', '{"a": ' * 10_000 + '1' + '}' * 10_000),
    ('args-NaN', CronJob, 'args', '[NaN]'),
    ('args-Infinity', CronJob, 'args', '[1, Infinity]'),
    ('args-minus-Infinity', RepeatableJob, 'args', '[-Infinity]'),
    ('args-1e400', CronJob, 'args', '[1e400]'),
    ('args-bare-NaN', CronJob, 'args', 'NaN'),
    ('kwargs-NaN', CronJob, 'kwargs', '{"a": NaN}'),
    ('kwargs-1e400', RepeatableJob, 'kwargs', '{"a": [-1e400]}'),
    ('args-surrogate', CronJob, 'args', '["\\ud800"]'),
    ('args-surrogate-key', CronJob, 'args', '[{"\\udfff": 1}]'),
    ('kwargs-surrogate', CronJob, 'kwargs', '{"a": "\\udc00x"}'),
    ('args-nul', CronJob, 'args', '["a\\u0000"]'),
    ('kwargs-nul', CronJob, 'kwargs', '{"a": {"\\u0000": 1}}'),
    ('args-integer-5000-digits', CronJob, 'args', '[' + '9' * 5000 + ']'),
    ('name-nul', CronJob, 'name', 'a\x00b'),
    ('name-control', CronJob, 'name', 'bell\x07'),
    ('description-nul', CronJob, 'description', 'a\x00b'),
    ('cron_string-10000-fields', CronJob, 'cron_string', ' '.join(['*'] * 10_000)),
    ('timezone-nul', CronJob, 'timezone', 'UTC\x00'),
    ('scheduled_time-9999', RepeatableJob, 'scheduled_time', '9999-12-31'),
    ('scheduled_time-year-1', RepeatableJob, 'scheduled_time', '0001-01-01'),
    ('interval-2**31', RepeatableJob, 'interval', str(2**31)),
    ('interval-over-100-years', RepeatableJob, 'interval', '99999'),
    ('timeout-2**63', CronJob, 'timeout', str(2**63)),
]


def form_data(model: type[ScheduleBase], name: str, text: str) -> dict[str, str]:
    key = 'scheduled_time_0' if name == 'scheduled_time' else name
    data = {**FORM_DATA[model], key: text}
    if name == 'interval' and text == '99999':
        data['interval_unit'] = 'weeks'
    return data


@pytest.fixture
def superuser_client(client, redis_url):
    # No password: hashing one costs a quarter of a second per test.
    client.force_login(User.objects.create(username='admin', is_staff=True, is_superuser=True))
    return client


def admin_url(model: type[ScheduleBase], view: str, *args: Any) -> str:
    return reverse(f'admin:django_rq_scheduled_{model._meta.model_name}_{view}', args=args)


@pytest.mark.parametrize('model, name, text', [case[1:] for case in ADMIN_CASES], ids=[case[0] for case in ADMIN_CASES])
def test_admin_add_form_shows_the_error_on_the_field(superuser_client, connection, model, name, text):
    response = superuser_client.post(admin_url(model, 'add'), form_data(model, name, text))
    assert response.status_code == 200
    assert set(response.context['adminform'].form.errors) == {name}
    assert model.objects.count() == 0
    assert connection.dbsize() == 0


@pytest.mark.parametrize('model, name, text', [case[1:] for case in ADMIN_CASES], ids=[case[0] for case in ADMIN_CASES])
def test_admin_change_form_shows_the_error_on_the_field(superuser_client, connection, model, name, text):
    superuser_client.post(admin_url(model, 'add'), FORM_DATA[model])
    row = model.objects.get()
    before = redis_state(connection)
    response = superuser_client.post(admin_url(model, 'change', row.pk), form_data(model, name, text))
    assert response.status_code == 200
    assert set(response.context['adminform'].form.errors) == {name}
    assert model.objects.get().name == 'typed'
    assert redis_state(connection) == before


# -- rows at the time limits ------------------------------------------------------------------------------------

LATEST = conf.LATEST_SCHEDULE_TIME


def test_repeatable_row_at_the_limits_is_accepted_and_its_pages_answer(superuser_client, connection):
    start = LATEST - timedelta(days=1)
    row = RepeatableJob.objects.create(
        **{**BASE[RepeatableJob], 'scheduled_time': start, 'interval': 1, 'interval_unit': 'days'}
    )
    assert row.next_runs(5) == [start, LATEST]  # the third run would be past the limit
    assert superuser_client.get(admin_url(RepeatableJob, 'change', row.pk)).status_code == 200
    days = conf.MAX_INTERVAL_SECONDS // 86_400
    longest = RepeatableJob.objects.create(
        **{**BASE[RepeatableJob], 'name': 'longest', 'interval': days, 'interval_unit': 'days'}
    )
    assert longest.next_runs(5)[0] == FUTURE
    assert superuser_client.get(admin_url(RepeatableJob, 'change', longest.pk)).status_code == 200


def unchecked(model: type[ScheduleBase], **values: Any) -> ScheduleBase:
    """A row written around the models' validation (raw SQL does the same), e.g. by an older version."""
    [row] = QuerySet(model).bulk_create([model(**{**BASE[model], **values})])
    return model.objects.get(name=row.name)


@pytest.mark.parametrize(
    'values',
    [
        {'scheduled_time': datetime(9999, 12, 31, tzinfo=UTC), 'interval': 2**31 - 1, 'interval_unit': 'weeks'},
        {'scheduled_time': datetime(1, 1, 1, tzinfo=UTC), 'interval': 2**31 - 1, 'interval_unit': 'weeks'},
        {'scheduled_time': datetime(1, 1, 1, tzinfo=UTC), 'interval': 1, 'interval_unit': 'seconds'},
        {'scheduled_time': LATEST - timedelta(seconds=1), 'interval': 2**31 - 1, 'interval_unit': 'weeks'},
    ],
    ids=['9999-longest', 'year-1-longest', 'year-1-every-second', 'latest-longest'],
)
def test_repeatable_rows_beyond_the_limits_never_overflow(superuser_client, connection, values):
    row = unchecked(RepeatableJob, **values)
    now = datetime.now(UTC)
    runs = row.next_runs(5)
    assert all(now < run <= LATEST for run in runs)
    due = row.first_due(now, begun=True)
    assert due is None or now < due <= LATEST
    first = row.first_due(now)  # not begun: a first run in the past is due at once
    assert first is None or first <= LATEST
    reconcile()
    assert superuser_client.get(admin_url(RepeatableJob, 'change', row.pk)).status_code == 200
    assert superuser_client.get(admin_url(RepeatableJob, 'changelist')).status_code == 200


def test_cron_next_runs_stop_at_the_latest_schedule_time():
    row = CronJob(**{**BASE[CronJob], 'cron_string': '0 0 1 1 *'})
    before_the_end = datetime(LATEST.year - 1, 6, 1, tzinfo=UTC)
    assert row.next_runs(5, after=before_the_end) == [datetime(LATEST.year, 1, 1, tzinfo=UTC)]
    assert row.next_runs(5, after=datetime(9999, 12, 31, 12, tzinfo=UTC)) == []
    assert row.next_runs(5, after=datetime.max.replace(tzinfo=UTC)) == []


def test_one_off_rows_beyond_the_limits_show_their_pages(superuser_client, connection):
    row = unchecked(ScheduledJob, scheduled_time=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert row.first_due(datetime.now(UTC)) is None
    reconcile()
    assert superuser_client.get(admin_url(ScheduledJob, 'change', row.pk)).status_code == 200
    assert superuser_client.get(admin_url(ScheduledJob, 'changelist')).status_code == 200


# -- hostile requests to the admin's own views ------------------------------------------------------------------


@pytest.mark.parametrize('query', ['q=%00', 'q=%ED%A0%80', 'queue=%00', 'status=%00', 'o=%00'])
def test_change_list_filters_and_search_with_hostile_text(superuser_client, connection, query):
    CronJob.objects.create(**BASE[CronJob])
    response = superuser_client.get(admin_url(CronJob, 'changelist') + '?' + query)
    assert response.status_code in (200, 302)


@pytest.mark.parametrize('object_id', ['abc', '99999999999999999999999', '%00', '-1'])
def test_change_and_cancel_screens_with_hostile_ids(superuser_client, connection, object_id):
    for view in ('change', 'cancel'):
        response = superuser_client.get(admin_url(CronJob, view, object_id))
        assert response.status_code in (302, 404), (view, response.status_code)


@pytest.mark.parametrize('action', ['retry', 'cancel', 'discard', '\x00'])
@pytest.mark.parametrize('job_id', ['\x00', 'a' * 100_000, '../../x', ''], ids=['nul', '100k', 'path', 'empty'])
def test_status_page_buttons_with_hostile_job_ids(superuser_client, connection, action, job_id):
    url = reverse('admin:django_rq_scheduled_schedulerstatus_changelist')
    server = superuser_client.get(url).context['servers'][0]['name']
    response = superuser_client.post(url, {'server': server, 'job_id': job_id, 'action': action}, follow=True)
    assert response.status_code == 200
