"""Queue lookup: the RQ queue of a job's origin (django-rq's inside a Django project), and Redis servers told apart."""

from __future__ import annotations

import sys
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import Serializer

from . import _django
from .moves import QueueInfo


def validated_queue_name(queue_name: object, argument: str) -> str:
    if not isinstance(queue_name, str) or not queue_name.strip():
        raise ValueError(f'{argument}: expected a queue name, got {queue_name!r}')
    known = _django.queue_names()
    if known is not None and queue_name not in known:
        raise ValueError(f'{argument}: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(known)}')
    return queue_name


def default_connection(queue_name: str) -> Redis:
    """The connection of a queue of ``RQ_QUEUES``: a ``Scheduler`` built without one, inside Django."""
    known = _django.queue_names()
    if known is None:
        raise ValueError('connection: argument is required outside a configured Django project')
    if queue_name not in known:
        raise ValueError(f'queue_name: unknown queue {queue_name!r}; RQ_QUEUES has {sorted(known)}')
    return _django.connection_for(queue_name)


def connection_identity(connection: Redis) -> tuple[Any, ...]:
    """What tells two Redis clients apart as servers: queues with equal identities share one schedule."""
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    return (
        type(pool).__name__,
        kwargs.get('host'),
        kwargs.get('port'),
        kwargs.get('path'),
        kwargs.get('db', 0),
        kwargs.get('username'),
        getattr(pool, 'service_name', None),
    )


def named_queue_class(path: object) -> type[Queue]:
    """The queue class a job's meta names (rq-scheduler's ``queue_class_name``), if this process has it already.

    The name comes from Redis: importing what it names would run import-time code of the writer's choosing, and
    calling anything but a queue class would run it. Both are refused.
    """
    module_name, _, name = path.rpartition('.') if isinstance(path, str) else ('', '', '')
    queue_class = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(queue_class, type) and issubclass(queue_class, Queue)):
        raise ValueError(f'queue_class_name: {path!r} is not a queue class this process has imported')
    return queue_class


class Queues:
    """The queue objects of one scheduler, built once per (origin, queue class name)."""

    def __init__(
        self, connection: Redis, job_class: type[Job], queue_class: type[Queue], serializer: Serializer
    ) -> None:
        self.connection = connection
        self.job_class = job_class
        self.queue_class = queue_class
        self.serializer = serializer
        self._built: dict[tuple[str, str | None], Queue] = {}
        self._infos: dict[tuple[str, str | None], QueueInfo] = {}

    def for_job(self, job: Job) -> Queue:
        return self.get(job.origin, job.meta.get('queue_class_name'))

    def get(self, origin: str, queue_class_name: str | None) -> Queue:
        cache_key = (origin, queue_class_name)
        if cache_key not in self._built:
            self._built[cache_key] = self._build(origin, queue_class_name)
        return self._built[cache_key]

    def info(self, origin: str, queue_class_name: str | None) -> QueueInfo:
        """What planning needs of a queue (asked once per due job: kept)."""
        cache_key = (origin, queue_class_name)
        if cache_key not in self._infos:
            queue = self.get(origin, queue_class_name)
            self._infos[cache_key] = QueueInfo(key=queue.key, default_timeout=getattr(queue, '_default_timeout', None))
        return self._infos[cache_key]

    def known_origins(self) -> list[str]:
        """The origins whose queue (of the default class) was built already."""
        return [origin for origin, class_name in self._infos if class_name is None]

    def _build(self, origin: str, queue_class_name: str | None) -> Queue:
        queue_class = named_queue_class(queue_class_name) if queue_class_name else self.queue_class
        known = _django.queue_names()
        if known is not None and origin in known:
            kwargs: dict[str, Any] = {'job_class': self.job_class, 'serializer': self.serializer}
            if queue_class_name:
                kwargs['queue_class'] = queue_class
            return _django.queue_for(origin, self.connection, **kwargs)
        return queue_class(origin, connection=self.connection, job_class=self.job_class, serializer=self.serializer)
