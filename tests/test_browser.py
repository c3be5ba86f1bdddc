"""The admin in a real headless browser: Playwright drives Debian's Chromium against pytest-django's live server.

Playwright never downloads a browser here: the system Chromium is used (``apt-get install chromium chromium-driver``).
With ``DRQS_SCREENSHOTS`` set, the tests also save the screenshots of the documentation into ``docs/_static/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from pytest_django.live_server_helper import LiveServer

from django_rq_scheduled import Scheduler
from django_rq_scheduled.core import keys
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc
STATIC = Path(__file__).resolve().parent.parent / 'docs' / '_static'
CHROMIUM_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
TIMEOUT_MS = 10_000


@pytest.fixture(scope='module')
def browser() -> Iterator[Browser]:
    executable = shutil.which('chromium') or shutil.which('chromium-browser')
    if executable is None:
        message = 'no Chromium found: apt-get install chromium chromium-driver to run the browser tests'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API runs an event loop in the test thread; without this, Django refuses ORM calls there.
    previous = os.environ.get('DJANGO_ALLOW_ASYNC_UNSAFE')
    os.environ['DJANGO_ALLOW_ASYNC_UNSAFE'] = 'true'
    expect.set_options(timeout=TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop('DJANGO_ALLOW_ASYNC_UNSAFE', None)
        else:
            os.environ['DJANGO_ALLOW_ASYNC_UNSAFE'] = previous


@pytest.fixture
def server(redis_url: str, live_server: LiveServer) -> str:
    """The live server's base URL, with RQ_QUEUES already pointing at the suite's Redis."""
    return live_server.url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={'width': 1280, 'height': 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


def screenshot(page: Page, name: str, *, hide_sidebar: bool = False) -> None:
    """Saves a full-page PNG for the docs, only when DRQS_SCREENSHOTS is set.

    ``hide_sidebar`` folds the admin's navigation sidebar first, so that every column of a change list fits.
    """
    if os.environ.get('DRQS_SCREENSHOTS'):
        STATIC.mkdir(parents=True, exist_ok=True)
        if hide_sidebar and page.locator('#nav-sidebar').is_visible():
            page.click('#toggle-nav-sidebar')
            expect(page.locator('#nav-sidebar')).to_be_hidden()
        page.screenshot(path=str(STATIC / name), full_page=True)


def log_in(page: Page, server: str, username: str, password: str) -> None:
    page.goto(server + reverse('admin:index'))
    expect(page).to_have_url(f'{server}{reverse("admin:login")}?next={reverse("admin:index")}')
    page.fill('#id_username', username)
    page.fill('#id_password', password)
    page.click('#login-form input[type=submit]')
    expect(page).to_have_url(server + reverse('admin:index'))
    expect(page.locator('#user-tools')).to_contain_text(username)


def run_action(page: Page, label: str) -> None:
    page.select_option('select[name=action]', label=label)
    page.click('button[name=index]')


def message(page: Page) -> Locator:
    """The admin's message of the page (actions report at the INFO level, saves and cancels at SUCCESS), not the
    change lists' banners ("No scheduler leads...")."""
    return page.locator('ul.messagelist li:not(.drqs-banner)')


