"""Schedules declared in code (``RQ_SCHEDULED['SCHEDULES']``, ``@cron``, ``@every``) made rows by the sync: added,
changed once, removed (disabled or pruned), refused with the schedule's name and field, and read-only in the admin
but for ``enabled``."""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.core.checks import run_checks
from django.db import OperationalError
from django.test import override_settings

from django_rq_scheduled import code_sync, declared
from django_rq_scheduled.code_sync import sync_code_schedules
from django_rq_scheduled.core import keys
from django_rq_scheduled.declared import DeclarationError
from django_rq_scheduled.feedback import DatabaseSync
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures('redis_url')]

UTC = timezone.utc
HOURLY = {'callable': 'tests.tasks.add', 'cron': '0 * * * *', 'args': [1, 2]}
EVERY_MINUTE = {'callable': 'tests.tasks.add', 'interval': 1, 'unit': 'minutes'}
TASKS_MODULE = 'tests.code_app.tasks'


@pytest.fixture(autouse=True)
def no_decorated_schedules():
    """Each test sees the decorated schedules of the apps it installs, found afresh."""
    declared._decorated.clear()
    sys.modules.pop(TASKS_MODULE, None)
    yield
    declared._decorated.clear()
    sys.modules.pop(TASKS_MODULE, None)


def schedules(**definitions):
    return override_settings(RQ_SCHEDULED={'SCHEDULES': definitions})


def versions(connection):
    return {key.decode(): value.decode() for key, value in connection.hgetall(keys.VERSIONS_KEY).items()}


def test_schedules_in_the_settings_become_rows_defined_in_code_with_their_templates(connection):
    with schedules(hourly=HOURLY, minutely=EVERY_MINUTE):
        plan = sync_code_schedules()
    assert plan.lines() == [
        '+ hourly (cron, added)',
        '+ minutely (interval, added)',
        '0 unchanged',
    ] or sorted(plan.lines()) == sorted(['+ hourly (cron, added)', '+ minutely (interval, added)', '0 unchanged'])
    hourly, minutely = CronJob.objects.get(name='hourly'), RepeatableJob.objects.get(name='minutely')
    assert (hourly.source, hourly.cron_string, hourly.args) == ('code', '0 * * * *', [1, 2])
    assert (minutely.source, minutely.interval, minutely.interval_unit) == ('code', 1, 'minutes')
    assert versions(connection) == {hourly.template_id: hourly.version(), minutely.template_id: minutely.version()}


def test_decorated_functions_of_installed_apps_become_rows(connection):
    with override_settings(INSTALLED_APPS=['tests.code_app', *_installed()]):
        sync_code_schedules()
    digest = RepeatableJob.objects.get(name=f'{TASKS_MODULE}.send_digest')
    report = CronJob.objects.get(name='weekday report')
    assert (digest.callable, digest.interval, digest.interval_unit, digest.queue, digest.kwargs) == (
        f'{TASKS_MODULE}.send_digest',
        5,
        'minutes',
        'high',
        {'to': 'ops'},
    )
    assert (report.callable, report.cron_string, report.timezone) == (
        f'{TASKS_MODULE}.weekday_report',
        '0 7 * * 1-5',
        'Europe/Paris',
    )


def _installed():
    from django.conf import settings

    return [app for app in settings.INSTALLED_APPS if app != 'tests.code_app']


def test_a_sync_of_unchanged_code_writes_nothing(connection):
    with schedules(hourly=HOURLY):
        sync_code_schedules()
        modified = CronJob.objects.get().modified
        plan = sync_code_schedules()
    assert plan.empty and plan.unchanged == 1
    assert CronJob.objects.get().modified == modified


