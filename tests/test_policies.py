"""The scheduling policies' fields: what they refuse (naming the field, writing nothing), what the loop is told
(our part of the template's meta), and how they travel through export, import and declarations in code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError

from django_rq_scheduled.core import keys
from django_rq_scheduled.core.compact import fetch_template
from django_rq_scheduled.declared import DeclarationError, declaration
from django_rq_scheduled.definitions import definition_of
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

UTC = timezone.utc
SOON = datetime(2031, 1, 1, tzinfo=UTC)


HOURLY = {
    'name': 'hourly',
    'callable': 'tests.tasks.add',
    'scheduled_time': SOON,
    'interval': 1,
    'interval_unit': 'hours',
}


def every_hour(**values):
    return RepeatableJob(**HOURLY, **values)


@pytest.mark.parametrize(
    'values, field, words',
    [
        ({'retry_delays': [10, -1]}, 'retry_delays', 'from 0 to'),
        ({'retry_delays': {'a': 1}}, 'retry_delays', 'list of seconds'),
        ({'retry_delays': {}}, 'retry_delays', 'list of seconds'),
        ({'retry_delays': ()}, 'retry_delays', 'list of seconds'),
        ({'retry_delays': [1] * 101}, 'retry_delays', 'at most 100'),
        ({'retry_delays': [1.5]}, 'retry_delays', 'whole number'),
        ({'retries': 101}, 'retries', '100'),
        ({'jitter': 86_401}, 'jitter', '86400'),
        ({'catchup': 'every'}, 'catchup', 'not a valid choice'),
        ({'catchup_limit': 0}, 'catchup_limit', '1'),
        ({'catchup_limit': 10_001}, 'catchup_limit', '10000'),
        ({'valid_from': SOON, 'valid_until': SOON}, 'valid_until', 'after'),
        ({'valid_from': SOON, 'valid_until': SOON - timedelta(days=1)}, 'valid_until', 'after'),
        ({'overlap': 'queue'}, 'overlap', 'not a valid choice'),
        ({'valid_from': datetime(2031, 1, 1)}, 'valid_from', 'time zone'),
        ({'valid_until': datetime(2031, 1, 1)}, 'valid_until', 'time zone'),
    ],
)
def test_a_bad_policy_is_refused_on_its_field_and_nothing_is_written(connection, values, field, words):
    with pytest.raises(ValidationError) as caught:
        RepeatableJob.objects.create(**HOURLY, **values)
    assert set(caught.value.message_dict) == {field}
    assert words in ' '.join(caught.value.message_dict[field]).replace(',', '')
    assert RepeatableJob.objects.count() == 0 and connection.dbsize() == 0


def test_the_template_tells_the_loop_each_policy_set(connection):
    row = every_hour(
        retries=3, retry_delays=[10, 60], jitter=30, valid_from=SOON, valid_until=SOON + timedelta(days=1),
        catchup='all', catchup_limit=5, overlap='buffer_one',
    )  # fmt: skip
    row.save()
    ours = fetch_template(connection, row.template_id).meta[keys.META_KEY]
    assert ours['retries'] == 3 and ours['retry_delays'] == [10, 60] and ours['jitter'] == 30
    assert ours['valid_from'] == SOON.timestamp() and ours['valid_until'] == SOON.timestamp() + 86_400
    assert (ours['catchup'], ours['catchup_limit'], ours['overlap']) == ('all', 5, 'buffer_one')


def test_a_template_without_policies_holds_none_of_their_keys(connection):
    row = every_hour()
    row.save()
    ours = fetch_template(connection, row.template_id).meta[keys.META_KEY]
    assert not {'retries', 'retry_delays', 'jitter', 'valid_from', 'valid_until', 'catchup'} & set(ours)


def test_changing_a_policy_changes_the_version_so_redis_is_rewritten(connection):
    row = every_hour()
    row.save()
    before = row.version()
    row.jitter = 5
    assert row.version() != before


def test_a_one_off_has_retries_but_no_periodic_policies():
    fields = {field.name for field in ScheduledJob._meta.concrete_fields}
    assert {'retries', 'retry_delays'} <= fields
    assert not {'jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit'} & fields
    assert {'jitter', 'valid_from', 'valid_until', 'catchup', 'catchup_limit'} <= {
        field.name for field in CronJob._meta.concrete_fields
    }


def test_policies_travel_through_export_and_declarations():
    row = CronJob(
        name='nightly', callable='tests.tasks.add', cron_string='0 3 * * *', timezone='UTC', retries=2,
        retry_delays=[30], jitter=60, valid_until=SOON, catchup='none',
    )  # fmt: skip
    exported = definition_of(row)
    assert exported['valid_until'] == SOON.isoformat() and exported['retries'] == 2
    declared = declaration(exported.pop('name'), exported)
    assert declared.fields['valid_until'] == SOON and declared.fields['retry_delays'] == [30]
    assert declared.fields['catchup'] == 'none' and declared.fields['jitter'] == 60


def test_a_declaration_with_a_periodic_policy_on_a_one_off_is_refused():
    with pytest.raises(DeclarationError, match='unknown option'):
        declaration('once', {'callable': 'tests.tasks.add', 'at': SOON, 'jitter': 5})
    with pytest.raises(DeclarationError, match='valid_until'):
        declaration('bad', {'callable': 'tests.tasks.add', 'cron': '* * * * *', 'valid_until': 'soon'})
