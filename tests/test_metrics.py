"""Prometheus metrics (``rqscheduler --metrics-port``): what the core tells its observer, the metrics' registry and
bounds, and real scheduler processes scraped over HTTP while jobs are enqueued, runs recorded, a standby waits and
Redis goes away."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import prometheus_client
import pytest
from django.core.management import CommandError, call_command
from prometheus_client.parser import text_string_to_metric_families

from django_rq_scheduled import Scheduler, metrics
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.observer import EnqueuedJob, Silent
from tests import tasks
from tests.conftest import ROOT, run_worker
from tests.processes import OutputReader, django_shell, process_env, scheduler_process, stop, wait_for
from tests.redis_server import RedisServer, free_port, has_redis_server

UTC = timezone.utc


class Recorder(Silent):
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[str, str, float]] = []
        self.renewals = 0
        self.ticks: list[bool] = []

    def jobs_enqueued(self, jobs, at):
        self.enqueued += [(job.queue, job.kind, round(at - job.due, 3)) for job in jobs]

    def lease_renewed(self):
        self.renewals += 1

    def tick_done(self, scheduler):
        self.ticks.append(scheduler.is_leader)


def recorded_scheduler(connection) -> tuple[Scheduler, Recorder]:
    scheduler = Scheduler(queue_name='default', connection=connection, interval=0.1, lease_ttl=0.3)
    scheduler.observer = recorder = Recorder()
    assert scheduler.acquire_lock()
    return scheduler, recorder


# -- the core's observer ---------------------------------------------------------------------------------------


def test_the_observer_is_told_each_enqueued_job_with_its_queue_kind_and_lateness(fake_connection):
    scheduler, recorder = recorded_scheduler(fake_connection)
    past = datetime.now(UTC) - timedelta(seconds=2)
    scheduler.enqueue_at(past, tasks.add, 1, 2, queue_name='high')
    scheduler.schedule(past, tasks.add, interval=60)
    # Yearly: never due here; with '* * * * *', a minute boundary before the move would enqueue it too.
    scheduler.cron('0 0 1 1 *', tasks.add)
    fake_connection.zadd(keys.SCHEDULED_JOBS_KEY, {'no-such-job': 1})  # a dead letter: enqueued nothing
    scheduler.move_due_jobs()
    assert sorted((queue, kind) for queue, kind, _ in recorder.enqueued) == [
        ('default', 'interval'),
        ('high', 'one-off'),
    ]
    assert all(2 <= lateness < 5 for _, _, lateness in recorder.enqueued)


def test_a_cron_job_and_a_job_with_dependencies_are_told_too(fake_connection):
    scheduler, recorder = recorded_scheduler(fake_connection)
    job = scheduler.cron('* * * * * *', tasks.add)  # every second
    fake_connection.zadd(keys.SCHEDULED_JOBS_KEY, {job.id: 1})
    parent = scheduler.enqueue_in(timedelta(hours=1), tasks.add)
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), tasks.add, depends_on=parent)
    scheduler.move_due_jobs()
    assert sorted(kind for _, kind, _ in recorder.enqueued) == ['cron', 'one-off']


def test_the_silent_default_never_works_out_the_enqueued_jobs(fake_connection):
    class Untouchable(Silent):
        def jobs_enqueued(self, jobs, at):
            self.jobs = jobs  # kept, never iterated

    scheduler = Scheduler(queue_name='default', connection=fake_connection)
    assert isinstance(scheduler.observer, Silent)
    scheduler.observer = observer = Untouchable()
    assert scheduler.acquire_lock()
    scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), tasks.add)
    scheduler.move_due_jobs()
    assert type(observer.jobs).__name__ == 'EnqueuedJobs'  # a lazy view: nothing computed unless iterated


def test_the_loop_tells_each_tick_and_the_lease_renewals(fake_connection):
    scheduler, recorder = recorded_scheduler(fake_connection)
    scheduler.lease._renewed_at = 0.0  # due for renewal
    scheduler.run(burst=True)
    assert recorder.ticks == [True] and recorder.renewals == 1


def test_an_observer_that_raises_stops_no_tick_and_is_logged_once(fake_connection, caplog):
    class Broken(Silent):
        def tick_done(self, scheduler):
            raise RuntimeError('observer bug')

    scheduler = Scheduler(queue_name='default', connection=fake_connection)
    scheduler.observer = Broken()
    job = scheduler.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), tasks.add)
    with caplog.at_level(logging.ERROR, logger='django_rq_scheduled'):
        scheduler.run(burst=True)
        scheduler.run(burst=True)
    assert fake_connection.lrange('rq:queue:default', 0, -1) == [job.id.encode()]
    assert sum('failed at the end of a tick' in record.message for record in caplog.records) == 1


# -- the metrics ---------------------------------------------------------------------------------------------------


def exported_names(registry) -> set[str]:
    suffixes = {'counter': ('_total',), 'histogram': ('_bucket', '_count', '_sum'), 'gauge': ('',)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


EXPORTED = {
    'rqscheduler_jobs_enqueued_total', 'rqscheduler_runs_total', 'rqscheduler_enqueue_lateness_seconds_bucket',
    'rqscheduler_enqueue_lateness_seconds_count', 'rqscheduler_enqueue_lateness_seconds_sum', 'rqscheduler_is_leader',
    'rqscheduler_due_backlog', 'rqscheduler_dead_letters', 'rqscheduler_schedules_failing', 'rqscheduler_paused',
    'rqscheduler_lease_renewals_total', 'rqscheduler_reconcile_duration_seconds_bucket',
    'rqscheduler_reconcile_duration_seconds_count', 'rqscheduler_reconcile_duration_seconds_sum',
}  # fmt: skip


def test_the_metrics_live_in_a_registry_of_their_own():
    first, second = metrics.Metrics(['default']), metrics.Metrics(['default'])  # no 'Duplicated timeseries'
    assert exported_names(first.registry) == EXPORTED
    assert not [family for family in prometheus_client.REGISTRY.collect() if family.name.startswith('rqscheduler')]
    first.run_reached('finished')
    assert second.runs.labels('finished')._value.get() == 0


def test_label_values_are_bounded_queues_outside_the_settings_and_unknown_statuses_are_other():
    measured = metrics.Metrics(['default'])
    jobs = [
        EnqueuedJob('default', 'cron', 10.0),
        EnqueuedJob('anything-a-producer-wrote', 'one-off', 10.0),
        EnqueuedJob('another-one', 'one-off', 10.5),
    ]
    measured.count_enqueued(jobs, at=10.002)
    measured.run_reached('a status from the future')
    text = prometheus_client.generate_latest(measured.registry).decode()
    assert value(text, 'rqscheduler_jobs_enqueued_total', queue='default', kind='cron') == 1
    assert value(text, 'rqscheduler_jobs_enqueued_total', queue='other', kind='one-off') == 2
    assert 'anything-a-producer-wrote' not in text
    assert value(text, 'rqscheduler_runs_total', status='other') == 1
    assert value(text, 'rqscheduler_enqueue_lateness_seconds_bucket', le='0.001') == 1  # early counts as 0
    assert value(text, 'rqscheduler_enqueue_lateness_seconds_bucket', le='0.0025') == 3  # and 2 ms late


def test_runs_are_counted_only_where_metrics_are_served(monkeypatch):
    metrics.run_reached('finished')  # no metrics served: nothing, no error
    served = metrics.Metrics(['default'])
    monkeypatch.setattr(metrics, '_served', served)
    metrics.run_reached('finished')
    assert served.runs.labels('finished')._value.get() == 1


@pytest.mark.parametrize('port', ['0', '65536', '-1', 'http'])
def test_a_bad_metrics_port_is_refused_naming_the_option(port):
    with pytest.raises(CommandError, match='--metrics-port'):
        call_command('rqscheduler', '--metrics-port', port, '--burst')


@pytest.mark.integration
def test_a_metrics_port_in_use_stops_the_command_with_a_message_not_a_traceback(redis_url):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = scheduler_process(redis_url, '--metrics-port', str(port), name='port-taken')
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 1
    assert f'CommandError: --metrics-port: cannot serve metrics on 127.0.0.1:{port}' in output
    assert 'in use' in output and 'Traceback' not in output


BLOCK_PROMETHEUS = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == 'prometheus_client' or name.startswith('prometheus_client.'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
import django
from django.core.management import execute_from_command_line
"""


