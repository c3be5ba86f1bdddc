"""The bridge: the one module of the core that looks at Django (its settings and django-rq), never at the ORM.

Every function is safe outside a configured Django project (a plain RQ project using the ``Scheduler``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from rq.queue import Queue

    from .allowlist import AllowList


def settings_ready() -> bool:
    from django.conf import settings

    return bool(settings.configured)


def queue_names() -> list[str] | None:
    """The queues of ``RQ_QUEUES``, or None outside a configured Django project."""
    if not settings_ready():
        return None
    from django.conf import settings

    queues = getattr(settings, 'RQ_QUEUES', None)
    return list(queues) if isinstance(queues, dict) else None


def connection_for(queue_name: str) -> Redis:
    import django_rq

    connection: Redis = django_rq.get_connection(queue_name)
    return connection


def queue_for(queue_name: str, connection: Redis, **kwargs: Any) -> Queue:
    """django-rq's queue (with ``DEFAULT_TIMEOUT`` and the queue's class) on our connection."""
    import django_rq

    queue: Queue = django_rq.get_queue(queue_name, connection=connection, **kwargs)
    return queue


def default_timezone() -> str | None:
    if not settings_ready():
        return None
    from ..conf import default_timezone

    return default_timezone()


def allow_list() -> AllowList | None:
    """The project's ALLOWED_CALLABLES rule, or None outside a configured Django project."""
    if not settings_ready():
        return None
    from ..conf import allow_list

    return allow_list()


def signing_key() -> str | None:
    """The key of the marks of fast one-off moves (``fast_moves``), from the project's SECRET_KEY; None outside
    a configured Django project."""
    if not settings_ready():
        return None
    from ..conf import fast_move_key

    return fast_move_key()
