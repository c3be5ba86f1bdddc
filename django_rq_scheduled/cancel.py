"""Cancel: the runs of schedules still waiting in a queue are taken out of it and recorded as canceled (what the
admin's "cancel" adds to "disable")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.utils import timezone as django_timezone

from .core import keys, scripts
from .history import record_facts, send_signals
from .records import Fact
from .runs import CANCELED, QUEUED, Run
from .servers import servers

if TYPE_CHECKING:
    from .models import ScheduleBase

CANCELED_WITH_SCHEDULE = 'canceled with its schedule'


def cancel_waiting_runs(rows: Iterable[ScheduleBase], *, using: str = 'default') -> int:
    """Takes the runs of ``rows`` still waiting in a queue out of it, recorded as canceled; returns how many.

    A run a worker has already taken is left to finish.
    """
    facts = []
    for row in rows:
        for run in row.runs.using(using).filter(status=QUEUED):
            if _take_out_of_queue(run):
                facts.append(
                    Fact(run.rq_job_id, type(row), row.pk, CANCELED, reason=CANCELED_WITH_SCHEDULE,
                         ended_at=django_timezone.now(), queue=run.queue)
                )  # fmt: skip
    send_signals(record_facts(facts, using=using))
    return len(facts)


def _take_out_of_queue(run: Run) -> bool:
    scheduler = servers().scheduler_for(run.queue)
    queue = scheduler.queues.get(run.queue, None)
    return bool(
        scheduler.connection.eval(scripts.CANCEL_QUEUED, 2, queue.key, keys.job_key(run.rq_job_id), run.rq_job_id)
    )
