"""Admin forms: a queue select built from RQ_QUEUES per request, and a callable field with suggestions."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from django import forms
from django.apps import apps
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput, JSONString
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .conf import get_setting
from .validators import json_problem, queue_names

SUGGESTION_LIMIT = 200


class CallableInput(forms.TextInput):
    """A text input with an HTML ``<datalist>`` of suggested dotted paths."""

    def __init__(self, suggestions: list[str], attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={'size': 60, **(attrs or {})})
        self.suggestions = suggestions

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> SafeString:
        list_id = f'{(attrs or {}).get("id", name)}_suggestions'
        attrs = {**(attrs or {}), 'list': list_id, 'autocomplete': 'off'}
        options = format_html_join('', '<option value="{}"></option>', ((s,) for s in self.suggestions))
        return format_html(
            '{}<datalist id="{}">{}</datalist>', super().render(name, value, attrs, renderer), list_id, options
        )


class ArgumentsField(forms.JSONField):
    """A JSON text field whose every unusable input is an error on the field, never a crash of the page.

    Python's parser raises RecursionError on deeply nested input and accepts NaN, Infinity and 1e400 (which no
    JSON column or encoder takes back); Django's field lets all of them through.
    """

    widget = forms.Textarea(attrs={'rows': 2, 'cols': 60, 'class': 'vLargeTextField'})

    def to_python(self, value: Any) -> Any:
        if self.disabled or not isinstance(value, str) or value in self.empty_values:
            return super().to_python(value)
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError, too many digits, too deep
            raise ValidationError(self.error_messages['invalid'], code='invalid', params={'value': value}) from None
        problem = json_problem(parsed)
        if problem:
            raise ValidationError(problem, code='invalid')
        return JSONString(parsed) if isinstance(parsed, str) else parsed

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or not isinstance(data, str):
            return super().bound_data(data, initial)
        try:
            return self.to_python(data)
        except ValidationError:
            return InvalidJSONInput(data)  # shown again exactly as typed

    def prepare_value(self, value: Any) -> Any:
        text = super().prepare_value(value)
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate stored before it was refused: show it escaped
            return json.dumps(value, cls=self.encoder)
        return text


def job_decorated_callables() -> list[str]:
    """Functions decorated with django-rq's ``@job`` in the installed apps' ``tasks`` modules."""
    found = []
    for config in apps.get_app_configs():
        module_name = f'{config.name}.tasks'
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        for attribute, value in vars(module).items():
            if callable(value) and hasattr(value, 'delay') and hasattr(value, 'enqueue'):
                found.append(f'{module_name}.{attribute}')
    return found


def used_callables() -> list[str]:
    from .models import SCHEDULE_MODELS

    used: set[str] = set()
    for model in SCHEDULE_MODELS:
        used.update(model._base_manager.values_list('callable', flat=True).distinct()[:SUGGESTION_LIMIT])
    return sorted(used)


def callable_suggestions() -> list[str]:
    patterns = list(get_setting('ALLOWED_CALLABLES') or [])
    suggestions = dict.fromkeys([*patterns, *job_decorated_callables(), *used_callables()])
    return list(suggestions)[:SUGGESTION_LIMIT]


class ScheduleForm(forms.ModelForm):
    """The change form of every schedule model."""

    class Meta:
        field_classes = {'args': ArgumentsField, 'kwargs': ArgumentsField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if 'queue' in self.fields:
            field = self.fields['queue']
            self.fields['queue'] = forms.ChoiceField(
                choices=[(name, name) for name in queue_names()],
                label=field.label,
                help_text=field.help_text,
                initial=field.initial,
            )
        if 'callable' in self.fields:
            self.fields['callable'].widget = CallableInput(callable_suggestions())
