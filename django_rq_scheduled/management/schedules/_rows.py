"""What the subcommands share: the kinds of schedules by their command-line names, rows found by name (a name may
be used once per kind), and plain-text tables."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduleBase, ScheduledJob

KINDS: dict[str, type[ScheduleBase]] = {'one-off': ScheduledJob, 'interval': RepeatableJob, 'cron': CronJob}


class NotFound(LookupError):
    """No row, or more than one, answers to a name; the message says which and what to do."""


def kind_of(row: ScheduleBase) -> str:
    return next(kind for kind, model in KINDS.items() if isinstance(row, model))


def add_kind_argument(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument('--kind', choices=list(KINDS), help=text)


def models_of(kind: str | None) -> list[type[ScheduleBase]]:
    return [KINDS[kind]] if kind else list(KINDS.values())


def add_name_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME and ``--kind``: how the subcommands about one schedule name it."""
    parser.add_argument('name', metavar='NAME', help='The name of the schedule.')
    add_kind_argument(parser, 'The kind of the schedule, when the name is used by several kinds.')


def find(name: str, kind: str | None = None) -> ScheduleBase:
    """The one row named ``name`` (of ``kind``); NotFound when there is none, or one in each of several kinds."""
    found = [row for model in models_of(kind) if (row := model.objects.filter(name=name).first()) is not None]
    if not found:
        raise NotFound(f'No {kind + " " if kind else ""}schedule named {name!r}.')
    if len(found) > 1:
        kinds = ', '.join(kind_of(row) for row in found)
        raise NotFound(f'Schedule {name!r} exists in several kinds: {kinds}; name one with --kind.')
    return found[0]


def find_each(names: Iterable[str], kind: str | None = None) -> list[ScheduleBase]:
    """The row of each name, in order; NotFound for the first name that names no row or several."""
    return [find(name, kind) for name in dict.fromkeys(names)]


def table(headings: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    """Columns as wide as their widest cell, values never cut, no trailing spaces."""
    cells = [list(headings), *(list(line) for line in lines)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(headings))]
    return ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
