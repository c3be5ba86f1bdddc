"""System checks: configuration mistakes are reported by ``manage.py check``, never raised at import."""

from __future__ import annotations

import math
from typing import Any, cast

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.db.models import Field

from . import alert_config
from .conf import (
    DEFAULTS,
    MAX_ALERT_AFTER_FAILURES,
    RUN_HISTORY_LIMITS,
    health_token_problem,
    reconcile_sweep_rows_problem,
)
from .core import limits
from .core.cron import CronError, get_zone

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
    for key in ('INTERVAL', 'LEASE_TTL', 'HEALTH_MAX_LATENESS'):
        if key in config and (problem := limits.seconds_problem(config[key])):
            problems.append(f'{key}: {problem}')
    if 'RECONCILE_INTERVAL' in config and not _positive_number(config['RECONCILE_INTERVAL']):
        problems.append(
            f'RECONCILE_INTERVAL must be a number of seconds greater than zero, got {config["RECONCILE_INTERVAL"]!r}'
        )
    if 'RECONCILE_SWEEP_ROWS' in config and (problem := reconcile_sweep_rows_problem(config['RECONCILE_SWEEP_ROWS'])):
        problems.append(problem)
    grace = config.get('DEFAULT_MISFIRE_GRACE')
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace <= 0):
        problems.append(f'DEFAULT_MISFIRE_GRACE must be None or a whole number of seconds above zero, got {grace!r}')
    for key, most in RUN_HISTORY_LIMITS.items():
        value = config.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            problems.append(f'{key} must be a whole number from 0 (no history) to {most:,}, got {value!r}')
    allowed = config.get('ALLOWED_CALLABLES')
    if allowed is not None and (
        isinstance(allowed, str)
        or not isinstance(allowed, (list, tuple))
        or not all(isinstance(p, str) and p for p in allowed)
    ):
        problems.append(f'ALLOWED_CALLABLES must be None or a list of dotted-path patterns, got {allowed!r}')
    if problem := health_token_problem(config.get('HEALTH_TOKEN')):
        problems.append(problem)  # never the token itself: the check's output may be logged
    if 'BATCH_SIZE' in config and (problem := limits.batch_size_problem(config['BATCH_SIZE'])):
        problems.append(f'BATCH_SIZE: {problem}')
    if not isinstance(config.get('PRUNE_CODE_SCHEDULES', False), bool):
        problems.append(f'PRUNE_CODE_SCHEDULES must be True or False, got {config["PRUNE_CODE_SCHEDULES"]!r}')
    zone = config.get('TIMEZONE')
    if zone is not None:
        try:
            get_zone(zone)
        except CronError:
            problems.append(f'TIMEZONE must be an IANA time zone name, got {zone!r}')
    return problems + _alert_setting_problems(config)


def _alert_setting_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    after = config.get('ALERT_AFTER_FAILURES', 1)
    if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= MAX_ALERT_AFTER_FAILURES:
        problems.append(
            f'ALERT_AFTER_FAILURES must be a whole number from 1 to {MAX_ALERT_AFTER_FAILURES:,}, got {after!r}'
        )
    base = config.get('ADMIN_BASE_URL')
    if base is not None and (problem := alert_config.url_problem(base)):
        problems.append(f'ADMIN_BASE_URL {problem}')
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


@register()
def check_django_rq_installed(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    names = [app.split('.apps.')[0] for app in settings.INSTALLED_APPS]
    if 'django_rq' not in names:
        return [
            Error(
                "'django_rq' is not in INSTALLED_APPS; django_rq_scheduled uses its RQ_QUEUES connections.",
                hint="Add 'django_rq' to INSTALLED_APPS, after 'django_rq_scheduled'.",
                id=f'{APP}.E003',
            )
        ]
    return []


@register()
def check_default_queue(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    from .models import SCHEDULE_MODELS

    queues = getattr(settings, 'RQ_QUEUES', None) or {}
    default = cast(Field, SCHEDULE_MODELS[0]._meta.get_field('queue')).default
    if default not in queues:
        return [
            Warning(
                f'New schedules default to the queue {default!r}, which is not in RQ_QUEUES; they cannot be '
                'saved without choosing another queue.',
                hint=f'Add a {default!r} queue to RQ_QUEUES.',
                id=f'{APP}.W002',
            )
        ]
    return []


@register(deploy=True)
def check_allowed_callables_set(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    config = getattr(settings, 'RQ_SCHEDULED', {})
    if isinstance(config, dict) and config.get('ALLOWED_CALLABLES') is None:
        return [
            Warning(
                'RQ_SCHEDULED["ALLOWED_CALLABLES"] is not set: anyone who can edit schedules in the admin can run '
                'any importable function.',
                hint='Set it to the patterns of your task functions, e.g. ["myapp.tasks.*"].',
                id=f'{APP}.W003',
            )
        ]
    return []


@register()
def check_code_schedules(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every schedule declared in code (``SCHEDULES``, ``@cron``, ``@every``) makes a valid row."""
    from .declared import DeclarationError, declarations

    if not isinstance(getattr(settings, 'RQ_SCHEDULED', {}), dict):
        return []  # E001 says so
    try:
        declarations()
    except DeclarationError as exc:
        return [Error(str(exc), hint='See "Schedules in code" in the docs.', id=f'{APP}.E020')]
    return []


@register()
def check_alerts(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    config = getattr(settings, 'RQ_SCHEDULED', {})
    if not isinstance(config, dict):
        return []  # E001
    return [
        Error(problem, hint='See the Alerts page of the docs; the leader leaves this notifier out.', id=f'{APP}.{code}')
        for code, problem in alert_config.problems(config.get('ALERTS', []))
    ]


@register()
def check_sentry_installed(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    config = getattr(settings, 'RQ_SCHEDULED', {})
    entries = alert_config.parsed(config.get('ALERTS', [])) if isinstance(config, dict) else []
    if not any(entry['notifier'] == 'sentry_crons' for entry in entries):
        return []
    try:
        import sentry_sdk  # noqa: F401
    except ImportError:
        return [
            Warning(
                "RQ_SCHEDULED['ALERTS'] has a sentry_crons notifier, but sentry-sdk is not installed: no check-in "
                'is sent.',
                hint='pip install "django-rq-scheduled[sentry]", and call sentry_sdk.init() in your settings.',
                id=f'{APP}.W010',
            )
        ]
    return []
