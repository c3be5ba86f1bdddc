from django.contrib import admin
from django.utils import timezone

from .models import TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ['ran_at_seconds', 'task', 'message', 'job_id']
    list_filter = ['task']
    search_fields = ['message', 'job_id']
    date_hierarchy = 'ran_at'
    readonly_fields = ['task', 'ran_at', 'message', 'job_id']

    @admin.display(description='ran at', ordering='ran_at')
    def ran_at_seconds(self, run: TaskRun) -> str:
        return f'{timezone.localtime(run.ran_at):%Y-%m-%d %H:%M:%S}'  # runs are seconds apart

    def has_add_permission(self, request):
        return False
