"""``manage.py schedules enable NAME…``: the schedules run again; all of them or, when a name is unknown, none."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand

from ._switch import add_switch_arguments, switch

HELP = 'Enable schedules by name: all of them, or none when a name names no schedule.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_switch_arguments(parser)


def handle(command: BaseCommand, options: dict[str, Any]) -> int:
    return switch(command, options, enabled=True)
