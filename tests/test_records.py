"""Reading run records (``django_rq_scheduled.records``): the fast JSON path gives what ``json.loads`` gives, and
refuses what it refuses."""

from __future__ import annotations

import json

import pytest

from django_rq_scheduled import records

GOOD = [
    {'job': 'drqs-repeatablejob-1_at_1712345678901', 'status': 'finished', 'started': 1.5, 'ended': 2, 'x': None},
    {'error': 'ValueError: ünïcødé \u2028 "quoted" \\ back\nTraceback', 'worker': 'w' * 300},
    [1, 2.5, True, False, None, 'x'],
    'text',
    12,
    {'nested': {'deeper': [{'a': 1e308}, -0.0, 10**30]}},
]


@pytest.mark.parametrize('value', GOOD)
@pytest.mark.parametrize('ensure_ascii', [True, False])
def test_a_record_reads_as_json_loads_reads_it(value, ensure_ascii):
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    for raw in (text, text.encode()):
        assert records.loads(raw) == json.loads(raw)


@pytest.mark.parametrize(
    'raw',
    [
        b' {"a": 1}',  # margins: json.loads takes them
        b'{"a": 1}\n',
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
        '{"a": "é"}'.encode('utf-16'),
        '{"a": 1}'.encode('utf-16-le'),
        '{"a": 1}'.encode('utf-32'),
        bytearray(b'{"a": 1}'),
    ],
)
def test_records_off_the_fast_path_read_as_json_loads_reads_them(raw):
    assert records.loads(raw) == json.loads(raw) == {'a': 'é'} or records.loads(raw) == json.loads(raw) == {'a': 1}


@pytest.mark.parametrize(
    'raw', [b'', b'{', b'{"a": 1} x', b'{"a": 1}{"b": 2}', b'\xff\xfe\x00', b'nul', b'{"a": NaN', 'x', None, 12]
)
def test_what_json_loads_refuses_is_refused_the_same_way(raw):
    with pytest.raises(Exception) as expected:
        json.loads(raw)
    with pytest.raises(type(expected.value)):
        records.loads(raw)


PRIMARY_KEYS = [
    '1', '007', '42', '9' * 18, '9' * 19, '9223372036854775807', '9223372036854775808', '0', '-1', '+1', ' 1', '1 ',
    '1.0', '', '²', '١٢', '1e3', '0x10', 'abc', '1_000',
]  # fmt: skip


@pytest.mark.parametrize('raw', PRIMARY_KEYS)
def test_a_primary_key_read_the_short_way_is_what_the_fields_checks_give(raw):
    """``row_pk`` takes plain digits as they are; anything else goes through the field's checks, as everything did:
    the same key, or the same refusal."""
    from django.core.exceptions import ValidationError

    from django_rq_scheduled.models import ScheduledJob

    field = ScheduledJob._meta.pk
    try:
        expected = field.to_python(raw)
        field.run_validators(expected)
    except ValidationError:
        with pytest.raises(ValidationError):
            records.row_pk(ScheduledJob, raw)
    else:
        assert records.row_pk(ScheduledJob, raw) == expected
        assert type(records.row_pk(ScheduledJob, raw)) is type(expected)
