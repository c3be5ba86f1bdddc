"""The subcommands of ``manage.py schedules``, one module each.

A subcommand module has ``HELP`` (one line), ``add_arguments(parser)`` and ``handle(command, options)``, which
writes with ``command.stdout`` and returns the exit status (0 for success). Add its name to ``SUBCOMMANDS``; a
module whose name would be a Python keyword ends with ``_`` (``import_``). Modules starting with ``_`` are helpers.
"""

from __future__ import annotations

import importlib
import keyword
from types import ModuleType

SUBCOMMANDS = (
    'list', 'show', 'run', 'backfill', 'enable', 'disable', 'export', 'import', 'sync', 'health', 'pause', 'resume',
)  # fmt: skip


def subcommand(name: str) -> ModuleType:
    module = f'{name}_' if keyword.iskeyword(name) else name  # import.py could not be imported by name
    return importlib.import_module(f'{__name__}.{module}')
