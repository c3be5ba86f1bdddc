"""``manage.py schedules pause``: the loop moves nothing of the paused queues (every queue by default) until
``schedules resume``; their due entries stay in the schedule and follow their catch-up policy on resume."""

from __future__ import annotations

import argparse
import getpass
import socket
from typing import Any

from django.core.management.base import BaseCommand

from django_rq_scheduled.pausing import ServerPause, UnknownQueue, describe, pause_scheduling, scope_name

HELP = 'Pause the scheduling of every queue, or of some queues, on their Redis servers, until "schedules resume".'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_queue_argument(parser, 'Pause only this queue (repeat for more); every queue by default.')
    parser.add_argument('--reason', default='', help='Why, shown with the pause (in the admin, the health check).')


def add_queue_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument('--queue', action='append', dest='queues', metavar='QUEUE', help=help)


def who() -> str:
    """Who a pause from the command line is recorded as: the system user, at the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = 'unknown user'
    return f'{user}@{socket.gethostname()} (manage.py schedules)'


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    try:
        results = pause_scheduling(options['queues'], by=who(), reason=options['reason'])
    except (UnknownQueue, ValueError) as exc:
        command.stderr.write(f'{exc} Nothing was paused.')
        return 1
    return report(command, results, 'paused')


def report(command: BaseCommand, results: list[ServerPause], done: str) -> int:
    """Writes what happened on each server; 1 if any server failed."""
    failed = False
    for result in results:
        if result.error:
            failed = True
            command.stderr.write(f'Redis of queues {result.name}: Redis failed ({result.error}); nothing {done} there.')
            continue
        for scope, changed in result.changed.items():
            command.stdout.write(f'Redis of queues {result.name}: {scope_name(scope)} {_outcome(done, changed)}.')
        state = result.state
        if state is not None and state.everything is not None:
            command.stdout.write(f'Redis of queues {result.name}: every queue is paused, {describe(state.everything)}.')
    return 1 if failed else 0


def _outcome(done: str, changed: bool) -> str:
    if done == 'paused':
        return (
            'paused' if changed else 'was paused already (who and since when kept; a reason given replaces its reason)'
        )
    return 'resumed' if changed else 'was not paused on its own'
