"""Prometheus metrics of ``manage.py rqscheduler --metrics-port``: served from the scheduler process, in a registry
of their own (never prometheus_client's global one, so a project's own metrics cannot collide with them).

prometheus_client is optional (``django-rq-scheduled[prometheus]``): it is imported only when metrics are served.
The loop tells ``LoopObserver`` what it does through the core's observer interface (``core.observer``); the
leader's run ingestion calls ``run_reached``; reconciliation calls ``Metrics.reconciled``. Every label value is
bounded: queue names not in ``RQ_QUEUES`` count as ``other``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import redis

from .core import pause, status
from .core.observer import KINDS, EnqueuedJob
from .models import SCHEDULE_MODELS
from .runs import CANCELED, FAILED, FINISHED, QUEUED, SKIPPED, STARTED, STOPPED

if TYPE_CHECKING:
    from prometheus_client import Metric

    from .core.scheduler import Scheduler

logger = logging.getLogger(__name__)

EXTRA = 'django-rq-scheduled[prometheus]'
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Seconds: milliseconds are the norm, a second is worth a look, minutes are an outage."""
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SAMPLE_EVERY = 5.0
"""Seconds between two reads of the due backlog and the dead letters (one round trip)."""
OTHER = 'other'
ALL_QUEUES = 'all'
RUN_STATUSES = frozenset({QUEUED, STARTED, FINISHED, FAILED, STOPPED, CANCELED, SKIPPED})

_served: Metrics | None = None
"""The metrics this process serves, if any: what ``run_reached`` counts into."""


class MetricsUnavailable(Exception):
    """Metrics cannot be served (prometheus_client missing, the address refused); the message says why."""


def serve(port: int, host: str, *, queues: Collection[str]) -> Metrics:
    """Serves ``/metrics`` on ``host:port`` from a thread of this process; the metrics it serves are returned."""
    global _served
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailable(
            f'--metrics-port needs prometheus_client, which is not installed: pip install "{EXTRA}"'
        ) from None
    metrics = Metrics(queues)
    try:
        prometheus_client.start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsUnavailable(f'--metrics-port: cannot serve metrics on {host}:{port}: {exc}') from None
    _served = metrics
    return metrics


def run_reached(status: str) -> None:
    """A run reached ``status`` as the leader read it in (called by ``history``; nothing without metrics)."""
    if _served is not None:
        _served.run_reached(status)