def test_a_changed_definition_updates_its_row_and_its_template_once(connection):
    with schedules(hourly=HOURLY):
        sync_code_schedules()
    first = CronJob.objects.get()
    with schedules(hourly={**HOURLY, 'cron': '30 * * * *', 'timeout': 60}):
        assert sync_code_schedules().lines() == ['~ hourly (cron, changed)', '0 unchanged']
        assert sync_code_schedules().lines() == ['1 unchanged']
    row = CronJob.objects.get()
    assert (row.pk, row.cron_string, row.timeout) == (first.pk, '30 * * * *', 60)
    assert versions(connection) == {row.template_id: row.version()} and row.version() != first.version()
    with schedules(hourly={**HOURLY, 'cron': '30 * * * *'}):  # an option left out goes back to its default
        sync_code_schedules()
    assert CronJob.objects.get().timeout is None


def test_a_schedule_removed_from_code_is_disabled_and_kept_or_deleted_when_pruning(connection):
    with schedules(hourly=HOURLY, minutely=EVERY_MINUTE):
        sync_code_schedules()
    with schedules(minutely=EVERY_MINUTE):
        assert sync_code_schedules().lines() == ['- hourly (cron, removed from code: disabled)', '1 unchanged']
        assert sync_code_schedules().lines() == ['2 unchanged']
    hourly = CronJob.objects.get(name='hourly')
    assert (hourly.enabled, hourly.code_version) == (False, '')
    assert hourly.template_id not in versions(connection)
    with schedules(minutely=EVERY_MINUTE):
        assert sync_code_schedules(prune=True).lines() == ['- hourly (cron, removed from code: deleted)', '1 unchanged']
    assert not CronJob.objects.exists() and RepeatableJob.objects.count() == 1


def test_a_dry_run_writes_nothing(connection):
    with schedules(hourly=HOURLY):
        plan = sync_code_schedules(dry_run=True)
    assert plan.lines() == ['+ hourly (cron, added)', '0 unchanged']
    assert not CronJob.objects.exists() and versions(connection) == {}


def test_a_pause_made_in_the_admin_lasts_until_the_code_changes_the_schedule(connection):
    with schedules(hourly=HOURLY):
        sync_code_schedules()
        CronJob.objects.get().disable()
        sync_code_schedules()
        assert CronJob.objects.get().enabled is False
    with schedules(hourly={**HOURLY, 'description': 'now with a description'}):
        sync_code_schedules()
    assert CronJob.objects.get().enabled is True


def test_an_interval_keeps_its_first_run_across_syncs_unless_the_code_sets_one(connection):
    with schedules(minutely=EVERY_MINUTE):
        sync_code_schedules()
        first = RepeatableJob.objects.get().scheduled_time
    with schedules(minutely={**EVERY_MINUTE, 'timeout': 5}):
        sync_code_schedules()
    assert RepeatableJob.objects.get().scheduled_time == first
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with schedules(minutely={**EVERY_MINUTE, 'start': '2030-01-01T00:00:00+00:00'}):
        sync_code_schedules()
    assert RepeatableJob.objects.get().scheduled_time == start


def test_a_one_off_schedule_in_code(connection):
    at = datetime.now(UTC) + timedelta(days=1)
    with schedules(once={'callable': 'tests.tasks.add', 'at': at.isoformat()}):
        sync_code_schedules()
    assert ScheduledJob.objects.get(name='once').scheduled_time == at


