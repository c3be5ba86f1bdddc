"""``manage.py schedules backfill NAME --from ISO --to ISO``: runs each slot of a past range once, oldest first."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import redis
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand
from django.utils import timezone as django_timezone

from django_rq_scheduled.backfill import RAN, BackfillError, backfill, slots_between
from django_rq_scheduled.core import limits
from django_rq_scheduled.core.scores import utc_datetime

from ._rows import NotFound, add_name_arguments, find

HELP = 'Run each slot of a past range of a periodic schedule once, oldest first; slots that already ran are left.'


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'expected an ISO 8601 time, e.g. 2030-06-01T12:00, got {value!r}') from exc
    return moment if django_timezone.is_aware(moment) else django_timezone.make_aware(moment)


def _slot_count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of slots of at least 1, got {value!r}')
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name_arguments(parser)
    parser.add_argument('--from', dest='start', type=_moment, required=True, help='The first moment (ISO 8601).')
    parser.add_argument('--to', dest='end', type=_moment, required=True, help='The last moment (ISO 8601), past.')
    parser.add_argument('--dry-run', action='store_true', help='Print what would be run; write nothing.')
    parser.add_argument(
        '--max', type=_slot_count, default=limits.MAX_BACKFILL_SLOTS,
        help=f'Refuse ranges of more slots than this (default {limits.MAX_BACKFILL_SLOTS:,}).',
    )  # fmt: skip


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        row = find(options['name'], options['kind'])
        slots = slots_between(row, options['start'], options['end'], at_most=options['max'])
        results = backfill(row, slots, dry_run=options['dry_run'])
    except (NotFound, BackfillError) as exc:
        command.stderr.write(str(exc))
        return 1
    except ValidationError as exc:
        command.stderr.write(f'Schedule {options["name"]!r} was not backfilled: {" ".join(exc.messages)}')
        return 1
    except redis.RedisError as exc:
        command.stderr.write(f'Schedule {options["name"]!r} was not backfilled: Redis did not answer ({exc}).')
        return 1
    for result in results:
        command.stdout.write(f'{utc_datetime(result.fire_time).isoformat()}  {result.done}  {result.job_id}')
    ran = sum(result.done == RAN for result in results)
    verb = 'would be enqueued' if options['dry_run'] else 'enqueued'
    command.stdout.write(f'{row.name}: {len(results)} slots, {len(results) - ran} {verb}, {ran} already ran.')
    return 0
