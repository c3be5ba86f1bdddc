"""The few places where the scheduler core looks at Django (settings and django-rq), never at the ORM."""

from __future__ import annotations

from typing import Any


def settings_ready() -> bool:
    try:
        from django.conf import settings
    except ImportError:
        return False
    return bool(settings.configured)


def queue_names() -> list[str] | None:
    """The queues of ``RQ_QUEUES``, or None outside a configured Django project."""
    if not settings_ready():
        return None
    from django.conf import settings

    queues = getattr(settings, 'RQ_QUEUES', None)
    return list(queues) if isinstance(queues, dict) else None


def connection_for(queue_name: str) -> Any:
    import django_rq

    return django_rq.get_connection(queue_name)


def queue_for(queue_name: str, connection: Any, **kwargs: Any) -> Any:
    """django-rq's queue (with ``DEFAULT_TIMEOUT`` and the queue's class) on our connection."""
    import django_rq

    return django_rq.get_queue(queue_name, connection=connection, **kwargs)


def default_timezone() -> str | None:
    if not settings_ready():
        return None
    from .conf import default_timezone

    return default_timezone()


def allow_list() -> Any:
    """The project's ALLOWED_CALLABLES rule, or None outside a configured Django project."""
    if not settings_ready():
        return None
    from .conf import allow_list

    return allow_list()