@pytest.mark.parametrize(
    ('definition', 'field', 'words'),
    [
        ({'callable': 'tests.tasks.add'}, None, 'exactly one of cron, interval, at'),
        ({**HOURLY, 'interval': 5}, None, 'exactly one of'),
        ({**HOURLY, 'colour': 'red'}, None, "unknown option(s) ['colour']"),
        ({'cron': '0 * * * *'}, 'callable', 'missing'),
        ({**HOURLY, 'cron': '61 * * * *'}, 'cron_string', ''),
        ({**HOURLY, 'timezone': 'Mars/Olympus'}, 'timezone', ''),
        ({**EVERY_MINUTE, 'interval': 0}, 'interval', ''),
        ({**EVERY_MINUTE, 'unit': 'fortnights'}, 'interval_unit', ''),
        ({**HOURLY, 'callable': 'os.system'}, 'callable', ''),
        ({**HOURLY, 'args': {'a': 1}}, 'args', 'list'),
        ({**HOURLY, 'queue': 'nowhere'}, 'queue', ''),
        ({'callable': 'tests.tasks.add', 'at': 'tomorrow'}, 'at', 'ISO 8601'),
        ({**EVERY_MINUTE, 'start': 3}, 'start', 'datetime'),
        ('0 * * * *', None, 'a dict expected'),
    ],
)
def test_a_bad_definition_is_refused_with_its_name_and_field_and_nothing_is_written(definition, field, words):
    settings = {'ALLOWED_CALLABLES': ['tests.tasks.*'], 'SCHEDULES': {'good': HOURLY, 'bad': definition}}
    with override_settings(RQ_SCHEDULED=settings), pytest.raises(DeclarationError) as caught:
        sync_code_schedules()
    assert caught.value.name == 'bad' and caught.value.field == field and words in str(caught.value)
    assert "'bad'" in str(caught.value)
    assert not CronJob.objects.exists()
    with override_settings(RQ_SCHEDULED=settings):
        errors = [error for error in run_checks() if error.id == 'django_rq_scheduled.E020']
    assert len(errors) == 1 and "'bad'" in errors[0].msg


def test_a_name_used_by_a_row_made_in_the_admin_is_refused(connection):
    CronJob.objects.create(name='hourly', callable='tests.tasks.add', cron_string='5 * * * *')
    with schedules(hourly=HOURLY, other=EVERY_MINUTE), pytest.raises(DeclarationError, match='taken by a cron'):
        sync_code_schedules()
    assert CronJob.objects.get().source == 'db' and not RepeatableJob.objects.exists()


def test_the_same_name_declared_twice_is_refused():
    installed = override_settings(INSTALLED_APPS=['tests.code_app', *_installed()])
    with installed, schedules(**{'weekday report': HOURLY}), pytest.raises(DeclarationError, match='declared twice'):
        sync_code_schedules()


def test_every_picks_the_largest_whole_unit():
    declared.every(hours=1, minutes=30, name='ninety')(_function)
    declared.every(weeks=2, name='fortnight')(_function)
    (ninety, _), (fortnight, _) = declared._decorated.values()
    assert (ninety['interval'], ninety['unit']) == (90, 'minutes')
    assert (fortnight['interval'], fortnight['unit']) == (2, 'weeks')
    with pytest.raises(TypeError):
        declared.every(minutes=-1)
    with pytest.raises(TypeError):
        declared.every(minutes=1.5)  # type: ignore[arg-type]


def _function() -> None:
    pass


def test_the_leader_syncs_the_code_when_it_starts_leading(connection):
    from django_rq_scheduled import Scheduler

    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    hook = DatabaseSync(reconcile_interval=3600, background=False)
    with schedules(hourly=HOURLY):
        hook(scheduler)
        assert CronJob.objects.get().source == 'code'
    with schedules():  # only when it starts leading: a later tick leaves the rows alone
        hook(scheduler)
    assert CronJob.objects.get().enabled is True


def test_a_bad_definition_does_not_stop_the_leader(connection, caplog):
    from django_rq_scheduled import Scheduler

    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    with schedules(bad={**HOURLY, 'cron': 'never'}):
        DatabaseSync(reconcile_interval=3600, background=False)(scheduler)
    assert "Schedule 'bad' declared in code" in caplog.text and not CronJob.objects.exists()


def test_two_syncs_at_once_make_each_row_once(connection):
    errors = []

    def sync() -> None:
        try:
            with schedules(hourly=HOURLY, minutely=EVERY_MINUTE):
                sync_code_schedules()
        except Exception as exc:  # a writer that lost the race on SQLite may be told the database is locked
            errors.append(exc)
        finally:
            from django.db import connection as db

            db.close()

    threads = [threading.Thread(target=sync) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(isinstance(error, OperationalError) and 'locked' in str(error) for error in errors), errors
    with schedules(hourly=HOURLY, minutely=EVERY_MINUTE):
        sync_code_schedules()  # whatever the race left, one more sync completes it
    assert CronJob.objects.count() == RepeatableJob.objects.count() == 1


def test_declarations_module_is_importable_before_the_app_is_ready():
    assert declared.KINDS == {'cron': 'CronJob', 'interval': 'RepeatableJob', 'at': 'ScheduledJob'}
    assert {'callable', 'cron_string', 'interval', 'scheduled_time', 'enabled'} <= code_sync.DECLARABLE


@pytest.fixture
def admin_client_(client):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser('admin', 'admin@example.com', 'pw'))
    return client


