"""``manage.py schedules list | show | run | enable | disable | export | import``: output, exit codes (0, 1 naming the
schedule, 2 for usage), Redis following the changes, the export → import round trip and hostile import files."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from rq import Queue

from django_rq_scheduled import declared
from django_rq_scheduled.code_sync import sync_code_schedules
from django_rq_scheduled.core import keys
from django_rq_scheduled.definitions import MAX_IMPORT_BYTES
from django_rq_scheduled.models import SCHEDULE_MODELS, CronJob, RepeatableJob, Run, ScheduledJob
from tests.processes import ROOT, process_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures('redis_url')]

UTC = timezone.utc
LATER = datetime(2031, 1, 15, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_decorated_schedules():
    declared._decorated.clear()
    yield
    declared._decorated.clear()


def schedules(*arguments: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Runs ``manage.py schedules ...``: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        call_command('schedules', *arguments, stdout=out, stderr=err)
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0)
    finally:
        sys.stdin = saved
    return status, out.getvalue(), err.getvalue()


def make_rows() -> tuple[CronJob, RepeatableJob, ScheduledJob]:
    nightly = CronJob.objects.create(
        name='nightly', callable='tests.tasks.add', args=[1, 2], kwargs={}, cron_string='0 2 * * *',
        timezone='Europe/Paris', queue='high', timeout=30, description='the report', repeat=100,
    )  # fmt: skip
    refresh = RepeatableJob.objects.create(
        name='refresh', callable='tests.tasks.noop', interval=5, interval_unit='minutes', scheduled_time=LATER,
        repeat=3, enabled=False, misfire_grace=None, overlap='skip', at_front=True, ttl=60, result_ttl=-1,
    )  # fmt: skip
    launch = ScheduledJob.objects.create(name='launch', callable='tests.tasks.add', args=[3, 4], scheduled_time=LATER)
    return nightly, refresh, launch


def row_definitions() -> dict[tuple[str, str], dict]:
    """What a row is made of, for every row: its definition, enabled and its source."""
    return {
        (model.__name__, row.name): {**row.definition(), 'enabled': row.enabled, 'source': row.source}
        for model in SCHEDULE_MODELS
        for row in model.objects.all()
    }


def delete_every_row() -> None:
    for model in SCHEDULE_MODELS:
        for row in model.objects.all():
            row.delete()
    Run.objects.all().delete()


# -- list -------------------------------------------------------------------------------------------------------


def test_list_prints_a_table_of_every_schedule_and_json_with_filters():
    nightly, _refresh, _launch = make_rows()
    CronJob.objects.filter(pk=nightly.pk).record_feedback(last_status='failed', consecutive_failures=3)
    status, out, err = schedules('list')
    assert (status, err) == (0, '')
    heading, *lines = out.splitlines()
    assert heading.split() == ['NAME', 'KIND', 'SCHEDULE', 'NEXT', 'RUN', 'LAST', 'OUTCOME', 'ENABLED', 'SOURCE']
    assert [line.split()[:2] for line in lines] == [['launch', 'one-off'], ['nightly', 'cron'], ['refresh', 'interval']]
    for column in ('KIND', 'SCHEDULE', 'NEXT RUN', 'LAST OUTCOME', 'ENABLED', 'SOURCE'):
        start = heading.index(column)
        assert all(line[start - 2 : start] == '  ' and line[start] != ' ' for line in lines), column
    cells = [re.split(r'\s{2,}', line) for line in lines]
    next_run = f'{CronJob.objects.get().next_run:%Y-%m-%d %H:%M:%S} UTC'
    assert cells == [
        ['launch', 'one-off', 'once, at 2031-01-15 09:00:00 UTC', '2031-01-15 09:00:00 UTC', '-', 'yes', 'db'],
        ['nightly', 'cron', 'At 02:00 (Europe/Paris)', next_run, 'failed (3 in a row)', 'yes', 'db'],
        ['refresh', 'interval', 'every 5 minutes, 3 times', '-', '-', 'no', 'db'],
    ]
    assert '\x1b' not in out

    status, out, _err = schedules('list', '--json', '--kind', 'cron')
    [entry] = json.loads(out)
    assert entry == {
        'name': 'nightly', 'kind': 'cron', 'schedule': 'At 02:00 (Europe/Paris)',
        'next_run': CronJob.objects.get().next_run.isoformat(), 'last_status': 'failed', 'consecutive_failures': 3,
        'enabled': True, 'source': 'db',
    }  # fmt: skip
    assert [item['name'] for item in json.loads(schedules('list', '--json', '--failing')[1])] == ['nightly']
    assert json.loads(schedules('list', '--json', '--source', 'code')[1]) == []
    assert schedules('list', '--source', 'code') == (0, 'No schedules.\n', '')


def test_list_costs_the_same_sql_queries_whatever_the_number_of_rows(django_assert_num_queries):
    def add_rows(count: int, start: int) -> None:
        for number in range(start, start + count):
            CronJob.objects.create(name=f'cron {number}', callable='tests.tasks.noop', cron_string='0 * * * *')
            RepeatableJob.objects.create(
                name=f'every {number}', callable='tests.tasks.noop', interval=1, scheduled_time=LATER
            )
            ScheduledJob.objects.create(name=f'once {number}', callable='tests.tasks.noop', scheduled_time=LATER)

    add_rows(1, 0)
    with django_assert_num_queries(3):
        assert schedules('list')[0] == 0
    add_rows(20, 1)
    with django_assert_num_queries(3):
        status, out, _err = schedules('list')
    assert status == 0 and len(out.splitlines()) == 1 + 63


# -- show -------------------------------------------------------------------------------------------------------


def test_show_prints_the_definition_the_next_5_fire_times_and_the_last_10_runs():
    nightly, _refresh, _launch = make_rows()
    kind = ContentType.objects.get_for_model(CronJob)
    for number in range(12):
        fire = datetime(2026, 1, 1, 1, tzinfo=UTC) + timedelta(days=number)
        Run.objects.create(
            schedule_type=kind, schedule_id=nightly.pk, schedule_name='nightly', rq_job_id=f'run-{number}',
            status='failed' if number == 11 else 'finished', fire_time=fire, started_at=fire,
            ended_at=fire + timedelta(seconds=2.5), error='ValueError: boom\nTraceback ...' if number == 11 else '',
        )  # fmt: skip
    status, out, err = schedules('show', 'nightly')
    assert (status, err) == (0, '')
    lines = out.splitlines()
    assert lines[:2] == ['nightly (cron, enabled, source: db)', 'Schedule: At 02:00 (Europe/Paris)']
    assert '  callable: "tests.tasks.add"' in lines and '  cron: "0 2 * * *"' in lines and '  args: [1, 2]' in lines
    next_runs = lines[lines.index('Next runs:') + 1 : lines.index('Next runs:') + 6]
    assert len(next_runs) == 5 and all(line.startswith('  20') for line in next_runs)
    assert next_runs == [f'  {run:%Y-%m-%d %H:%M:%S} UTC' for run in nightly.next_runs(5)]
    runs = lines[lines.index('Last runs, newest first:') + 1 :]
    assert runs[0].split() == ['STATUS', 'FIRE', 'TIME', 'DURATION', 'ERROR']
    assert runs[1].split() == ['failed', '2026-01-12', '01:00:00', 'UTC', '2.5', 's', 'ValueError:', 'boom']
    assert len(runs) == 11 and runs[-1].split()[:2] == ['finished', '2026-01-03']


def test_show_of_a_disabled_schedule_without_runs_says_so():
    make_rows()
    status, out, _err = schedules('show', 'refresh', '--kind', 'interval')
    assert status == 0
    assert 'refresh (interval, disabled, source: db)' in out and 'Schedule: every 5 minutes, 3 times' in out
    assert 'Next runs: none (disabled).' in out and 'Last runs: none.' in out
    assert '  start: "2031-01-15T09:00:00+00:00"' in out and '  unit: "minutes"' in out


@pytest.mark.parametrize('subcommand', ['show', 'run', 'enable', 'disable'])
def test_a_name_not_found_or_used_by_several_kinds_exits_1_naming_it(subcommand):
    make_rows()
    CronJob.objects.create(name='launch', callable='tests.tasks.noop', cron_string='0 * * * *')
    assert schedules(subcommand, 'nowhere') == (1, '', f"No schedule named 'nowhere'.{tail(subcommand)}\n")
    assert schedules(subcommand, 'nightly', '--kind', 'one-off') == (
        1,
        '',
        f"No one-off schedule named 'nightly'.{tail(subcommand)}\n",
    )
    status, out, err = schedules(subcommand, 'launch')
    assert (status, out) == (1, '')
    assert err == f"Schedule 'launch' exists in several kinds: one-off, cron; name one with --kind.{tail(subcommand)}\n"
    assert schedules(subcommand, 'launch', '--kind', 'cron')[0] == 0


def tail(subcommand: str) -> str:
    return ' No schedule changed.' if subcommand in ('enable', 'disable') else ''


def test_usage_errors_are_refused_by_argparse():
    with pytest.raises(CommandError, match='invalid choice'):
        schedules('list', '--kind', 'weekly')
    with pytest.raises(CommandError, match='the following arguments are required: NAME'):
        schedules('enable')


# -- run, enable, disable -------------------------------------------------------------------------------------


def test_run_enqueues_one_run_now_prints_its_job_id_and_leaves_the_next_run(connection):
    nightly, _refresh, _launch = make_rows()
    next_run = CronJob.objects.get().next_run
    status, out, err = schedules('run', 'nightly')
    job_id = out.strip()
    assert (status, err) == (0, '') and job_id.startswith(f'{nightly.template_id}_now_')
    assert Queue('high', connection=connection).job_ids == [job_id]
    assert Run.objects.get().rq_job_id == job_id and Run.objects.get().trigger == 'manual'
    assert CronJob.objects.get().next_run == next_run


def test_run_of_a_callable_no_longer_allowed_exits_1_naming_the_schedule(connection, settings):
    make_rows()
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.noop']}
    status, out, err = schedules('run', 'nightly')
    assert (status, out) == (1, '')
    assert err.startswith("Schedule 'nightly' was not run: tests.tasks.add is not allowed by the ALLOWED_CALLABLES")
    assert Queue('high', connection=connection).job_ids == []


def scheduled(connection, row) -> bool:
    return connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) is not None


def test_enable_and_disable_change_every_row_named_and_redis_follows(connection):
    nightly, refresh, launch = make_rows()
    assert (scheduled(connection, nightly), scheduled(connection, refresh)) == (True, False)
    assert schedules('disable', 'nightly', 'launch') == (0, 'Disabled: nightly, launch\n', '')
    assert not CronJob.objects.get().enabled and not ScheduledJob.objects.get().enabled
    assert not scheduled(connection, nightly) and not scheduled(connection, launch)
    assert schedules('enable', 'refresh', 'nightly', 'launch', 'refresh') == (
        0,
        'Enabled: refresh, nightly, launch\n',
        '',
    )
    assert all(scheduled(connection, row) for row in (nightly, refresh, launch))


def test_enable_with_one_unknown_name_changes_nothing(connection):
    nightly, refresh, _launch = make_rows()
    assert schedules('enable', 'refresh', 'nowhere') == (1, '', "No schedule named 'nowhere'. No schedule changed.\n")
    assert not RepeatableJob.objects.get().enabled and not scheduled(connection, refresh)
    assert schedules('disable', 'nightly', 'nowhere')[0] == 1
    assert CronJob.objects.get().enabled and scheduled(connection, nightly)


# -- export and import ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('format', ['json', 'yaml'])
def test_an_export_imported_into_an_empty_database_gives_the_same_rows(connection, format):
    nightly, _refresh, _launch = make_rows()
    CronJob.objects.filter(pk=nightly.pk).record_feedback(run_count=7, last_status='failed', consecutive_failures=2)
    before = row_definitions()
    status, exported, err = schedules('export', '--format', format)
    assert (status, err) == (0, '')
    delete_every_row()
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    status, out, err = schedules('import', '-', stdin=exported.encode())
    assert (status, err) == (0, '')
    added = ['+ launch (scheduled job, added)', '+ nightly (cron job, added)', '+ refresh (repeatable job, added)']
    assert out.splitlines() == [*added, '0 unchanged']
    assert row_definitions() == before
    imported = CronJob.objects.get()
    assert (imported.run_count, imported.last_status, imported.consecutive_failures) == (0, '', 0)
    assert scheduled(connection, imported) and scheduled(connection, ScheduledJob.objects.get())
    assert schedules('export', '--format', format)[1] == exported


def test_the_export_takes_the_rows_of_a_source_and_code_rows_import_as_rows_of_the_database(tmp_path):
    make_rows()
    code_schedule = {'callable': 'tests.tasks.add', 'cron': '30 * * * *', 'args': [5, 6], 'enabled': False}
    with override_settings(RQ_SCHEDULED={'SCHEDULES': {'from code': code_schedule}}):
        sync_code_schedules()

    def names(source: str) -> list[str]:
        return [entry['name'] for entry in json.loads(schedules('export', '--source', source)[1])['schedules']]

    assert (names('db'), names('code')) == (['launch', 'nightly', 'refresh'], ['from code'])
    assert names('all') == ['from code', 'launch', 'nightly', 'refresh']
    before = row_definitions()
    export = tmp_path / 'schedules.json'
    export.write_text(schedules('export', '--source', 'all')[1])
    delete_every_row()
    assert schedules('import', str(export))[0] == 0
    assert row_definitions() == {key: {**value, 'source': 'db'} for key, value in before.items()}


def test_an_existing_name_is_refused_unless_update_which_prints_the_diff(tmp_path):
    make_rows()
    document = json.loads(schedules('export')[1])
    document['schedules'][1].update(queue='default', timeout=None)
    document['schedules'].append({'name': 'new', 'callable': 'tests.tasks.noop', 'interval': 2, 'unit': 'hours'})
    path = tmp_path / 'schedules.json'
    path.write_text(json.dumps(document))
    before = row_definitions()
    assert schedules('import', str(path)) == (
        1,
        '',
        "'launch': a scheduled job of that name exists; import with --update to change it. Nothing imported.\n",
    )
    assert row_definitions() == before
    expected = (
        '+ new (repeatable job, added)\n~ nightly (cron job, changed)\n    queue: "high" -> "default"\n'
        '    timeout: 30 -> null\n2 unchanged\n'
    )
    assert schedules('import', str(path), '--update') == (0, expected, '')
    nightly, new = CronJob.objects.get(), RepeatableJob.objects.get(name='new')
    assert (nightly.queue, nightly.timeout, nightly.description) == ('default', None, 'the report')
    assert (new.interval, new.interval_unit, new.source, new.enabled) == (2, 'hours', 'db', True)
    assert new.scheduled_time <= datetime.now(tz=UTC)
    assert schedules('import', str(path), '--update') == (0, '4 unchanged\n', '')


def test_a_dry_run_prints_the_diff_and_writes_nothing(connection):
    make_rows()
    exported = schedules('export')[1]
    delete_every_row()
    status, out, err = schedules('import', '--dry-run', '-', stdin=exported.encode())
    assert (status, err) == (0, '')
    assert out.endswith('+ refresh (repeatable job, added)\n0 unchanged\nDry run: nothing written.\n')
    assert row_definitions() == {} and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0


def test_a_name_declared_in_code_is_not_replaced_by_an_import():
    with override_settings(
        RQ_SCHEDULED={'SCHEDULES': {'hourly': {'callable': 'tests.tasks.noop', 'cron': '0 * * * *'}}}
    ):
        sync_code_schedules()
    exported = schedules('export', '--source', 'code')[1]
    status, _out, err = schedules('import', '--update', '-', stdin=exported.encode())
    assert (
        status == 1
        and err == "'hourly': a cron job of that name is declared in code; change it there. Nothing imported.\n"
    )


GOOD = {'name': 'good', 'callable': 'tests.tasks.noop', 'cron': '0 * * * *'}


def document(*entries: object) -> bytes:
    return json.dumps({'version': 1, 'schedules': list(entries)}).encode()


EXACTLY_ONE = 'exactly one of cron, interval, at expected'
NOT_PARSED = 'The file is neither JSON nor YAML'
DEEP = b'{"version": 1, "schedules": [' + b'[' * 100_000 + b']' * 100_000 + b']}'
HOSTILE = {
    'binary': (b'\x00\xff\xfe binary', 'The file is not UTF-8 text'),
    'cut JSON': (b'{"version": 1, "schedules": [', NOT_PARSED),
    'a list': (b'[1, 2, 3]', 'A document {"version": 1, "schedules": [...]} expected, got a list.'),
    'empty': (b'', 'A document {"version": 1, "schedules": [...]} expected, got nothing.'),
    'words': (b'just words', 'A document {"version": 1, "schedules": [...]} expected, got a text.'),
    'no version': (b'{"schedules": []}', "got the keys ['schedules']"),
    'version 2': (b'{"version": 2, "schedules": []}', 'Version 2 of the format is unknown here; 1 expected.'),
    'schedules by name': (b'{"version": 1, "schedules": {"good": {}}}', '"schedules": a list of definitions expected'),
    'entry a list': (document(GOOD, ['a', 'list']), 'Entry 2: a definition (an object) expected, got a list.'),
    'name a number': (document({**GOOD, 'name': 7}), 'Entry 1: name: a non-empty text expected, got 7.'),
    'unknown kind': (
        document(GOOD, {'name': 'w', 'callable': 'tests.tasks.noop', 'weekly': 1}),
        f"Entry 2 ('w'): {EXACTLY_ONE}",
    ),
    'two kinds': (document(GOOD, {**GOOD, 'name': 'two', 'interval': 5}), f"Entry 2 ('two'): {EXACTLY_ONE}"),
    'callable not allowed': (
        document(GOOD, {**GOOD, 'name': 'evil', 'callable': 'os.system'}),
        "Entry 2 ('evil'): callable: os.system is not allowed by the ALLOWED_CALLABLES setting.",
    ),
    'unknown queue': (document(GOOD, {**GOOD, 'name': 'late', 'queue': 'nowhere'}), "Entry 2 ('late'): queue:"),
    'bad cron': (
        document(GOOD, {**GOOD, 'name': 'bad cron', 'cron': '61 * * * *'}),
        "Entry 2 ('bad cron'): cron_string",
    ),
    'twice': (document(GOOD, GOOD), "'good': two cron jobs of that name in the file. Nothing imported."),
    'deep': (DEEP, NOT_PARSED),
    'huge': (b' ' * (MAX_IMPORT_BYTES + 1), 'The file is larger than 10 MB; split it.'),
    'YAML object': (b'!!python/object/apply:os.system ["echo hacked"]', NOT_PARSED),
    'YAML name': (b'version: 1\nschedules:\n- !!python/name:os.system\n', NOT_PARSED),
    'YAML alias': (b'version: 1\nschedules:\n- &a {name: a, callable: tests.tasks.noop}\n- *a\n', 'YAML aliases'),
}


@pytest.mark.parametrize(('data', 'message'), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_import_file_is_refused_whole_naming_the_entry_and_field(settings, tmp_path, data, message):
    settings.RQ_SCHEDULED = {'ALLOWED_CALLABLES': ['tests.tasks.*']}
    path = tmp_path / 'hostile'
    path.write_bytes(data)
    status, out, err = schedules('import', str(path), '--update')
    assert (status, out) == (1, '') and message in err, err
    assert row_definitions() == {}


def test_yaml_without_pyyaml_is_refused_naming_the_extra(monkeypatch, tmp_path):
    make_rows()
    monkeypatch.setitem(sys.modules, 'yaml', None)
    extra = 'YAML needs PyYAML: pip install "django-rq-scheduled[yaml]"'
    assert schedules('export', '--format', 'yaml') == (1, '', extra + '\n')
    path = tmp_path / 'schedules.yaml'
    path.write_text('version: 1\nschedules: []\n')
    status, _out, err = schedules('import', str(path))
    assert status == 1 and err.startswith('The file is not JSON (') and extra in err


def test_a_file_that_cannot_be_read_exits_1(tmp_path):
    status, _out, err = schedules('import', str(tmp_path / 'missing.json'))
    assert status == 1 and 'missing.json' in err


def test_the_command_line_exits_0_1_and_2(redis_url):
    def run(*arguments: str) -> subprocess.CompletedProcess:
        command = [sys.executable, '-m', 'django', 'schedules', *arguments, '--settings', 'tests.settings']
        return subprocess.run(command, cwd=ROOT, env=process_env(redis_url), capture_output=True, text=True, timeout=60)

    listed = run('list')
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, 'No schedules.\n', '')
    missing = run('show', 'nowhere')
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, '', "No schedule named 'nowhere'.\n")
    refused = run('list', '--kind', 'weekly')
    assert refused.returncode == 2 and "argument --kind: invalid choice: 'weekly'" in refused.stderr
