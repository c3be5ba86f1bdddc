"""``manage.py schedules show NAME``: one schedule's definition, its next fire times and its last runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.definitions import definition_of
from django_rq_scheduled.describe import describe_schedule, local_time
from django_rq_scheduled.models import Run, ScheduleBase

from ._rows import NotFound, add_name_arguments, find, kind_of, table

HELP = 'Show a schedule: its definition, its next 5 fire times and its last 10 runs.'
NEXT_RUNS, LAST_RUNS = 5, 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name_arguments(parser)


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        row = find(options['name'], options['kind'])
    except NotFound as exc:
        command.stderr.write(str(exc))
        return 1
    for line in [*summary(row), '', *definition(row), '', *next_runs(row), '', *last_runs(row)]:
        command.stdout.write(line)
    return 0


def summary(row: ScheduleBase) -> list[str]:
    return [
        f'{row.name} ({kind_of(row)}, {"enabled" if row.enabled else "disabled"}, source: {row.source})',
        f'Schedule: {describe_schedule(row)}',
    ]


def definition(row: ScheduleBase) -> list[str]:
    entry = definition_of(row)
    del entry['name']
    return ['Definition:', *(f'  {key}: {json.dumps(value, ensure_ascii=False)}' for key, value in entry.items())]


def next_runs(row: ScheduleBase) -> list[str]:
    if not row.enabled:
        return ['Next runs: none (disabled).']
    runs = row.next_runs(NEXT_RUNS)
    return ['Next runs:', *(f'  {local_time(moment)}' for moment in runs)] if runs else ['Next runs: none.']


def last_runs(row: ScheduleBase) -> list[str]:
    runs = list(row.runs.all()[:LAST_RUNS])
    if not runs:
        return ['Last runs: none.']
    lines = table(('STATUS', 'FIRE TIME', 'DURATION', 'ERROR'), (run_cells(run) for run in runs))
    return ['Last runs, newest first:', *(f'  {line}' for line in lines)]


def run_cells(run: Run) -> list[str]:
    fire_time = local_time(run.fire_time) if run.fire_time else f'by hand, {local_time(run.enqueued_at)}'
    duration = '-' if run.duration is None else f'{run.duration:.1f} s'
    return [run.status, fire_time, duration, run.error_headline or run.reason or '-']
