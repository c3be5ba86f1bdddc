"""Background work that gives way: a thread's syncs wait between their batches while the loop moves due jobs.

The interpreter runs one thread at a time: a reconciliation in the leader's process (every row of a large
``bulk_create`` counts as changed for minutes) would otherwise take half of it from a burst of moves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_yielding = threading.local()


@contextmanager
def yielding_to(wait: Callable[[], object]) -> Iterator[None]:
    """Within the block, this thread's syncs call ``wait`` between their batches."""
    _yielding.wait = wait
    try:
        yield
    finally:
        del _yielding.wait


def between_batches() -> None:
    wait = getattr(_yielding, 'wait', None)
    if wait is not None:
        wait()
