"""The run history in the admin: each schedule's last outcome and outcome strip (drawn from its summary fields, so
a change list asks nothing more of the database), its last runs on its change form, and the read-only run list
with its retry action."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .core import keys

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise
from .models import SCHEDULE_MODELS
from .runs import FAILED, FAILURE_STATUSES, Run, RunStatus
from .servers import run_now, servers

OUTCOME_COLOURS = {
    'queued': '#90a4ae', 'started': '#1565c0', 'finished': '#2e7d32', 'failed': '#c62828', 'stopped': '#ad1457',
    'canceled': '#616161', 'skipped': '#ef6c00',
}  # fmt: skip
STATUS_LABELS = dict(RunStatus.choices)
RECENT_ON_FORM = 20


def _admin_url(name: str, *args: Any) -> str | None:
    try:
        return reverse(f'admin:{name}', args=args)
    except NoReverseMatch:
        return None


def run_urls() -> Callable[[Any], str]:
    """The URL of a run's page by its id, resolved once (the admin's URLs, or '#' without them): a change list
    draws up to 30 marks a row."""
    placeholder = '0'
    url = _admin_url('django_rq_scheduled_run_change', placeholder)
    if url is None:
        return lambda run_id: '#'
    head, _, tail = url.rpartition(f'/{placeholder}/')
    return lambda run_id: f'{head}/{run_id}/{tail}'


def status_badge(status: str, title: str = '') -> SafeString:
    return format_html(
        '<span class="drqs-outcome drqs-outcome-{}" title="{}" style="color:#fff;background:{};padding:1px 6px;'
        'border-radius:8px;white-space:nowrap">{}</span>',
        status,
        title,
        OUTCOME_COLOURS.get(status, '#616161'),
        STATUS_LABELS.get(status, status),
    )


def last_outcome(row: Any) -> SafeString | str:
    """The last outcome of a schedule, with its time; a failure's error in its tooltip."""
    if not row.last_status:
        return '—'
    title = row.last_error if row.last_status in FAILURE_STATUSES else ''
    moment = row.last_failure_at if row.last_status in FAILURE_STATUSES else None
    if row.last_status == 'finished':
        moment = row.last_success_at
    when = format_html('<br><small>{}</small>', f'{timezone.localtime(moment):%Y-%m-%d %H:%M:%S}') if moment else ''
    return format_html('{}{}', status_badge(row.last_status, title), when)


def outcome_counts(row: Any) -> SafeString:
    streak = ''
    if row.consecutive_failures:
        streak = ngettext(', %d in a row', ', %d in a row', row.consecutive_failures) % row.consecutive_failures
    return format_html(
        '<span title="{}">✓ {} · ✗ {}{}</span>',
        _('successes · failures'),
        row.success_count,
        row.failure_count,
        streak,
    )


def outcome_strip(row: Any, *, height: int = 14, width: int = 5) -> SafeString | str:
    """The last runs as small marks coloured by status, oldest first, each a link to its run."""
    if not row.recent_runs:
        return '—'
    url = run_urls()
    marks = []
    for run_id, status in row.recent_runs:
        style = f'display:inline-block;width:{width}px;height:{height}px;margin-right:1px;background:'
        style += OUTCOME_COLOURS.get(status, '#616161')
        label = f'{STATUS_LABELS.get(status, status)} (run {run_id})'
        marks.append((url(run_id), label, style))
    items = format_html_join('', '<a href="{}" title="{}" style="{}"></a>', marks)
    return format_html('<span class="drqs-strip" style="white-space:nowrap">{}</span>', items)


def runs_table(row: Any) -> StrOrPromise:
    """The last runs of a schedule (one query), and a link to all of them."""
    if row is None or not row.pk:
        return _('Shown once saved.')
    runs = list(row.runs.all()[:RECENT_ON_FORM])
    url = run_urls()
    if not runs:
        return _('No run yet.')
    lines = format_html_join(
        '',
        '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        (
            (
                url(run.pk),
                run.pk,
                status_badge(run.status, run.reason),
                _local(run.fire_time) or run.get_trigger_display(),
                _seconds(run.duration),
                run.reason,
                run.error_headline,
            )
            for run in runs
        ),
    )
    all_runs = _runs_of(row)
    link = format_html('<p><a href="{}">{}</a></p>', all_runs, _('All runs of this schedule')) if all_runs else ''
    head = format_html(
        '<thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead>',
        _('run'), _('status'), _('fire time'), _('duration'), _('reason'), _('error'),
    )  # fmt: skip
    return format_html('<table class="drqs-runs">{}<tbody>{}</tbody></table>{}', head, lines, link)


def _runs_of(row: Any) -> str | None:
    changelist = _admin_url('django_rq_scheduled_run_changelist')
    if changelist is None:
        return None
    return f'{changelist}?kind={row._meta.model_name}&schedule_id={row.pk}'


def _local(moment: Any) -> str:
    return f'{timezone.localtime(moment):%Y-%m-%d %H:%M:%S}' if moment else ''


def _seconds(seconds: float | None) -> str:
    return '' if seconds is None else f'{seconds:.3f} s'


class FailingFilter(admin.SimpleListFilter):
    title = _('last outcome')
    parameter_name = 'outcome'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [('failing', _('failing (last runs failed)')), ('never', _('no outcome yet'))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == 'failing':
            return queryset.filter(consecutive_failures__gt=0)
        if self.value() == 'never':
            return queryset.filter(last_status='')
        return queryset


class KindFilter(admin.SimpleListFilter):
    """The kind of schedule a run belongs to: the three schedule models, not every content type."""

    title = _('schedule kind')
    parameter_name = 'kind'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(str(model._meta.model_name), model._meta.verbose_name) for model in SCHEDULE_MODELS]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        models = {model._meta.model_name: model for model in SCHEDULE_MODELS}
        value = self.value()
        if not value:
            return queryset
        if value not in models:
            return queryset.none()
        return queryset.filter(schedule_type=ContentType.objects.get_for_model(models[value]))


