"""App configuration: wires the signal receivers and the system checks, nothing else."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DjangoRQScheduledConfig(AppConfig):
    name = 'django_rq_scheduled'
    verbose_name = _('RQ scheduled jobs')
    default_auto_field = 'django.db.models.BigAutoField'

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (importing checks registers them)

        signals.connect()
