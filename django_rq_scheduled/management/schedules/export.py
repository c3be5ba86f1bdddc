"""``manage.py schedules export``: the definitions of the schedules, as JSON or YAML, for ``schedules import``."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.definitions import ImportRefused, dump, export_document

HELP = 'Print the definitions of the schedules as JSON or YAML; "schedules import" reads them back.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--format', choices=['json', 'yaml'], default='json', help='json (the default) or yaml.')
    parser.add_argument(
        '--source',
        choices=['db', 'code', 'all'],
        default='db',
        help='The schedules made in the database (the default), declared in code, or all.',
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        text = dump(export_document(options['source']), options['format'])
    except ImportRefused as exc:  # no PyYAML
        command.stderr.write(str(exc))
        return 1
    command.stdout.write(text.rstrip('\n'))
    return 0
