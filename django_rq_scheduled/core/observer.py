"""What the loop tells whoever watches it (metrics, say): the jobs each batch enqueued, the lease's renewals, the end
of each tick. The core owns this interface and knows nothing of who implements it.

``Silent`` is the default and does nothing. The loop tells an observer once per batch, not once per job, and hands
it the batch's jobs as a lazy ``Iterable``: an observer that does not look at them costs the hot path nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .scheduler import Scheduler

ONE_OFF, INTERVAL, CRON = 'one-off', 'interval', 'cron'
KINDS = (ONE_OFF, INTERVAL, CRON)


class EnqueuedJob(NamedTuple):
    """One job a batch put on its queue (a tuple: the cheapest object to make per job)."""

    queue: str
    """The job's origin, as its hash names it (written by whoever scheduled it: not trusted to be a known queue)."""
    kind: str
    """``one-off``, ``interval`` or ``cron``."""
    due: float
    """Epoch seconds the job was due at (its score)."""


class Observer(Protocol):
    """What an observer of the loop implements; its methods run in the loop's thread, so they must be quick."""

    def jobs_enqueued(self, jobs: Iterable[EnqueuedJob], at: float) -> None:
        """A batch was applied; ``jobs`` (computed when iterated) are the jobs it enqueued, ``at`` the server time."""

    def lease_renewed(self) -> None:
        """The leader extended its lease."""

    def tick_done(self, scheduler: Scheduler) -> None:
        """A tick ended, whether it led, stood by or failed (Redis down): ``scheduler.is_leader`` says which."""


class Silent:
    """The observer that observes nothing: the default."""

    def jobs_enqueued(self, jobs: Iterable[EnqueuedJob], at: float) -> None:
        pass

    def lease_renewed(self) -> None:
        pass

    def tick_done(self, scheduler: Scheduler) -> None:
        pass


SILENT = Silent()


def kind_of(meta: Mapping[str, Any]) -> str:
    """The kind of schedule a job's meta describes (rq-scheduler's keys, which ours also carry)."""
    if meta.get('cron_string'):
        return CRON
    return INTERVAL if meta.get('interval') else ONE_OFF
