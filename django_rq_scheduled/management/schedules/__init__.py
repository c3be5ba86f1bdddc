"""The subcommands of ``manage.py schedules``, one module each.

A subcommand module has ``HELP`` (one line), ``add_arguments(parser)`` and ``handle(command, options)``, which
writes with ``command.stdout`` and returns the exit status (0 for success). Add its module name to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SUBCOMMANDS = ('health', 'sync')


def subcommand(name: str) -> ModuleType:
    return importlib.import_module(f'{__name__}.{name}')