def run_without_prometheus(url: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-c', BLOCK_PROMETHEUS + code], cwd=ROOT, env=process_env(url), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.integration
def test_without_prometheus_client_the_package_and_the_command_work_and_metrics_name_the_extra(redis_url):
    imports = run_without_prometheus(
        redis_url,
        "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'; django.setup()\n"
        'import django_rq_scheduled.metrics, django_rq_scheduled.history, django_rq_scheduled.feedback\n'
        'import django_rq_scheduled.management.commands.rqscheduler\n'
        "assert 'prometheus_client' not in sys.modules\n",
    )
    assert imports.returncode == 0, imports.stderr
    command = "execute_from_command_line(['m', 'rqscheduler', '--settings', 'tests.settings', {}])"
    burst = run_without_prometheus(redis_url, command.format("'--burst'"))
    assert burst.returncode == 0, burst.stderr
    refused = run_without_prometheus(redis_url, command.format("'--burst', '--metrics-port', '9'"))
    assert refused.returncode == 1 and 'Traceback' not in refused.stderr
    assert 'pip install "django-rq-scheduled[prometheus]"' in refused.stderr


# -- real processes, scraped over HTTP -----------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def scraped(port: int, name: str, **labels: str) -> float | None:
    try:
        return value(scrape(port), name, **labels)
    except OSError:  # not serving yet
        return None


def metrics_process(url: str, name: str, *options: str, env: dict[str, str] | None = None):
    port = free_port()
    process = scheduler_process(url, '--interval', '0.2', '--metrics-port', str(port), *options, name=name, env=env)
    return process, port, OutputReader(process)


CREATE_ROWS = """
from datetime import datetime, timedelta, timezone
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
soon = datetime.now(timezone.utc) + timedelta(seconds=1)
ScheduledJob.objects.create(name='once', callable='tests.tasks.add', args=[1, 2], scheduled_time=soon)
ScheduledJob.objects.create(name='broken', callable='tests.tasks.fail', args=['no'], scheduled_time=soon)
RepeatableJob.objects.create(name='often', callable='tests.tasks.add', args=[1, 1], scheduled_time=soon, interval=1,
                             interval_unit='seconds', repeat=2)
CronJob.objects.create(name='each-second', callable='tests.tasks.add', args=[1, 1], cron_string='* * * * * *', repeat=1)
print('ok')
"""


@pytest.mark.integration
def test_a_leader_serves_metrics_that_move_as_jobs_are_enqueued_and_runs_recorded(redis_url, connection):
    env = {'DRQS_TEST_RECONCILE_INTERVAL': '1'}
    process, port, output = metrics_process(redis_url, 'measured', '--lease-ttl', '1', env=env)
    try:
        wait_for(lambda: scraped(port, 'rqscheduler_is_leader', server='default') == 1, timeout=30)
        assert scraped(port, 'rqscheduler_jobs_enqueued_total', queue='default', kind='one-off') == 0
        assert django_shell(redis_url, CREATE_ROWS) == 'ok'
        Scheduler(queue_name='default', connection=connection).enqueue_in(timedelta(0), tasks.add, 2, 2)
        connection.zadd(keys.SCHEDULED_JOBS_KEY, {'no-such-job': 1})

        def enqueued(kind: str) -> float | None:
            return scraped(port, 'rqscheduler_jobs_enqueued_total', queue='default', kind=kind)

        wait_for(lambda: enqueued('one-off') == 3 and enqueued('interval') == 2 and enqueued('cron') == 1, timeout=30)
        text = scrape(port)
        assert value(text, 'rqscheduler_enqueue_lateness_seconds_count') == 6
        assert value(text, 'rqscheduler_enqueue_lateness_seconds_bucket', le='1.0') == 6  # ms, not seconds, late
        assert value(text, 'rqscheduler_lease_renewals_total') >= 1
        wait_for(lambda: scraped(port, 'rqscheduler_dead_letters', server='default') == 1, timeout=15)
        wait_for(lambda: scraped(port, 'rqscheduler_runs_total', status='queued') == 5)  # rows' runs only

        run_worker(redis_url)
        wait_for(lambda: scraped(port, 'rqscheduler_runs_total', status='finished') == 4, timeout=15)
        text = scrape(port)
        assert value(text, 'rqscheduler_runs_total', status='failed') == 1
        wait_for(lambda: scraped(port, 'rqscheduler_schedules_failing') == 1, timeout=15)
        assert scraped(port, 'rqscheduler_reconcile_duration_seconds_count') >= 1
        assert process.poll() is None
    finally:
        stop(process)
    assert 'Traceback' not in output.text


@pytest.mark.integration
def test_is_leader_is_1_on_the_leader_and_0_on_a_standby_and_both_see_the_due_backlog(redis_url, connection):
    connection.set(keys.LOCK_KEY, 'held-by-rq-scheduler', px=60_000)  # neither process can lead yet
    for n in range(3):
        connection.zadd(keys.SCHEDULED_JOBS_KEY, {f'due-{n}': n + 1})  # no job hashes: dead letters once moved
    first, first_port, _ = metrics_process(redis_url, 'first')
    second, second_port, _ = metrics_process(redis_url, 'second')
    ports = (first_port, second_port)
    try:
        for port in ports:
            wait_for(lambda port=port: scraped(port, 'rqscheduler_due_backlog', server='default') == 3, timeout=30)
            assert scraped(port, 'rqscheduler_is_leader', server='default') == 0
        connection.delete(keys.LOCK_KEY)

        def leaders() -> list[float | None]:
            return [scraped(port, 'rqscheduler_is_leader', server='default') for port in ports]

        wait_for(lambda: sorted(leaders()) == [0, 1], timeout=30)
        for port in ports:
            wait_for(lambda port=port: scraped(port, 'rqscheduler_due_backlog', server='default') == 0, timeout=15)
            wait_for(lambda port=port: scraped(port, 'rqscheduler_dead_letters', server='default') == 3, timeout=15)
        assert sorted(leaders()) == [0, 1]
    finally:
        stop(first)
        stop(second)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not has_redis_server(), reason='needs a redis-server to stop')
