"""A tasks module as a real project might write it: it imports names it does not define."""

from __future__ import annotations

import os  # noqa: F401  (reachable as tests.hostile_tasks.os.system through an attribute chain)
from os import system  # noqa: F401  (a name this module imports but does not define)

from tests.tasks import add as imported_add  # noqa: F401  (defined in tests.tasks, not here)

CALLS: list[object] = []


def defined_here(*args: object) -> str:
    return 'ok'


def remember(*args: object) -> list[object]:
    """Called when a hostile pickle is unpickled: a test reads CALLS to see whether it ran in this process."""
    CALLS.append(args)
    return []


class Boom:
    """Unpickling this calls remember(): a payload that runs code wherever it is unpickled."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return remember, ('unpickled',)
