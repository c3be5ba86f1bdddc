"""Admin screens: change lists, change forms, cancel confirmations, actions, and the scheduler status page."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import redis
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import router, transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import cancel
from .admin_banners import show_banners
from .admin_code import CodeRowsAdmin, from_code
from .admin_runs import FailingFilter, last_outcome, outcome_counts, outcome_strip, runs_table
from .core import keys
from .core.health import ServerHealth, leadership_from, queue_leadership_reads
from .describe import describe_schedule
from .forms import ScheduleForm
from .models import CronJob, RepeatableJob, ScheduleBase, ScheduledJob, SchedulerStatus
from .pending import unsynced_error
from .servers import servers
from .validators import queue_names, text_problem

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

SCHEDULED, PAUSED, FINISHED, MISSING, UNKNOWN = 'scheduled', 'paused', 'finished', 'missing', 'unknown'
STATUS_LABELS = {
    SCHEDULED: _('scheduled'),
    PAUSED: _('paused'),
    FINISHED: _('finished'),
    MISSING: _('missing in Redis'),
}
STATUS_COLOURS = {
    SCHEDULED: '#2e7d32', PAUSED: '#757575', FINISHED: '#1565c0', MISSING: '#c62828', UNKNOWN: '#ef6c00',
}  # fmt: skip
UNKNOWN_LABEL = _('unknown: Redis did not answer')
Presence = tuple[bool, 'str | None'] | None
"""(in the schedule?, stored version) of a row, or None when its Redis server could not be asked."""


def redis_presence(
    rows: list[ScheduleBase], health: dict[Any, ServerHealth | None] | None = None
) -> dict[Any, Presence]:
    """The presence of each row in Redis, in one pipelined round trip per Redis server.

    A server that does not answer (down, out of memory, a key of the wrong type) leaves its rows unknown: the admin
    shows the database's view and says so, it never fails because of Redis. Given ``health``, every server's
    leadership is read into it in the same round trip (None for a server that did not answer), servers without a
    row on the page included.
    """
    known = servers()
    by_server: dict[Any, list[ScheduleBase]] = defaultdict(list)
    if health is not None:
        by_server.update({identity: [] for identity in known.schedulers})
    for row in rows:
        by_server[known.queue_home.get(row.queue)].append(row)
    presence: dict[Any, Presence] = {}
    for identity, group in by_server.items():
        scheduler = known.schedulers.get(identity)
        if scheduler is None:
            presence.update({row.pk: (False, None) for row in group})
            continue
        try:
            found, reading = _presence_on(scheduler.connection, group, with_health=health is not None)
        except redis.RedisError:
            found, reading = {row.pk: None for row in group}, None
        presence.update(found)
        if health is not None:
            health[identity] = reading
    return presence


def _presence_on(
    connection: Any, rows: list[ScheduleBase], *, with_health: bool = False
) -> tuple[dict[Any, Presence], ServerHealth | None]:
    ids = [row.template_id for row in rows]
    with connection.pipeline(transaction=False) as pipe:
        if ids:
            pipe.hmget(keys.VERSIONS_KEY, ids)
            for template_id in ids:
                pipe.zscore(keys.SCHEDULED_JOBS_KEY, template_id)
        if with_health:
            queue_leadership_reads(pipe)
        replies = pipe.execute(raise_on_error=False)
    found = replies[: len(ids) + 1] if ids else []
    if error := next((reply for reply in found if isinstance(reply, Exception)), None):
        raise error
    versions, *scores = found or [[]]
    presence: dict[Any, Presence] = {
        row.pk: (score is not None, version.decode(errors='replace') if version else None)
        for row, version, score in zip(rows, versions, scores)
    }
    return presence, leadership_from(replies[len(found) :])[0] if with_health else None


def row_status(row: ScheduleBase) -> str:
    if not row.enabled:
        return PAUSED
    presence = getattr(row, '_drqs_presence', (True, None))
    if row.is_finished or (presence and keys.parse_done(presence[1])):
        return FINISHED
    if presence is None:
        return UNKNOWN
    return SCHEDULED if presence[0] else MISSING


class PresenceChangeList(ChangeList):
    """Looks up the page's rows in Redis once, so the status column costs no round trip per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        health: dict[Any, ServerHealth | None] = {}
        presence = redis_presence(rows, health)
        for row in rows:
            row._drqs_presence = presence.get(row.pk, (False, None))
        show_banners(request, self.model, health)