def test_cron_job_life_cycle_as_a_user_clicks(page, redis_url, server, connection):
    User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    log_in(page, server, 'admin', 'pw')

    # Add a cron job with a bad cron string: the form shows the error on the field and nothing is saved.
    page.click('tr.model-cronjob a.addlink')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_add'))
    page.fill('#id_name', 'hello-every-5')
    page.fill('#id_callable', 'tests.tasks.record')
    page.fill('#id_args', '["hello"]')
    page.select_option('#id_queue', 'default')
    page.fill('#id_cron_string', '61 * * * *')
    page.fill('#id_timezone', 'Europe/Paris')
    page.locator('input[name=_save]').first.click()
    error = page.locator('.field-cron_string .errorlist')
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.locator('p.errornote')).to_be_visible()
    expect(page.locator('.field-name .errorlist')).to_have_count(0)
    assert CronJob.objects.count() == 0
    assert not connection.exists(keys.SCHEDULED_JOBS_KEY)
    screenshot(page, 'admin-cronjob-form-error.png')

    # Fix it: the row is saved and its template is in the Redis schedule.
    expect(page.locator('#id_cron_string')).to_have_value('61 * * * *')
    page.fill('#id_cron_string', '*/5 * * * *')
    page.locator('input[name=_save]').first.click()
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_changelist'))
    expect(message(page)).to_contain_text('hello-every-5')
    row = CronJob.objects.get()
    assert (row.cron_string, row.timezone, row.args, row.queue) == ('*/5 * * * *', 'Europe/Paris', ['hello'], 'default')
    assert connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1) == [row.template_id.encode()]

    # The change page previews the next 5 runs.
    page.click('#result_list th.field-name a')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk]))
    expect(page.locator('.drqs-upcoming li')).to_have_count(5)
    screenshot(page, 'admin-cronjob-change.png')

    # Run it now from the change list: one job lands in the queue.
    page.click('.breadcrumbs a:has-text("Cron jobs")')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_changelist'))
    page.check(f'input[name=_selected_action][value="{row.pk}"]')
    run_action(page, 'Run selected schedules now')
    expect(message(page)).to_have_text('1 run enqueued.')
    assert len(connection.lrange('rq:queue:default', 0, -1)) == 1
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1  # running now leaves the schedule alone

    # Disable it: the status badge turns to "paused" and the template leaves the schedule.
    page.check(f'input[name=_selected_action][value="{row.pk}"]')
    run_action(page, 'Disable selected schedules')
    expect(message(page)).to_have_text('1 schedule disabled.')
    expect(page.locator('#result_list td.field-status .drqs-status-paused')).to_have_text('paused')
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0

    # Enable it again, so that the cancel screen has something to cancel.
    page.check(f'input[name=_selected_action][value="{row.pk}"]')
    run_action(page, 'Enable selected schedules')
    expect(message(page)).to_have_text('1 schedule enabled.')
    expect(page.locator('#result_list td.field-status .drqs-status-scheduled')).to_have_text('scheduled')
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1

    # The cancel screen of the row asks first, then disables the row and empties the schedule.
    page.goto(server + reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk]))
    expect(page.locator('#content h1')).to_contain_text('hello-every-5')
    page.click('#drqs-confirm-cancel')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_change', args=[row.pk]))
    expect(message(page)).to_contain_text('was cancelled.')
    expect(page.locator('#id_enabled')).not_to_be_checked()
    row.refresh_from_db()
    assert not row.enabled
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0
    page.goto(server + reverse('admin:django_rq_scheduled_cronjob_changelist'))
    expect(page.locator('#result_list td.field-status .drqs-status-paused')).to_have_text('paused')

    # The scheduler status page: a leader, one job scheduled through the API, and one dead letter.
    scheduler = Scheduler(connection=connection, name='browser-leader', lease_ttl=60)
    scheduler.register_birth()
    assert scheduler.acquire_lock()
    scheduler.enqueue_at(datetime(2031, 1, 1, 6, tzinfo=UTC), 'tests.tasks.add', 1, 2, job_id='yearly-report')
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), 'tests.tasks.add', 2, 3, job_id='lost-origin')
    connection.hdel(keys.job_key('lost-origin'), 'origin')
    scheduler.move_due_jobs()
    assert 'lost-origin' in scheduler.dead_letters()
    page.goto(server + reverse('admin:index'))
    page.click('tr.model-schedulerstatus th a')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_schedulerstatus_changelist'))
    expect(page.locator('#content h1')).to_have_text('Scheduler status')
    expect(page.locator('h3', has_text='Next due').first).to_be_visible()
    expect(page.locator('h3', has_text='Dead letters').first).to_be_visible()
    expect(page.locator('#drqs-leader').first).to_contain_text('browser-leader')
    expect(page.locator('#drqs-next-due').first).to_contain_text('yearly-report')
    expect(page.locator('#drqs-dead-letters').first).to_contain_text('lost-origin')
    expect(page.locator('#drqs-dead-letters').first).to_contain_text('no origin queue')
    screenshot(page, 'admin-status.png')
    scheduler.remove_lock()