class Metrics:
    """The scheduler's metrics and their registry."""

    def __init__(self, queues: Collection[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.queues = frozenset(queues)
        self.registry = registry = CollectorRegistry()
        self.enqueued = Counter(
            'rqscheduler_jobs_enqueued', 'Jobs the leader put on their RQ queues.', ['queue', 'kind'], registry=registry
        )
        self.runs = Counter(
            'rqscheduler_runs', 'Runs that reached a status, as the leader read them in.', ['status'], registry=registry
        )
        self.lateness = BatchHistogram(
            'rqscheduler_enqueue_lateness_seconds', 'Time a job was enqueued minus the time it was due.',
            LATENESS_BUCKETS,
        )  # fmt: skip
        registry.register(self.lateness)
        self.is_leader = Gauge(
            'rqscheduler_is_leader', '1 while this process leads, else 0.', ['server'], registry=registry
        )
        self.due_backlog = Gauge(
            'rqscheduler_due_backlog', 'Entries of the schedule due and not moved yet.', ['server'], registry=registry
        )
        self.dead_letters = Gauge(
            'rqscheduler_dead_letters', 'Jobs in the dead letters.', ['server'], registry=registry
        )
        self.paused = Gauge(
            'rqscheduler_paused',
            '1 while scheduling is paused ("schedules pause"): scope "all" for every queue, else the queue; else 0.',
            ['server', 'scope'],
            registry=registry,
        )
        self.schedules_failing = Gauge(
            'rqscheduler_schedules_failing',
            'Schedule rows whose last run failed (consecutive failures).',
            registry=registry,
        )
        self.lease_renewals = Counter('rqscheduler_lease_renewals', 'Renewals of the leader lease.', registry=registry)
        self.reconcile_duration = Histogram(
            'rqscheduler_reconcile_duration_seconds', 'Time a reconciliation of the rows with Redis took.',
            buckets=RECONCILE_BUCKETS, registry=registry,
        )  # fmt: skip
        self._start_series_at_zero()

    def _start_series_at_zero(self) -> None:
        # A series that appears only at its first increment hides that increment from rate() and increase().
        for run_status in RUN_STATUSES:
            self.runs.labels(run_status)
        for queue in self.queues:
            for kind in KINDS:
                self.enqueued.labels(queue, kind)

    def observer_for(self, scheduler: Scheduler) -> LoopObserver:
        return LoopObserver(self, scheduler.queue_name)

    def count_enqueued(self, jobs: Iterable[EnqueuedJob], at: float) -> None:
        counts: dict[tuple[str, str], int] = {}
        lateness = []
        for queue, kind, due in jobs:
            counts[queue, kind] = counts.get((queue, kind), 0) + 1
            lateness.append(at - due)
        self.lateness.observe_many(lateness)
        for (queue, kind), count in counts.items():
            self.enqueued.labels(queue if queue in self.queues else OTHER, kind).inc(count)

    def run_reached(self, status: str) -> None:
        self.runs.labels(status if status in RUN_STATUSES else OTHER).inc()

    def reconciled(self, seconds: float) -> None:
        """After a reconciliation, in the database thread: its duration, and the failing schedules counted."""
        self.reconcile_duration.observe(seconds)
        self.schedules_failing.set(count_failing_schedules())


class BatchHistogram:
    """A histogram observed a batch at a time, for the hot path: a bisect per value and one lock per batch, where
    prometheus_client's ``Histogram`` takes its lock and walks its buckets for each value. Values below 0 count as
    0. A custom collector: prometheus_client reads it at each scrape."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf's
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe_many(self, values: Iterable[float]) -> None:
        counts = [0] * len(self.counts)
        total = 0.0
        for value in values:
            if value > 0:
                counts[bisect.bisect_left(self.bounds, value)] += 1
                total += value
            else:
                counts[0] += 1
        with self.lock:
            self.counts = [mine + new for mine, new in zip(self.counts, counts)]
            self.sum += total

    def describe(self) -> list[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self.lock:
            counts, total = list(self.counts), self.sum
        cumulative = list(itertools.accumulate(counts))
        bounds = [floatToGoString(bound) for bound in self.bounds] + ['+Inf']
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], list(zip(bounds, cumulative)), total)
        return [family]


def count_failing_schedules() -> int:
    return sum(model._base_manager.filter(consecutive_failures__gt=0).count() for model in SCHEDULE_MODELS)


class LoopObserver:
    """What one scheduler loop tells the metrics (``core.observer.Observer``); ``server`` names its Redis server by
    the queue the loop was built for."""

    def __init__(self, metrics: Metrics, server: str) -> None:
        self.metrics = metrics
        self.server = server
        self.is_leader = metrics.is_leader.labels(server)
        self.due_backlog = metrics.due_backlog.labels(server)
        self.dead_letters = metrics.dead_letters.labels(server)
        self._next_sample = 0.0

    def jobs_enqueued(self, jobs: Iterable[EnqueuedJob], at: float) -> None:
        self.metrics.count_enqueued(jobs, at)

    def lease_renewed(self) -> None:
        self.metrics.lease_renewals.inc()

    def tick_done(self, scheduler: Scheduler) -> None:
        self.is_leader.set(1 if scheduler.is_leader else 0)
        if time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + SAMPLE_EVERY
        try:
            due, dead = status.backlog_and_dead_letters(scheduler.connection, scheduler.clock.now())
        except redis.RedisError as exc:  # the loop says so in its log; the last values stay
            logger.debug('Could not read the due backlog and dead letters: %r', exc)
            return
        self.due_backlog.set(due)
        self.dead_letters.set(dead)
        try:
            state = pause.read_pause(scheduler.connection)
        except redis.RedisError as exc:
            logger.debug('Could not read the pause: %r', exc)
            return
        self.set_paused(state)

    def set_paused(self, state: pause.PauseState) -> None:
        scopes = {ALL_QUEUES: state.everything is not None}
        scopes.update((queue, queue in state.queues) for queue in self.metrics.queues)
        if any(queue not in self.metrics.queues for queue in state.queues):
            scopes[OTHER] = True
        for scope, paused in scopes.items():
            self.metrics.paused.labels(self.server, scope).set(1 if paused else 0)
