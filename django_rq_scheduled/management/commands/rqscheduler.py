"""``manage.py rqscheduler``: runs the leader-locked loop that moves due jobs onto their RQ queues."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from django_rq_scheduled import alerts, metrics
from django_rq_scheduled.conf import get_setting
from django_rq_scheduled.core import _django, limits
from django_rq_scheduled.core.loop import run_schedulers
from django_rq_scheduled.core.queues import connection_identity
from django_rq_scheduled.core.scheduler import Scheduler
from django_rq_scheduled.feedback import DatabaseSync

MIN_SOCKET_TIMEOUT = 5.0  # seconds: a slow batch on a busy Redis is not an outage
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {value!r}') from None
    if problem := limits.seconds_problem(seconds):
        raise argparse.ArgumentTypeError(problem)
    return round(seconds, 3)


def batch_size(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {value!r}') from None
    if problem := limits.batch_size_problem(number):
        raise argparse.ArgumentTypeError(problem)
    return number


def port_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a port number, got {value!r}') from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f'a port is 1 to 65535, got {number}')
    return number


def instance_name(value: str) -> str:
    if problem := limits.instance_name_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def bound_socket_timeouts(connection: Any, lease_ttl: float) -> None:
    """Gives this process's Redis connections a timeout where the project's settings set none.

    Without one (the default of redis-py before 8, or ``SOCKET_TIMEOUT: None``), a Redis that stops answering
    without closing the connection (a network partition, a host gone during a failover) would block the loop until
    TCP gives up, often a quarter of an hour. Past a lease lifetime an answer is of no use anyway: the lease is gone
    and the loop must start over.
    """
    kwargs = connection.connection_pool.connection_kwargs
    seconds = max(float(lease_ttl), MIN_SOCKET_TIMEOUT)
    for name in ('socket_timeout', 'socket_connect_timeout'):
        if kwargs.get(name) is None:
            kwargs[name] = seconds


class Command(BaseCommand):
    help = (
        'Moves scheduled, repeatable and cron jobs onto their RQ queues when they are due. Run one or more; '
        'exactly one leads at a time, the others take over if it dies.'
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            '--interval',
            type=positive_seconds,
            help='Longest sleep between two looks at the schedule, in seconds (default: RQ_SCHEDULED["INTERVAL"]).',
        )
        parser.add_argument('--burst', action='store_true', help='Move the jobs due now, then exit.')
        parser.add_argument(
            '--name', type=instance_name, help='Name of this scheduler instance (default: host:pid:random).'
        )
        parser.add_argument('--pid', metavar='FILE', help='Write the process id to FILE (removed at exit).')
        parser.add_argument(
            '--queue',
            action='append',
            metavar='NAME',
            help='Serve only the Redis connection of this RQ_QUEUES queue; repeat for several. '
            'Default: every distinct Redis connection in RQ_QUEUES.',
        )
        parser.add_argument(
            '--lease-ttl',
            type=positive_seconds,
            help='Lifetime of the leader lease in seconds; a standby takes over this long after the leader '
            'died (default: RQ_SCHEDULED["LEASE_TTL"]).',
        )
        parser.add_argument(
            '--batch-size',
            type=batch_size,
            help='Due jobs moved per atomic batch (default: RQ_SCHEDULED["BATCH_SIZE"]).',
        )
        parser.add_argument(
            '--metrics-port',
            type=port_number,
            metavar='PORT',
            help=f'Serve Prometheus metrics at /metrics on this port (needs {metrics.EXTRA}).',
        )
        parser.add_argument(
            '--metrics-host',
            default='127.0.0.1',
            metavar='HOST',
            help='Address the metrics are served on (default: 127.0.0.1; 0.0.0.0 for every interface).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(options['verbosity'])
        schedulers = self._build_schedulers(options)
        served = self._serve_metrics(options)
        for scheduler in schedulers:
            hook = DatabaseSync(
                get_setting('RECONCILE_INTERVAL'),
                background=not options['burst'],
                on_reconciled=served.reconciled if served else None,
            )
            scheduler.tick_hooks.append(hook)
            if served:
                scheduler.observer = served.observer_for(scheduler)
        pid_file = Path(options['pid']) if options['pid'] else None
        if pid_file:
            pid_file.write_text(str(os.getpid()))
        alerts.beat_while_leading(schedulers)  # the heartbeat notifiers of ALERTS
        try:
            run_schedulers(schedulers, burst=options['burst'])
        finally:
            if pid_file:
                pid_file.unlink(missing_ok=True)

    def _configure_logging(self, verbosity: int) -> None:
        logger = logging.getLogger('django_rq_scheduled')
        logger.setLevel(VERBOSITY_LEVELS.get(verbosity, logging.DEBUG))
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
            logger.addHandler(handler)

    def _serve_metrics(self, options: dict[str, Any]) -> metrics.Metrics | None:
        if options['metrics_port'] is None:
            return None
        try:
            return metrics.serve(options['metrics_port'], options['metrics_host'], queues=self._queue_names(None))
        except metrics.MetricsUnavailable as exc:
            raise CommandError(str(exc)) from None

    def _queue_names(self, requested: list[str] | None) -> list[str]:
        known = list(getattr(settings, 'RQ_QUEUES', {}) or {})
        if not known:
            raise CommandError('RQ_QUEUES is empty: there is no Redis connection to serve.')
        unknown = sorted(set(requested or []) - set(known))
        if unknown:
            raise CommandError(f'--queue: unknown queue(s) {", ".join(unknown)}; RQ_QUEUES has {", ".join(known)}')
        return requested or known

    def _build_schedulers(self, options: dict[str, Any]) -> list[Scheduler]:
        groups: dict[tuple[Any, ...], tuple[str, Any]] = {}
        lease_ttl = options['lease_ttl'] or get_setting('LEASE_TTL')
        for queue_name in self._queue_names(options['queue']):
            connection = _django.connection_for(queue_name)
            bound_socket_timeouts(connection, lease_ttl)
            groups.setdefault(connection_identity(connection), (queue_name, connection))
        base_name = options['name'] or f'{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}'
        interval = options['interval'] or get_setting('INTERVAL')
        batch_size = options['batch_size'] or get_setting('BATCH_SIZE')
        try:
            return [
                Scheduler(
                    queue_name=queue_name,
                    connection=connection,  # the one whose socket timeouts were bounded above
                    interval=interval,
                    name=base_name if len(groups) == 1 else f'{base_name}-{index}',
                    lease_ttl=lease_ttl,
                    batch_size=batch_size,
                )
                for index, (queue_name, connection) in enumerate(groups.values())
            ]
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