def test_metrics_answer_while_redis_is_down_and_the_loop_comes_back():
    server = RedisServer().start()
    process, port, output = metrics_process(server.url, 'outage')
    try:
        wait_for(lambda: scraped(port, 'rqscheduler_is_leader', server='default') == 1, timeout=30)
        server.stop()
        wait_for(lambda: scraped(port, 'rqscheduler_is_leader', server='default') == 0, timeout=15)
        for _ in range(3):
            assert value(scrape(port), 'rqscheduler_is_leader', server='default') == 0  # answers at once, each time
        assert process.poll() is None
        server.start()
        wait_for(lambda: scraped(port, 'rqscheduler_is_leader', server='default') == 1, timeout=30)
    finally:
        stop(process)
        server.close()
    assert 'Traceback' not in output.text


# -- the dashboard and the alert rules the docs ship ---------------------------------------------------------------

STATIC = ROOT / 'docs' / '_static'
METRIC_NAME = re.compile(r'\brqscheduler_\w+')


def test_the_dashboard_is_valid_json_and_queries_only_exported_metrics():
    dashboard = json.loads((STATIC / 'grafana-dashboard.json').read_text())
    queries = [target['expr'] for panel in dashboard['panels'] for target in panel['targets']]
    queried = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert queried <= EXPORTED
    assert {family(name) for name in queried} == {family(name) for name in EXPORTED}  # a panel for each


