"""Scheduled, repeatable and cron jobs for Django + RQ, data-compatible with rq-scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = '0.1.0.dev0'

__all__ = ['Scheduler', '__version__', 'cron', 'current_fire_time', 'every']

if TYPE_CHECKING:
    from .core.fire_time import current_fire_time
    from .core.scheduler import Scheduler
    from .declared import cron, every


def __getattr__(name: str) -> Any:
    # Lazy so that importing the app (e.g. from INSTALLED_APPS) does not import rq and redis.
    if name == 'Scheduler':
        from .core.scheduler import Scheduler

        return Scheduler
    if name == 'current_fire_time':  # called in jobs: needs rq alone, no Django settings
        from .core.fire_time import current_fire_time

        return current_fire_time
    if name in ('cron', 'every'):  # decorators of schedules in code; they need the app's models
        from . import declared

        return getattr(declared, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