class QueueFilter(admin.SimpleListFilter):
    title = _('queue')
    parameter_name = 'queue'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in queue_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        # A name no row can hold (e.g. with NUL, which PostgreSQL refuses even in a query) matches no row.
        return queryset.none() if text_problem(value) else queryset.filter(queue=value)


class StatusFilter(admin.SimpleListFilter):
    title = _('status')
    parameter_name = 'status'

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(STATUS_LABELS.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        finished = queryset.model.finished_q()
        if value == PAUSED:
            return queryset.filter(enabled=False)
        if value == FINISHED:
            return queryset.filter(finished, enabled=True)
        active = queryset.filter(enabled=True).exclude(finished)
        if value not in (SCHEDULED, MISSING):
            return queryset
        # Only this choice asks Redis about every active row; the others are plain SQL.
        presence = redis_presence(list(active.only('pk', 'queue')))
        missing = [pk for pk, value in presence.items() if value is not None and not value[0] and not value[1]]
        return active.filter(pk__in=missing) if value == MISSING else active.exclude(pk__in=missing)


class ScheduleAdmin(CodeRowsAdmin, admin.ModelAdmin):
    """What the three schedule admins share."""

    form = ScheduleForm
    list_display: tuple[str, ...] = (
        'name', 'what', 'queue', 'enabled', 'schedule', 'next_run_display', 'status', 'last_outcome', 'outcomes',
        'recent_runs_strip',
    )  # fmt: skip
    list_filter = ('enabled', QueueFilter, StatusFilter, FailingFilter, 'source')
    search_fields = ('name', 'callable')
    list_per_page = 50
    show_full_result_count = False
    save_on_top = True
    actions = ('enable_selected', 'disable_selected', 'run_selected_now', 'cancel_selected')
    readonly_fields: ClassVar[tuple[str, ...]] = (
        'upcoming_runs', 'next_run', 'last_run', 'run_count', 'created', 'modified', 'last_outcome', 'outcomes',
        'recent_runs_large', 'last_runs',
    )  # fmt: skip
    when_fields: tuple[str, ...] = ()

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        origin = ('defined_in',) if from_code(obj) else ()
        return [
            (_('What to run'), {'fields': (*origin, 'name', 'callable', 'args', 'kwargs', 'queue', 'enabled')}),
            (_('When'), {'fields': (*self.when_fields, 'upcoming_runs')}),
            (_('Policies'), {'classes': ('collapse',), 'fields': self.model.policy_fields()}),
            (
                _('Options'),
                {
                    'classes': ('collapse',),
                    'fields': ('timeout', 'result_ttl', 'ttl', 'at_front', 'misfire_grace', 'overlap', 'description'),
                },
            ),
            (
                _('Runs'),
                {
                    'fields': (
                        'last_outcome',
                        'outcomes',
                        'recent_runs_large',
                        'last_runs',
                        'next_run',
                        'last_run',
                        'run_count',
                    )
                },
            ),
            (_('History'), {'fields': ('created', 'modified')}),
        ]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Runs after the row's sync, which on_commit runs first: it was registered when the row was written.
        transaction.on_commit(lambda: self._tell_if_unsynced(request, obj), using=router.db_for_write(type(obj)))

    def _tell_if_unsynced(self, request: HttpRequest, obj: Any) -> None:
        error = unsynced_error(type(obj), obj.pk)
        if error is None:
            return
        message = _(
            '“%(name)s” is saved, but Redis could not be updated (%(error)s). The scheduler brings Redis in line '
            'with the database at its next reconciliation once Redis answers; until then this schedule may not run.'
        )
        self.message_user(request, message % {'name': obj.name, 'error': type(error).__name__}, messages.WARNING)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return PresenceChangeList

    # -- columns --------------------------------------------------------------------------------------------

    @admin.display(description=_('runs'), ordering='callable')
    def what(self, obj: ScheduleBase) -> str:
        arguments = [repr(arg) for arg in obj.args] + [f'{key}={value!r}' for key, value in obj.kwargs.items()]
        summary = ', '.join(arguments)
        if len(summary) > 40:
            summary = summary[:39] + '…'
        return f'{obj.callable.rsplit(".", 1)[-1]}({summary})'

    @admin.display(description=_('schedule'))
    def schedule(self, obj: Any) -> str:
        raise NotImplementedError

    @admin.display(description=_('next run'), ordering='next_run')
    def next_run_display(self, obj: ScheduleBase) -> str:
        if not obj.next_run or not obj.enabled:
            return '—'
        local = timezone.localtime(obj.next_run)
        now = timezone.now()
        when = _('in %(delta)s') % {'delta': timeuntil(obj.next_run, now)}
        if obj.next_run <= now:
            when = _('due %(delta)s ago') % {'delta': timesince(obj.next_run, now)}
        return format_html('{}<br><small>{}</small>', local.strftime('%Y-%m-%d %H:%M:%S'), when)

    @admin.display(description=_('status'))
    def status(self, obj: ScheduleBase) -> str:
        state = row_status(obj)
        return format_html(
            '<span class="drqs-status drqs-status-{}" style="color:#fff;background:{};padding:1px 6px;'
            'border-radius:8px;white-space:nowrap">{}</span>',
            state,
            STATUS_COLOURS[state],
            STATUS_LABELS.get(state, UNKNOWN_LABEL),
        )

    @admin.display(description=_('last outcome'), ordering='last_status')
    def last_outcome(self, obj: ScheduleBase) -> str:
        return last_outcome(obj)

    @admin.display(description=_('outcomes'), ordering='-failure_count')
    def outcomes(self, obj: ScheduleBase) -> str:
        return outcome_counts(obj)

    @admin.display(description=_('recent runs'))
    def recent_runs_strip(self, obj: ScheduleBase) -> str:
        return outcome_strip(obj)

    @admin.display(description=_('recent runs'))
    def recent_runs_large(self, obj: ScheduleBase) -> str:
        return outcome_strip(obj, height=24, width=10)

    @admin.display(description=_('last runs'))
    def last_runs(self, obj: ScheduleBase) -> StrOrPromise:
        return runs_table(obj)

    @admin.display(description=_('next 5 runs'))
    def upcoming_runs(self, obj: ScheduleBase) -> StrOrPromise:
        if obj is None or not obj.pk:
            return _('Shown once saved.')
        runs = obj.next_runs(5) if obj.enabled else []
        if not runs:
            return _('None.')
        items = format_html_join(
            '', '<li>{}</li>', ((f'{timezone.localtime(run):%Y-%m-%d %H:%M:%S %Z}',) for run in runs)
        )
        return format_html('<ol class="drqs-upcoming">{}</ol>', items)

    # -- actions --------------------------------------------------------------------------------------------

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, *, enabled: bool, message: str) -> int:
        """Enables or disables exactly the rows selected, logging each.

        The rows are read before the update and then named by primary key: a change-list filter such as
        ``?enabled__exact=1`` would match none of them once they are disabled.
        """
        rows = list(queryset)
        same_rows = queryset.model._default_manager.using(queryset.db).filter(pk__in=[row.pk for row in rows])
        count = same_rows.enable() if enabled else same_rows.disable()
        for row in rows:
            self.log_change(request, row, message)
        return count

    @admin.action(description=_('Enable selected schedules'), permissions=['change'])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_enabled(request, queryset, enabled=True, message='Enabled')
        self.message_user(
            request, ngettext('%d schedule enabled.', '%d schedules enabled.', count) % count, messages.SUCCESS
        )

    @admin.action(description=_('Disable selected schedules'), permissions=['change'])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_enabled(request, queryset, enabled=False, message='Disabled')
        self.message_user(
            request, ngettext('%d schedule disabled.', '%d schedules disabled.', count) % count, messages.SUCCESS
        )

    @admin.action(description=_('Run selected schedules now'), permissions=['change'])
    def run_selected_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = 0
        for row in list(queryset):
            try:
                job = row.run_now()
            except (ValidationError, redis.RedisError) as exc:
                error = ' '.join(exc.messages) if isinstance(exc, ValidationError) else _('Redis did not answer.')
                self.message_user(
                    request, _('“%(name)s” was not run: %(error)s') % {'name': row.name, 'error': error}, messages.ERROR
                )
                continue
            self.log_change(request, row, f'Ran now as job {job.id}')
            count += 1
        if count:
            self.message_user(
                request, ngettext('%d run enqueued.', '%d runs enqueued.', count) % count, messages.SUCCESS
            )

    @admin.action(description=_('Cancel selected schedules'), permissions=['change'])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if request.POST.get('confirmed') == 'yes':
            count = self._cancel(request, queryset)
            self.message_user(
                request, ngettext('%d schedule cancelled.', '%d schedules cancelled.', count) % count, messages.SUCCESS
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            'title': _('Cancel schedules?'),
            'opts': self.opts,
            'objects': queryset,
            'action_checkbox_name': helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, 'admin/django_rq_scheduled/cancel_selected.html', context)

    def _cancel(self, request: HttpRequest, queryset: QuerySet) -> int:
        """Disables the rows (which takes them out of the schedule) and takes their runs still waiting in a queue
        out of it, recorded as canceled; the rows and their history stay. Disabling alone lets waiting runs run."""
        rows = list(queryset)
        count = self._set_enabled(request, queryset, enabled=False, message='Cancelled')
        try:
            cancel.cancel_waiting_runs(rows, using=queryset.db)
        except (redis.RedisError, ValueError):
            warning = _('Redis did not answer: runs already waiting in a queue may still run.')
            self.message_user(request, warning, messages.WARNING)
        return count

    # -- the cancel screen of one schedule ------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        extra = [
            path(
                '<path:object_id>/cancel/',
                self.admin_site.admin_view(self.cancel_view),
                name='{}_{}_cancel'.format(*info),
            )
        ]
        return extra + super().get_urls()

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        try:
            return super().get_object(request, object_id, from_field)
        except OverflowError:  # Django before 5.0 sends SQLite an id beyond its integers
            return None

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))  # None for an id the primary key cannot hold, too
        if obj is None:
            raise Http404
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        if request.method == 'POST':
            self._cancel(request, self.get_queryset(request).filter(pk=obj.pk))
            self.message_user(request, _('“%(name)s” was cancelled.') % {'name': obj.name}, messages.SUCCESS)
            info = self.opts.app_label, self.opts.model_name
            return HttpResponseRedirect(reverse('admin:{}_{}_change'.format(*info), args=[obj.pk]))
        context = {
            **self.admin_site.each_context(request),
            'title': _('Cancel “%(name)s”?') % {'name': obj.name},
            'opts': self.opts,
            'object': obj,
        }
        return TemplateResponse(request, 'admin/django_rq_scheduled/cancel.html', context)