def test_the_admin_shows_a_code_row_read_only_but_for_enabled(admin_client_, connection):
    from django.urls import reverse

    with schedules(hourly=HOURLY):
        sync_code_schedules()
    row = CronJob.objects.get()
    url = reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk])
    page = admin_client_.get(url).content.decode()
    assert 'code: only “enabled” can be changed here' in page
    assert 'name="callable"' not in page and 'name="cron_string"' not in page and 'name="enabled"' in page
    response = admin_client_.post(url, {'enabled': '', 'callable': 'os.system', 'cron_string': '* * * * *'})
    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.enabled, row.callable, row.cron_string) == (False, 'tests.tasks.add', '0 * * * *')
    with schedules(hourly=HOURLY):
        assert sync_code_schedules().lines() == ['1 unchanged']
    assert CronJob.objects.get().enabled is False


def test_the_admin_deletes_a_code_row_only_once_it_is_removed_from_code(admin_client_, connection):
    from django.urls import reverse

    with schedules(hourly=HOURLY):
        sync_code_schedules()
    row = CronJob.objects.get()
    delete = reverse('admin:django_rq_scheduled_cronjob_delete', args=[row.pk])
    assert admin_client_.post(delete, {'post': 'yes'}).status_code == 403
    changelist = reverse('admin:django_rq_scheduled_cronjob_changelist')
    page = admin_client_.post(changelist, {'action': 'delete_selected', '_selected_action': [row.pk], 'post': 'yes'})
    assert CronJob.objects.filter(pk=row.pk).exists(), page.status_code
    with schedules():
        sync_code_schedules()
    assert 'removed from it since' in admin_client_.get(reverse(
        'admin:django_rq_scheduled_cronjob_change', args=[row.pk])).content.decode()  # fmt: skip
    assert admin_client_.post(delete, {'post': 'yes'}).status_code == 302
    assert not CronJob.objects.exists()


