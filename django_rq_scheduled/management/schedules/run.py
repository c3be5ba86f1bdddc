"""``manage.py schedules run NAME``: one run by hand now, as the admin's "run now"; the next run does not move."""

from __future__ import annotations

import argparse
from typing import Any

import redis
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from ._rows import NotFound, add_name_arguments, find

HELP = 'Enqueue one run of a schedule now (the next scheduled run does not move); print its job id.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name_arguments(parser)


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        row = find(options['name'], options['kind'])
    except NotFound as exc:
        command.stderr.write(str(exc))
        return 1
    try:
        job = row.run_now()
    except ValidationError as exc:
        command.stderr.write(f'Schedule {row.name!r} was not run: {" ".join(exc.messages)}')
        return 1
    except redis.RedisError as exc:
        command.stderr.write(f'Schedule {row.name!r} was not run: Redis did not answer ({exc}).')
        return 1
    command.stdout.write(job.id)
    return 0