@admin.register(ScheduledJob)
class ScheduledJobAdmin(ScheduleAdmin):
    when_fields = ('scheduled_time',)
    list_display = (*ScheduleAdmin.list_display, 'has_run')
    readonly_fields = (*ScheduleAdmin.readonly_fields, 'has_run')

    @admin.display(description=_('schedule'), ordering='scheduled_time')
    def schedule(self, obj: ScheduledJob) -> str:
        return describe_schedule(obj)


@admin.register(RepeatableJob)
class RepeatableJobAdmin(ScheduleAdmin):
    when_fields = ('scheduled_time', 'interval', 'interval_unit', 'repeat')

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # A callable: the form shows the moment it is rendered, to the second (a first run then, or before, runs
        # at once when saved).
        return {'scheduled_time': timezone.now, **super().get_changeform_initial_data(request)}

    @admin.display(description=_('schedule'))
    def schedule(self, obj: RepeatableJob) -> str:
        return describe_schedule(obj)


@admin.register(CronJob)
class CronJobAdmin(ScheduleAdmin):
    when_fields = ('cron_string', 'timezone', 'repeat')

    @admin.display(description=_('schedule'), ordering='cron_string')
    def schedule(self, obj: CronJob) -> str:
        return describe_schedule(obj)


@admin.register(SchedulerStatus)
class SchedulerStatusAdmin(admin.ModelAdmin):
    """The scheduler status page, listed in the app index like a model (it has no table)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        from .status_views import status_page

        if not self.has_view_permission(request):
            raise PermissionDenied
        return status_page(self, request)
