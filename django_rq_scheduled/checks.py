"""System checks: configuration mistakes are reported by ``manage.py check``, never raised at import."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from .conf import DEFAULTS

APP = 'django_rq_scheduled'


@register()
def check_app_order(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    apps = list(settings.INSTALLED_APPS)
    names = [app.split('.apps.')[0] for app in apps]
    if 'django_rq' in names and APP in names and names.index('django_rq') < names.index(APP):
        return [
            Warning(
                "'django_rq' is listed before 'django_rq_scheduled' in INSTALLED_APPS, so `manage.py "
                "rqscheduler` runs django-rq's command (which needs rq-scheduler) instead of this app's.",
                hint="Move 'django_rq_scheduled' above 'django_rq' in INSTALLED_APPS.",
                id=f'{APP}.W001',
            )
        ]
    return []


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _setting_problems(config: dict[str, Any]) -> list[str]:
    problems = [f'unknown key {key!r}' for key in config if key not in DEFAULTS]
    for key in ('INTERVAL', 'LEASE_TTL'):
        if key in config and not _positive_number(config[key]):
            problems.append(f'{key} must be a number of seconds greater than zero, got {config[key]!r}')
    batch = config.get('BATCH_SIZE', 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        problems.append(f'BATCH_SIZE must be a whole number of at least 1, got {batch!r}')
    zone = config.get('TIMEZONE')
    if zone is not None:
        from .cron import CronError, get_zone

        try:
            get_zone(zone)
        except CronError:
            problems.append(f'TIMEZONE must be an IANA time zone name, got {zone!r}')
    return problems


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    config = getattr(settings, 'RQ_SCHEDULED', {})
    if not isinstance(config, dict):
        return [Error(f'RQ_SCHEDULED must be a dict, got {type(config).__name__}', id=f'{APP}.E001')]
    return [
        Error(f'RQ_SCHEDULED: {problem}', hint='See the settings reference in the docs.', id=f'{APP}.E002')
        for problem in _setting_problems(config)
    ]
