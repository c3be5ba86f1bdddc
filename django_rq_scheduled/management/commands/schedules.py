"""``manage.py schedules <subcommand>``: tools to look after the schedules; each subcommand is a module of
``django_rq_scheduled.management.schedules``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.management.schedules import SUBCOMMANDS, subcommand


def accept_django_options(parser: argparse.ArgumentParser) -> None:
    """Lets Django's own options follow the subcommand too (``schedules health --settings x``), as they may follow
    any other command; unset, they leave the values given before the subcommand alone."""
    hidden: dict[str, Any] = {'default': argparse.SUPPRESS, 'help': argparse.SUPPRESS}
    parser.add_argument('-v', '--verbosity', type=int, choices=[0, 1, 2, 3], **hidden)
    parser.add_argument('--settings', **hidden)
    parser.add_argument('--pythonpath', **hidden)
    for flag in ('--traceback', '--no-color', '--force-color', '--skip-checks'):
        parser.add_argument(flag, action='store_true', **hidden)


class Command(BaseCommand):
    help = 'Look after the schedules: ' + ', '.join(SUBCOMMANDS) + '. See "schedules <subcommand> --help".'

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        subparsers = parser.add_subparsers(dest='subcommand', metavar='SUBCOMMAND', required=True)
        for name in SUBCOMMANDS:
            module = subcommand(name)
            parser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(parser)
            accept_django_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        status = subcommand(options['subcommand']).handle(self, options)
        if status:
            sys.exit(status)
