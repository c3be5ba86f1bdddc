"""``manage.py schedules list``: every schedule row in a line, or as JSON; one query per kind, whatever the count."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.choices import Source
from django_rq_scheduled.describe import describe_schedule, local_time
from django_rq_scheduled.models import ScheduleBase

from ._rows import add_kind_argument, kind_of, models_of, table

HELP = 'List the schedules: name, kind, schedule in words, next run, last outcome, enabled, source.'
HEADINGS = ('NAME', 'KIND', 'SCHEDULE', 'NEXT RUN', 'LAST OUTCOME', 'ENABLED', 'SOURCE')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--json', action='store_true', help='Print a JSON list of objects, one per schedule.')
    add_kind_argument(parser, 'Only the schedules of this kind.')
    parser.add_argument('--failing', action='store_true', help='Only the enabled schedules whose last run failed.')
    parser.add_argument('--source', choices=Source.values, help='Only the schedules made in the database or in code.')


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    rows = selected_rows(options['kind'], failing=options['failing'], source=options['source'])
    if options['json']:
        command.stdout.write(json.dumps([as_json(row) for row in rows], indent=2, ensure_ascii=False))
    elif rows:
        for line in table(HEADINGS, (as_cells(row) for row in rows)):
            command.stdout.write(line)
    else:
        command.stdout.write('No schedules.')
    return 0


def selected_rows(kind: str | None, *, failing: bool, source: str | None) -> list[ScheduleBase]:
    rows = []
    for model in models_of(kind):
        queryset = model.objects.failing() if failing else model.objects.all()
        rows += queryset.filter(source=source) if source else queryset
    return sorted(rows, key=lambda row: (row.name, kind_of(row)))


def last_outcome(row: ScheduleBase) -> str:
    if not row.last_status:
        return '-'
    if row.consecutive_failures > 1:
        return f'{row.last_status} ({row.consecutive_failures} in a row)'
    return row.last_status


def as_cells(row: ScheduleBase) -> list[str]:
    return [
        row.name,
        kind_of(row),
        describe_schedule(row),
        local_time(row.next_run) or '-',
        last_outcome(row),
        'yes' if row.enabled else 'no',
        row.source,
    ]


def as_json(row: ScheduleBase) -> dict[str, Any]:
    return {
        'name': row.name,
        'kind': kind_of(row),
        'schedule': describe_schedule(row),
        'next_run': row.next_run.isoformat() if row.next_run else None,
        'last_status': row.last_status or None,
        'consecutive_failures': row.consecutive_failures,
        'enabled': row.enabled,
        'source': row.source,
    }
