"""``manage.py schedules import FILE``: rows made of the definitions of an export, all or none."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.definitions import MAX_IMPORT_BYTES, ImportRefused, import_document, load

HELP = 'Make rows of the definitions in FILE (JSON or YAML, "-" for stdin), all or none; print the diff.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('file', metavar='FILE', help='An export of "schedules export"; "-" reads stdin.')
    parser.add_argument('--dry-run', action='store_true', help='Print what would change; write nothing.')
    parser.add_argument('--update', action='store_true', help='Change the schedules of names that exist already.')


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        plan = import_document(load(read(options['file'])), update=options['update'], dry_run=options['dry_run'])
    except (ImportRefused, OSError) as exc:
        command.stderr.write(str(exc))
        return 1
    for line in plan.lines():
        command.stdout.write(line)
    if options['dry_run']:
        command.stdout.write('Dry run: nothing written.')
    return 0


def read(path: str) -> bytes:
    """At most one byte more than an import takes: enough to refuse a larger file without reading it all."""
    if path == '-':
        stdin = getattr(sys.stdin, 'buffer', None)  # a replaced sys.stdin may be text only
        return stdin.read(MAX_IMPORT_BYTES + 1) if stdin else sys.stdin.read(MAX_IMPORT_BYTES + 1).encode()
    with open(path, 'rb') as file:
        return file.read(MAX_IMPORT_BYTES + 1)
