"""The Redis servers of ``RQ_QUEUES``: one ``Scheduler`` per distinct server, and the server of each queue.

Sync writes a row's template on its queue's server, the admin reads each server once per page, and run-now
enqueues through the server's scheduler. Clients (and their connection pools) are built once per ``RQ_QUEUES``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from rq.job import Job

from . import task_calls
from .conf import allow_list
from .core import capture
from .core.allowlist import AllowList
from .core.jobs import template_meta
from .core.queues import connection_identity
from .core.scheduler import Scheduler
from .runs import Run

if TYPE_CHECKING:
    from redis import Redis

    from .models import ScheduleBase


@dataclass
class Servers:
    """The distinct Redis servers of RQ_QUEUES, each with one scheduler, and which server each queue is on."""

    schedulers: dict[tuple[Any, ...], Scheduler]
    queue_home: dict[str, tuple[Any, ...]]

    def only(self, identity: tuple[Any, ...]) -> Servers:
        """The same servers, reduced to one: rows of other servers are left to those servers' loops."""
        return Servers({key: value for key, value in self.schedulers.items() if key == identity}, self.queue_home)

    def queues_on(self, connection: Redis) -> list[str]:
        """The queues of RQ_QUEUES on the server of ``connection``."""
        identity = connection_identity(connection)
        return [name for name, home in self.queue_home.items() if home == identity]

    def name_of(self, identity: tuple[Any, ...]) -> str:
        """How pages and reports name a server: by its queues ("default, high"), never by its URL, which may hold a
        password."""
        return ', '.join(name for name, home in self.queue_home.items() if home == identity)

    def scheduler_for(self, queue_name: str) -> Scheduler:
        identity = self.queue_home.get(queue_name)
        if identity is None:
            raise ValueError(f'queue: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(self.queue_home)}')
        return self.schedulers[identity]


def servers() -> Servers:
    # Keyed by what the schedulers are built from: their queues, the allow-list (one object per patterns, cached by
    # ``conf``) and the key of their marks (derived from SECRET_KEY). A test's changed allow-list is heard at once.
    return _servers_for(repr(getattr(settings, 'RQ_QUEUES', {})), allow_list(), getattr(settings, 'SECRET_KEY', None))


@functools.lru_cache(maxsize=8)
def _servers_for(queues_fingerprint: str, rule: AllowList, secret: object) -> Servers:
    """Cached per value of what they are built from: clients (and their connection pools) are reused across syncs."""
    schedulers: dict[tuple[Any, ...], Scheduler] = {}
    queue_home: dict[str, tuple[Any, ...]] = {}
    for queue_name in getattr(settings, 'RQ_QUEUES', {}):
        scheduler = Scheduler(queue_name=queue_name)
        identity = connection_identity(scheduler.connection)
        schedulers.setdefault(identity, scheduler)
        queue_home[queue_name] = identity
    return Servers(schedulers, queue_home)


def template_job(
    scheduler: Scheduler, row: ScheduleBase, runs: int, *, late_from: float | None = None, version: str | None = None
) -> Job:
    """The (unsaved) template of ``row`` after ``runs`` runs, built by the scheduler of its queue's server.

    ``late_from``: see ``core.jobs.template_meta``; ``version``: ``row.version()`` if the caller has it. A row
    naming a Django Task calls it through its backend (``task_calls``).
    """
    call = task_calls.call_of(row.callable, row.args, row.kwargs)
    job = scheduler.jobs.create(
        call.func,
        args=call.args,
        kwargs=call.kwargs,
        meta=call.meta,
        commit=False,
        result_ttl=row.result_ttl,
        ttl=row.ttl,
        id=row.template_id,
        description=row.description or None,
        queue_name=row.queue,
        timeout=row.timeout,
        at_front=row.at_front,
        **capture.callbacks(),
    )
    repeat = getattr(row, 'repeat', None)
    job.meta.update(
        template_meta(
            **row.schedule_meta(),
            repeat=None if repeat is None else repeat - runs,
            misfire_grace=row.misfire_grace,
            overlap=row.overlap,
            runs=runs,
            late_from=late_from,
            record=True,
            owner=row.owner,
            version=version or row.version(),
            **row.policy_meta(),
            **_fire_time_of_one_off(row),
        )
    )
    return scheduler.jobs.give_retries(job, row.retries, row.retry_delays)


def _fire_time_of_one_off(row: ScheduleBase) -> dict[str, Any]:
    """A one-off's job is its template: its slot (``current_fire_time()`` in the job) is its scheduled time."""
    scheduled_time = getattr(row, 'scheduled_time', None)
    if row.is_periodic or scheduled_time is None:
        return {}
    return {'fire_time': scheduled_time.timestamp()}


def run_now(row: ScheduleBase) -> Job:
    """Enqueues one extra run of ``row`` at once; the next scheduled run does not move.

    The row must be saved and valid as it is in the database now (its callable allowed): ValidationError otherwise.
    """
    if row.pk is None:
        raise ValidationError('Save this schedule before running it.', code='unsaved')
    row = type(row)._base_manager.get(pk=row.pk)  # what the database holds, not what this instance was told
    row.full_clean(validate_unique=False, validate_constraints=False)
    scheduler = servers().scheduler_for(row.queue)
    run = scheduler.jobs.extra_run(template_job(scheduler, row, row.run_count), **capture.callbacks())
    enqueued = scheduler.get_queue_for_job(run).enqueue_job(run, at_front=row.at_front)
    now = datetime.now(tz=timezone.utc)
    type(row)._base_manager.filter(pk=row.pk).record_feedback(last_run=now)
    Run.objects.record_manual(row, enqueued.id, now)
    return enqueued
