"""``schedules enable`` and ``schedules disable``: every row named, in one transaction, through the querysets'
``enable()`` / ``disable()``, so Redis follows after the commit."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from django_rq_scheduled.models import ScheduleBase

from ._rows import NotFound, add_kind_argument, find_each


def add_switch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('names', nargs='+', metavar='NAME', help='The names of the schedules.')
    add_kind_argument(parser, 'The kind of the schedules, when a name is used by several kinds.')


def switch(command: BaseCommand, options: dict[str, Any], *, enabled: bool) -> int:
    try:
        with transaction.atomic():
            rows = find_each(options['names'], options['kind'])
            set_enabled(rows, enabled=enabled)
    except NotFound as exc:
        command.stderr.write(f'{exc} No schedule changed.')
        return 1
    verb = 'Enabled' if enabled else 'Disabled'
    command.stdout.write(f'{verb}: {", ".join(row.name for row in rows)}')
    return 0


def set_enabled(rows: list[ScheduleBase], *, enabled: bool) -> None:
    by_model: dict[type[ScheduleBase], list[int]] = defaultdict(list)
    for row in rows:
        by_model[type(row)].append(row.pk)
    for model, pks in by_model.items():
        queryset = model.objects.filter(pk__in=pks)
        if enabled:
            queryset.enable()
        else:
            queryset.disable()
