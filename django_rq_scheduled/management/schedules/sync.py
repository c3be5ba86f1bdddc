"""``manage.py schedules sync``: brings the rows in line with the schedules declared in code, and prints the diff."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.code_sync import sync_code_schedules
from django_rq_scheduled.declared import DeclarationError

HELP = 'Make rows of the schedules declared in code (RQ_SCHEDULED["SCHEDULES"], @cron, @every); print the diff.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--dry-run', action='store_true', help='Print what would change; write nothing.')
    parser.add_argument(
        '--prune',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='Delete the rows of schedules removed from code, instead of disabling them '
        '(default: RQ_SCHEDULED["PRUNE_CODE_SCHEDULES"]).',
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        plan = sync_code_schedules(prune=options['prune'], dry_run=options['dry_run'])
    except DeclarationError as exc:
        command.stderr.write(str(exc))
        return 1
    for line in plan.lines():
        command.stdout.write(line)
    if options['dry_run']:
        command.stdout.write('Dry run: nothing written.')
    return 0
