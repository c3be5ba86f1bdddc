"""``manage.py schedules health``: exits 0 when the scheduler is healthy on every Redis server, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.core import limits
from django_rq_scheduled.health import check

HELP = 'Check that every Redis server has a leading scheduler with a fresh heartbeat and no overdue jobs.'


def lateness(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {value!r}') from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f'expected a finite number of seconds, got {value!r}')
    if problem := limits.seconds_problem(seconds):
        raise argparse.ArgumentTypeError(problem)
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--json', action='store_true', help='Print the report as a JSON document.')
    parser.add_argument(
        '--max-lateness',
        type=lateness,
        metavar='SECONDS',
        help='Fail when a due job has waited longer than this (default: RQ_SCHEDULED["HEALTH_MAX_LATENESS"]).',
    )
    parser.add_argument(
        '--strict', action='store_true', help='Fail on warnings too: dead letters and failing schedules.'
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    report = check(max_lateness=options['max_lateness'], strict=options['strict'])
    if options['json']:
        command.stdout.write(json.dumps(report.as_json(), indent=2))
    else:
        command.stdout.write(report.as_text())
    return 0 if report.healthy else 1