class ScheduleFilter(admin.SimpleListFilter):
    """The runs of one schedule (``?schedule_id=``, with the kind filter): linked from its change form, and shown in
    the sidebar only while it filters."""

    title = _('schedule')
    parameter_name = 'schedule_id'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        value = self.value()
        if not value:
            return []
        name = model_admin.get_queryset(request).filter(**self._lookup(value)).values_list('schedule_name', flat=True)
        return [(value, name.first() or f'#{value}')]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**self._lookup(value)) if value else queryset

    @staticmethod
    def _lookup(value: str) -> dict[str, Any]:
        # An id no column holds matches no run (rather than failing the database's conversion).
        return {'schedule_id': int(value)} if value.isdigit() and len(value) < 19 else {'pk__in': []}


def job_page_url(run: Run) -> str | None:
    """django-rq's page of the run's job, while the job is still in Redis."""
    from django_rq import settings as rq_settings

    queues = getattr(rq_settings, 'get_queues_list', None)  # django-rq 4; 3 has QUEUES_LIST
    names = [queue['name'] for queue in (queues() if queues else rq_settings.QUEUES_LIST)]
    if run.queue not in names or run.status == 'skipped':
        return None
    try:
        if not servers().scheduler_for(run.queue).connection.exists(keys.job_key(run.rq_job_id)):
            return None
    except (redis.RedisError, ValueError):
        return None
    index = names.index(run.queue)
    return _admin_url('django_rq_job_detail', index, run.rq_job_id) or _url('rq_job_detail', index, run.rq_job_id)


def _url(name: str, *args: Any) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    """The run history, read-only: what ran, when, and what became of it."""

    list_display = (
        'id',
        'schedule_name',
        'kind',
        'outcome',
        'trigger',
        'fire_time',
        'enqueued_at',
        'took',
        'error_line',
    )
    list_display_links = ('id', 'schedule_name')
    list_filter = ('status', 'trigger', KindFilter, ScheduleFilter)
    search_fields = ('schedule_name', 'error', 'rq_job_id')
    date_hierarchy = 'fire_time'
    list_per_page = 100
    show_full_result_count = False
    actions = ('retry_selected',)
    fields = (
        'schedule_link', 'outcome', 'reason', 'trigger', 'rq_job_id', 'job_page', 'queue', 'worker', 'fire_time',
        'delay', 'enqueued_at', 'started_at', 'ended_at', 'took', 'attempts', 'traceback',
    )  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related('schedule_type')

    @admin.display(description=_('kind'), ordering='schedule_type')
    def kind(self, run: Run) -> str:
        return str(run.schedule_type.model_class()._meta.verbose_name)  # type: ignore[union-attr]

    @admin.display(description=_('status'), ordering='status')
    def outcome(self, run: Run) -> SafeString:
        return status_badge(run.status, run.reason)

    @admin.display(description=_('duration'))
    def took(self, run: Run) -> str:
        return _seconds(run.duration)

    @admin.display(description=_('error'))
    def error_line(self, run: Run) -> str:
        return run.error_headline

    @admin.display(description=_('schedule'))
    def schedule_link(self, run: Run) -> SafeString | str:
        model = run.schedule_type.model_class()
        url = model and _admin_url(f'{model._meta.app_label}_{model._meta.model_name}_change', run.schedule_id)
        return format_html('<a href="{}">{}</a>', url, run.schedule_name) if url else run.schedule_name

    @admin.display(description=_('job page'))
    def job_page(self, run: Run) -> SafeString | str:
        url = job_page_url(run)
        return format_html('<a href="{}">{}</a>', url, _("django-rq's page of this job")) if url else '—'

    @admin.display(description=_('error'))
    def traceback(self, run: Run) -> SafeString | str:
        return format_html('<pre class="drqs-traceback" style="white-space:pre-wrap">{}</pre>', run.error) or '—'

    @admin.action(description=_('Retry the selected failed runs'))
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        retried = 0
        for run in queryset.filter(status=FAILED).select_related('schedule_type'):
            problem = self._retry(request, run)
            if problem:
                message = _('Run %(id)s was not retried: %(problem)s') % {'id': run.pk, 'problem': problem}
                self.message_user(request, message, messages.ERROR)
            else:
                retried += 1
        if retried:
            message = ngettext('%d run retried.', '%d runs retried.', retried) % retried
            self.message_user(request, message, messages.SUCCESS)

    def _retry(self, request: HttpRequest, run: Run) -> str | None:
        """Runs the schedule of ``run`` once more, as it is defined now; why not, if it cannot."""
        row = run.schedule
        if row is None:
            return str(_('its schedule is gone.'))
        if not _may_change(request, row):
            return str(_('you may not change its schedule.'))
        try:
            job = run_now(row)
        except ValidationError as exc:
            return ' '.join(exc.messages)
        except redis.RedisError:
            return str(_('Redis did not answer.'))
        schedule_admin = admin.ModelAdmin(type(row), self.admin_site)
        schedule_admin.log_change(request, row, f'Retried run {run.pk} as job {job.id}')
        return None


def _may_change(request: HttpRequest, row: Any) -> bool:
    opts = row._meta
    return bool(request.user.has_perm(f'{opts.app_label}.change_{opts.model_name}'))