def test_change_lists_of_varied_schedules(page, redis_url, server, connection):
    now = datetime.now(UTC).replace(microsecond=0)
    record = 'tests.tasks.record'
    CronJob.objects.create(
        name='weekday-report', callable=record, args=['report'], cron_string='0 7 * * 1-5', timezone='Europe/Paris'
    )
    CronJob.objects.create(
        name='cache-warmup', callable='tests.tasks.add', args=[1, 2], cron_string='*/15 * * * *', timezone='UTC'
    )
    CronJob.objects.create(
        name='monthly-invoices',
        callable=record,
        args=['invoices'],
        kwargs={'notify': True},
        queue='high',
        cron_string='30 3 1 * *',
        timezone='America/New_York',
        repeat=12,
    )
    CronJob.objects.create(
        name='sunday-digest', callable=record, args=['digest'], cron_string='0 18 * * 0', timezone='Asia/Tokyo'
    ).disable()
    RepeatableJob.objects.create(
        name='poll-feeds', callable=record, args=['feeds'], scheduled_time=now, interval=15, interval_unit='minutes'
    )
    RepeatableJob.objects.create(
        name='sync-inventory',
        callable=record,
        args=['inventory'],
        queue='high',
        scheduled_time=now + timedelta(hours=1),
        interval=2,
        interval_unit='hours',
        repeat=10,
    )
    RepeatableJob.objects.create(
        name='nightly-cleanup',
        callable='tests.tasks.add',
        args=[2, 2],
        scheduled_time=now + timedelta(days=1),
        interval=1,
        interval_unit='days',
    ).disable()
    ScheduledJob.objects.create(
        name='launch-announcement', callable=record, args=['launch'], scheduled_time=datetime(2031, 1, 1, tzinfo=UTC)
    )
    assert connection.zcard(keys.SCHEDULED_JOBS_KEY) == 6
    User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    log_in(page, server, 'admin', 'pw')

    page.click('tr.model-cronjob th a')
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_cronjob_changelist'))
    rows = page.locator('#result_list tbody tr')
    expect(rows).to_have_count(4)
    expect(page.locator('#result_list')).to_contain_text('At 07:00, Monday through Friday (Europe/Paris)')
    expect(page.locator('#result_list .drqs-status-scheduled')).to_have_count(3)
    expect(page.locator('#result_list .drqs-status-paused')).to_have_count(1)
    screenshot(page, 'admin-cronjob-changelist.png', hide_sidebar=True)

    page.goto(server + reverse('admin:django_rq_scheduled_repeatablejob_changelist'))
    expect(page.locator('#result_list tbody tr')).to_have_count(3)
    expect(page.locator('#result_list')).to_contain_text('every 15 minutes')
    expect(page.locator('#result_list .drqs-status-paused')).to_have_count(1)
    screenshot(page, 'admin-repeatablejob-changelist.png', hide_sidebar=True)

    page.goto(server + reverse('admin:django_rq_scheduled_scheduledjob_changelist'))
    expect(page.locator('#result_list')).to_contain_text('once, at 2031-01-01')


def test_a_repeatable_job_added_as_proposed_is_due_at_once_and_named_on_the_status_page(
    page, redis_url, server, connection
):
    User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    log_in(page, server, 'admin', 'pw')

    # The form proposes now as the first run; the user leaves it and saves a moment later.
    page.click('tr.model-repeatablejob a.addlink')
    expect(page.locator('#id_scheduled_time_0')).not_to_have_value('')
    expect(page.locator('#id_scheduled_time_1')).not_to_have_value('')
    page.fill('#id_name', 'poll-feeds')
    page.fill('#id_callable', 'tests.tasks.add')
    page.fill('#id_args', '[1, 2]')
    page.fill('#id_interval', '15')
    page.locator('input[name=_save]').first.click()
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_repeatablejob_changelist'))
    row = RepeatableJob.objects.get()
    assert connection.zscore(keys.SCHEDULED_JOBS_KEY, row.template_id) <= datetime.now(UTC).timestamp()

    # The status page names it, with its kind, and links it to its change page.
    page.goto(server + reverse('admin:django_rq_scheduled_schedulerstatus_changelist'))
    expect(page.locator('#drqs-next-due')).to_contain_text('poll-feeds (repeatable job)')
    page.locator('#drqs-next-due a', has_text='poll-feeds').click()
    expect(page).to_have_url(server + reverse('admin:django_rq_scheduled_repeatablejob_change', args=[row.pk]))


