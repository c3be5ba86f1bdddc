from django.apps import AppConfig


class CodeAppConfig(AppConfig):
    """An installed app whose tasks module declares schedules with the decorators (tests/test_code_schedules.py)."""

    name = 'tests.code_app'
    label = 'code_app'
