"""Where rq-scheduler migrants look for the ``Scheduler``: it lives in ``core.scheduler`` (see docs/architecture)."""

from __future__ import annotations

from .core.scheduler import Scheduler

__all__ = ['Scheduler']