def family(name: str) -> str:
    return re.sub(r'_(total|bucket|sum|count)$', '', name)


def alert_rules() -> list[dict]:
    text = (STATIC / 'prometheus-alerts.yml').read_text()
    try:
        import yaml
    except ImportError:  # PyYAML is no dependency: read the block as the literal text it is
        return literal_rules(text)
    [group] = yaml.safe_load(text)['groups']
    return group['rules']


def literal_rules(text: str) -> list[dict]:
    """The rules of a one-group rule file, read line by line: each ``- alert:`` item with its keys, ``expr`` folded."""
    assert re.match(r'(#.*\n)*groups:\n  - name: [\w-]+\n    rules:\n', text)
    rules: list[dict] = []
    last_key = ''
    for line in text.splitlines():
        if line.startswith('      - alert: '):
            rules.append({'alert': line.split(': ', 1)[1]})
            last_key = 'alert'
        elif rules and re.match(r' {8}\w', line):
            last_key, _, rest = line.strip().partition(':')
            rules[-1][last_key] = rest.strip()
        elif rules and last_key == 'expr' and line.startswith(' ' * 10):
            rules[-1]['expr'] = (rules[-1]['expr'].removeprefix('>-') + ' ' + line.strip()).strip()
    return rules


def test_the_alert_rules_parse_and_query_only_exported_metrics():
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        assert set(rule) >= {'alert', 'expr', 'for', 'labels', 'annotations'}, rule
        assert METRIC_NAME.findall(rule['expr']), rule
        assert set(METRIC_NAME.findall(rule['expr'])) <= EXPORTED, rule
    literal = literal_rules((STATIC / 'prometheus-alerts.yml').read_text())
    assert [(rule['alert'], rule['expr']) for rule in literal] == [
        (rule['alert'], ' '.join(rule['expr'].split())) for rule in rules
    ]


def test_the_batch_histogram_counts_as_prometheus_clients_histogram_does():
    values = [-1.0, 0.0, 0.0005, 0.001, 0.0010001, 0.05, 1.0, 299.0, 300.0, 301.0, 1e9]
    ours = metrics.BatchHistogram('lateness', 'doc', metrics.LATENESS_BUCKETS)
    ours.observe_many(values[:4])
    ours.observe_many(values[4:])
    theirs = prometheus_client.Histogram(
        'lateness', 'doc', buckets=metrics.LATENESS_BUCKETS, registry=prometheus_client.CollectorRegistry()
    )
    for number in values:
        theirs.observe(max(0.0, number))
    [our_family], [their_family] = ours.collect(), theirs.collect()
    assert [(s.name, s.labels, s.value) for s in our_family.samples] == [
        (s.name, s.labels, s.value) for s in their_family.samples if not s.name.endswith('_created')
    ]
