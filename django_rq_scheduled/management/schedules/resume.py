"""``manage.py schedules resume``: lifts every pause (of every queue and of each queue), or, with ``--queue``, the
pause of those queues only (a pause of every queue stays). The leader is woken: what is due moves at once."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.pausing import UnknownQueue, resume_scheduling

from .pause import add_queue_argument, report

HELP = 'Resume the scheduling paused by "schedules pause": of everything, or of some queues.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_queue_argument(parser, 'Resume only this queue (repeat for more); a pause of every queue stays.')


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        results = resume_scheduling(options['queues'])
    except UnknownQueue as exc:
        command.stderr.write(f'{exc} Nothing was resumed.')
        return 1
    return report(command, results, 'resumed')
