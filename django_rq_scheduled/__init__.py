"""Scheduled, repeatable and cron jobs for Django + RQ, data-compatible with rq-scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = '0.1.0.dev0'

__all__ = ['Scheduler', '__version__', 'cron', 'every']

if TYPE_CHECKING:
    from .core.scheduler import Scheduler
    from .declared import cron, every


def __getattr__(name: str) -> Any:
    # Lazy so that importing the app (e.g. from INSTALLED_APPS) does not import rq and redis.
    if name == 'Scheduler':
        from .core.scheduler import Scheduler

        return Scheduler
    if name in ('cron', 'every'):  # decorators of schedules in code; they need the app's models
        from . import declared

        return getattr(declared, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