def test_the_sync_command_prints_the_diff_and_exits_0_or_1_naming_the_schedule(connection):
    from io import StringIO

    from django.core.management import call_command

    def run(*arguments: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        try:
            call_command('schedules', 'sync', *arguments, stdout=out, stderr=err)
            status = 0
        except SystemExit as exit:
            status = int(exit.code or 0)
        return status, out.getvalue(), err.getvalue()

    with schedules(hourly=HOURLY):
        assert run('--dry-run') == (0, '+ hourly (cron, added)\n0 unchanged\nDry run: nothing written.\n', '')
        assert not CronJob.objects.exists()
        assert run() == (0, '+ hourly (cron, added)\n0 unchanged\n', '')
    with schedules():
        assert run('--prune') == (0, '- hourly (cron, removed from code: deleted)\n0 unchanged\n', '')
    with schedules(bad={**HOURLY, 'queue': 'nowhere'}):
        status, out, err = run()
    assert (status, out) == (1, '') and "Schedule 'bad' declared in code: queue:" in err


COUNT_CODE_ROWS = """
from django_rq_scheduled.models import CronJob, RepeatableJob
print(CronJob.objects.filter(source='code').count(), RepeatableJob.objects.filter(source='code').count())
"""


@pytest.mark.integration
def test_two_schedulers_starting_together_make_each_code_row_once(redis_url, connection):
    import json

    from tests.processes import django_shell, scheduler_process, stop, wait_for

    env = {'DRQS_TEST_SCHEDULES': json.dumps({'hourly': HOURLY, 'minutely': EVERY_MINUTE})}
    processes = [scheduler_process(redis_url, '--interval', '0.1', name=f'node-{i}', env=env) for i in range(2)]
    try:
        wait_for(lambda: django_shell(redis_url, COUNT_CODE_ROWS, env) == '1 1', timeout=60, step=0.5)
        wait_for(lambda: connection.hlen(keys.VERSIONS_KEY) == 2, timeout=30)
        processes.append(scheduler_process(redis_url, '--interval', '0.1', name='node-late', env=env))
        stop(processes.pop(0))  # the leader goes: another takes over and syncs again, finding nothing to do
        time.sleep(3)
        assert django_shell(redis_url, COUNT_CODE_ROWS, env) == '1 1'
    finally:
        for process in processes:
            stop(process)
    output = ''.join(process.stdout.read() for process in processes if process.stdout)
    assert 'Traceback' not in output, output


@pytest.mark.parametrize(
    ('declared_schedules', 'words'),
    [
        (['hourly'], 'a dict from names to definitions expected, got list'),
        ({7: HOURLY}, 'a schedule name must be a non-empty string'),
        ({'': HOURLY}, 'a schedule name must be a non-empty string'),
        ({'x' * 129: HOURLY}, 'name:'),
        ({'bell\x07': HOURLY}, 'name:'),
        ({'hourly': {**HOURLY, 'enabled': 'perhaps'}}, 'enabled:'),
        ({'hourly': {**HOURLY, 'repeat': -1}}, 'repeat:'),
        ({'hourly': {**HOURLY, 'timeout': 10**30}}, 'timeout:'),
        ({'hourly': {**HOURLY, 'cron': None}}, 'cron_string:'),
        ({'hourly': {**HOURLY, 'kwargs': {'a': float('nan')}}}, 'kwargs:'),
    ],
)
def test_hostile_settings_are_refused_naming_what_is_wrong(declared_schedules, words):
    with override_settings(RQ_SCHEDULED={'SCHEDULES': declared_schedules}), pytest.raises(DeclarationError) as caught:
        sync_code_schedules()
    assert words in str(caught.value)
    assert not CronJob.objects.exists()


def test_a_decorated_function_outside_the_allow_list_is_refused(connection):
    installed = override_settings(INSTALLED_APPS=['tests.code_app', *_installed()])
    allowed = override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': ['tests.tasks.*']})
    with installed, allowed, pytest.raises(DeclarationError, match='callable'):
        sync_code_schedules()
    assert not RepeatableJob.objects.exists() and not CronJob.objects.exists()


def test_a_sync_while_redis_is_down_keeps_the_rows_and_reconciliation_writes_the_templates(connection, monkeypatch):
    import redis

    from django_rq_scheduled import sync

    def redis_down(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError('Redis is away')

    monkeypatch.setattr(sync, 'sync_rows', redis_down)
    with schedules(hourly=HOURLY):
        sync_code_schedules()
    assert CronJob.objects.get().source == 'code' and versions(connection) == {}
    monkeypatch.undo()
    sync.reconcile(connection=connection)
    row = CronJob.objects.get()
    assert versions(connection) == {row.template_id: row.version()}


def test_the_leader_syncs_the_code_again_at_its_next_tick_when_the_database_was_away(connection, monkeypatch):
    from django.db import OperationalError as DatabaseAway

    from django_rq_scheduled import Scheduler, feedback

    scheduler = Scheduler(queue_name='default')
    assert scheduler.acquire_lock()
    hook = DatabaseSync(reconcile_interval=3600, background=False)

    def database_away(**kwargs: object) -> None:
        raise DatabaseAway('the database is away')

    monkeypatch.setattr(feedback, 'sync_code_schedules', database_away)
    with schedules(hourly=HOURLY), pytest.raises(DatabaseAway):
        hook(scheduler)
    monkeypatch.undo()
    with schedules(hourly=HOURLY):
        hook(scheduler)
    assert CronJob.objects.get().source == 'code'