def test_view_only_staff_sees_no_actions_and_cannot_cancel(page, redis_url, server, connection):
    row = CronJob.objects.create(name='report', callable='tests.tasks.record', args=['report'], cron_string='0 7 * * *')
    viewer = User.objects.create_user('viewer', password='pw', is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename='view_cronjob'))
    log_in(page, server, 'viewer', 'pw')

    page.goto(server + reverse('admin:django_rq_scheduled_cronjob_changelist'))
    expect(page.locator('#result_list tbody tr')).to_have_count(1)
    expect(page.locator('select[name=action]')).to_have_count(0)
    expect(page.locator('input[name=_selected_action]')).to_have_count(0)
    expect(page.locator('a.addlink')).to_have_count(0)

    response = page.goto(server + reverse('admin:django_rq_scheduled_cronjob_cancel', args=[row.pk]))
    assert response is not None and response.status == 403
    row.refresh_from_db()
    assert row.enabled and connection.zcard(keys.SCHEDULED_JOBS_KEY) == 1


def test_a_failing_schedule_shows_its_failures_and_its_traceback(page, redis_url, server, connection):
    from django_rq_scheduled.feedback import DatabaseSync
    from tests.conftest import run_worker

    User.objects.create_superuser('admin', 'admin@example.com', 'pw')
    RepeatableJob.objects.create(
        name='healthy', callable='tests.tasks.add', args=[1, 2], interval=10, interval_unit='minutes',
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    RepeatableJob.objects.create(
        name='nightly import', callable='tests.tasks.fail', args=['the supplier sent an empty file'],
        interval=10, interval_unit='minutes', scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    log_in(page, server, 'admin', 'pw')
    page.goto(server + reverse('admin:django_rq_scheduled_repeatablejob_changelist'))
    for name in ('healthy', 'nightly import'):
        page.locator('tr', has_text=name).locator('input.action-select').check()
    for _ in range(3):
        run_action(page, 'Run selected schedules now')
        expect(message(page)).to_contain_text('2 runs enqueued')
        for name in ('healthy', 'nightly import'):
            page.locator('tr', has_text=name).locator('input.action-select').check()
    run_worker(redis_url)
    DatabaseSync(reconcile_interval=3600, background=False)(Scheduler(queue_name='default'))

    page.goto(server + reverse('admin:django_rq_scheduled_repeatablejob_changelist') + '?outcome=failing')
    failing = page.locator('#result_list tbody tr')
    expect(failing).to_have_count(1)
    badge = failing.locator('.drqs-outcome-failed')
    expect(badge).to_have_attribute('title', 'ValueError: the supplier sent an empty file')
    expect(failing).to_contain_text('✓ 0 · ✗ 3, 3 in a row')
    expect(failing.locator('.drqs-strip a')).to_have_count(3)
    page.goto(server + reverse('admin:django_rq_scheduled_repeatablejob_changelist'))
    screenshot(page, 'admin-failing-schedule.png', hide_sidebar=True)

    page.locator('tr', has_text='nightly import').locator('.drqs-strip a').last.click()
    expect(page.locator('pre.drqs-traceback')).to_contain_text('ValueError: the supplier sent an empty file')
    expect(page.locator('pre.drqs-traceback')).to_contain_text('Traceback (most recent call last)')
    expect(page.locator('pre.drqs-traceback')).to_contain_text('tests/tasks.py')
    screenshot(page, 'admin-run-traceback.png')
