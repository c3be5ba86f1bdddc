"""The admin of rows declared in code (``source='code'``): shown as such, read-only but for ``enabled``, and not
deleted while the code still declares them (the next sync would make them again)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from .choices import FROM_CODE
from .models import ScheduleBase

if TYPE_CHECKING:
    _Admin = admin.ModelAdmin
else:
    _Admin = object


def from_code(obj: Any) -> bool:
    return obj is not None and obj.source == FROM_CODE


class CodeRowsAdmin(_Admin):
    """A mixin of the schedule admins."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if not from_code(obj):
            return self.readonly_fields
        # The code is the source of such a row: a change made here would be undone by the next deploy. Only a
        # pause, which a sync keeps until the code changes the schedule.
        editable = [name for _title, options in self.get_fieldsets(request, obj) for name in options['fields']]
        return (*self.readonly_fields, 'defined_in', *(name for name in editable if name != 'enabled'))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if from_code(obj) and obj.code_version:
            return False  # still declared in code: the next sync would make it again
        return super().has_delete_permission(request, obj)

    @admin.display(description=_('defined in'))
    def defined_in(self, obj: ScheduleBase) -> str:
        if obj.code_version:
            return str(_('code: only “enabled” can be changed here (a pause kept until the code changes it)'))
        return str(_('code, and removed from it since: disabled, kept for its history'))
