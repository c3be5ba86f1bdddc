"""The scheduler status page: one snapshot per Redis server, with retry/discard/cancel buttons and the pause of its
queues (pause/resume, each recorded as a LogEntry), all POST + CSRF, for users who may change the status."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.text import Truncator, capfirst
from django.utils.translation import gettext as _

from .core import keys
from .core.pause import read_pause
from .core.scores import utc_datetime
from .core.status import Member, Status, read_status
from .models import ScheduleBase
from .owners import rows_owning
from .pausing import ServerPause, UnknownQueue, pause_scheduling, resume_scheduling, scope_name
from .servers import servers

logger = logging.getLogger(__name__)

SHOWN_ID_LENGTH = 80


@dataclass(frozen=True)
class Listed:
    """An entry of the next-due or unowned list: the member, when it is due, and the row that owns it, if any."""

    member: Member
    due: str
    row: ScheduleBase | None = None
    link: str | None = None
    """The row's change page, for a user who may view the row."""

    @property
    def kind(self) -> str:
        return str(self.row._meta.verbose_name) if self.row else ''


def _change_link(request: HttpRequest, row: ScheduleBase) -> str | None:
    opts = row._meta
    may_view = any(
        request.user.has_perm(f'{opts.app_label}.{get_permission_codename(action, opts)}')
        for action in ('view', 'change')
    )
    try:
        return reverse(f'admin:{opts.app_label}_{opts.model_name}_change', args=[row.pk]) if may_view else None
    except NoReverseMatch:  # the model is not in this admin site
        return None


def _listed(request: HttpRequest, entries: list[tuple[Member, float]], rows: dict[str, ScheduleBase]) -> list[Listed]:
    listed = []
    for member, score in entries:
        row = rows.get(member.job_id or '')
        listed.append(Listed(member, _when(score), row, _change_link(request, row) if row else None))
    return listed


def _owning_rows(status: Status) -> dict[str, ScheduleBase]:
    """The rows owning the entries the page lists, loaded for both lists at once: one query per model."""
    entries = [*status.next_due, *status.scanned]
    return rows_owning({member.job_id for member, _ in entries if member.job_id}, 'name')


def _when(epoch: float | None) -> str:
    """A time as the page shows it: in the current time zone, as the admin's change lists show theirs.

    The zone's abbreviation follows each time, so that the hour repeated when daylight saving time ends reads
    "02:30:00 CEST", then "02:30:00 CET". A number no date can hold (inf, 1e15) is shown as that number.
    """
    if epoch is None:
        return '—'
    try:
        return timezone.localtime(utc_datetime(epoch)).strftime('%Y-%m-%d %H:%M:%S %Z')
    except (ValueError, OverflowError, OSError):
        return f'{epoch:g}'


def _server_context(request: HttpRequest, name: str, scheduler: Any) -> dict[str, Any]:
    try:
        status = read_status(scheduler.connection)
        pause = _pause_context(scheduler)
    except redis.RedisError as exc:
        # The error's text names the host and port: it goes to the log, and only its kind onto the page.
        logger.warning('Status page: cannot read the Redis server of queues %s: %s', name, exc)
        return {'name': name, 'error': type(exc).__name__}
    rows = _owning_rows(status)
    return {
        'name': name,
        'status': status,
        'pause': pause,
        'leader_heartbeat': _when(status.leader.last_heartbeat) if status.leader else '—',
        'standbys': [(standby, _when(standby.last_heartbeat)) for standby in status.standbys],
        'next_due': _listed(request, status.next_due, rows),
        'dead_letters': [(letter, _when(letter.score), _when(letter.at)) for letter in status.dead_letters],
        'unowned': _listed(request, [(m, score) for m, score in status.scanned if m.job_id not in rows], rows),
    }


def _pause_context(scheduler: Any) -> dict[str, Any]:
    state = read_pause(scheduler.connection)
    shown = [(_('every queue'), state.everything)] if state.everything else []
    shown += [(queue, record) for queue, record in sorted(state.queues.items())]
    return {
        'state': state,
        'paused': [(scope, record, _when(record.at)) for scope, record in shown],
        'queues': servers().queues_on(scheduler.connection),
    }


def _servers_by_name() -> dict[str, Any]:
    known = servers()
    return {known.name_of(identity): scheduler for identity, scheduler in known.schedulers.items()}


def _posted_member(post: QueryDict) -> Member | None:
    """The member a button names: hex-encoded (any bytes, as the page's buttons send it), else a plain job id."""
    if post.get('member'):
        try:
            return Member(bytes.fromhex(str(post['member'])))
        except ValueError:
            return None
    job_id = post.get('job_id', '')
    return Member(job_id.encode()) if keys.is_job_id(job_id) else None


def _retry(request: HttpRequest, scheduler: Any, member: Member, shown: str) -> None:
    if member.job_id is None:
        message = _('“%(job)s” is not a valid RQ job id: it cannot be retried, only discarded.')
        messages.error(request, message % {'job': shown})
    else:
        try:
            retried = scheduler.retry_dead_letter(member.job_id)
        except ValueError as exc:  # the allow-list refuses what it calls: it would only be dead-lettered again
            messages.error(request, _('“%(job)s” is not scheduled again: %(why)s') % {'job': shown, 'why': exc})
            return
        if retried:
            messages.success(request, _('“%(job)s” is scheduled again.') % {'job': shown})
        else:
            messages.warning(request, _('“%(job)s” was not a dead letter.') % {'job': shown})


def _remove(request: HttpRequest, scheduler: Any, member: Member, shown: str) -> None:
    if scheduler.cancel_member(member.raw):
        messages.success(request, _('“%(job)s” was removed.') % {'job': shown})
    else:
        messages.warning(request, _('“%(job)s” was neither scheduled nor a dead letter.') % {'job': shown})


ACTIONS = {'retry': _retry, 'discard': _remove, 'cancel': _remove}


def _act(request: HttpRequest, scheduler: Any) -> None:
    act = ACTIONS.get(request.POST.get('action', ''))
    member = _posted_member(request.POST)
    if act is None:
        messages.error(request, _('Unknown action.'))
    elif member is None:
        messages.error(request, _('No job was given, or its id is not valid.'))
    else:
        try:
            act(request, scheduler, member, Truncator(member.text).chars(SHOWN_ID_LENGTH))
        except redis.RedisError as exc:
            logger.warning('Status page: the %s button failed: %s', request.POST['action'], exc)
            messages.error(request, _('Redis failed (%(error)s).') % {'error': type(exc).__name__})


def _pause_or_resume(model_admin: Any, request: HttpRequest, server: str) -> None:
    """The pause and resume buttons of one server: every queue of it ('' posted) or one queue."""
    queue = request.POST.get('queue', '')
    queues = [queue] if queue else None
    try:
        if request.POST['action'] == 'pause':
            by = request.user.get_username()
            results = pause_scheduling(queues, by=by, reason=request.POST.get('reason', '').strip(), server=server)
        else:
            results = resume_scheduling(queues, server=server)
    except (UnknownQueue, ValueError) as exc:
        messages.error(request, str(exc))
        return
    for result in results:
        _report_pause(model_admin, request, result, request.POST['action'])


def _log(request: HttpRequest, model: Any, message: str) -> None:
    """A LogEntry of the status "object": it has no row, so no object id (and no link to a change page)."""
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    LogEntry.objects.create(
        user_id=request.user.pk,
        content_type=content_type,
        object_id=None,
        object_repr=str(model._meta.verbose_name),
        action_flag=CHANGE,
        change_message=message,
    )


def _report_pause(model_admin: Any, request: HttpRequest, result: ServerPause, action: str) -> None:
    """A message per scope, and a LogEntry for each that changed (a new reason for a pause counts)."""
    if result.error:
        logger.warning('Status page: the %s button failed: %s', action, result.error)
        messages.error(request, _('Redis failed (%(error)s).') % {'error': result.error})
        return
    reason = request.POST.get('reason', '').strip()
    for scope, changed in result.changed.items():
        names = {'scope': scope_name(scope), 'server': result.name, 'reason': reason}
        if action == 'resume':
            text = _('Resumed %(scope)s on Redis of queues %(server)s') if changed else None
        elif changed:
            text = _('Paused %(scope)s on Redis of queues %(server)s') + (': %(reason)s' if reason else '')
        else:
            text = (
                _('Paused %(scope)s on Redis of queues %(server)s already; reason now: %(reason)s') if reason else None
            )
        if text is None:
            unchanged = (
                _('%(scope)s was not paused on its own.') if action == 'resume' else _('%(scope)s was paused already.')
            )
            messages.warning(request, capfirst(unchanged % names))
            continue
        _log(request, model_admin.model, text % names)
        messages.success(request, text % names + '.')
    if action == 'resume' and result.state and result.state.everything:
        messages.warning(
            request, _('Every queue is still paused on Redis of queues %(server)s.') % {'server': result.name}
        )


def status_page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    servers = _servers_by_name()
    can_change = model_admin.has_change_permission(request)
    if request.method == 'POST':
        if not can_change:
            raise PermissionDenied
        if request.POST.get('action') in ('pause', 'resume'):
            _pause_or_resume(model_admin, request, request.POST.get('server', ''))
            return HttpResponseRedirect(request.path)
        scheduler = servers.get(request.POST.get('server', ''))
        if scheduler is None:
            messages.error(request, _('Unknown Redis server.'))
        else:
            _act(request, scheduler)
        return HttpResponseRedirect(request.path)
    context = {
        **model_admin.admin_site.each_context(request),
        'title': _('Scheduler status'),
        'opts': model_admin.opts,
        'servers': [_server_context(request, name, scheduler) for name, scheduler in servers.items()],
        'time_zone': timezone.get_current_timezone_name(),
        'can_change': can_change,
    }
    return TemplateResponse(request, 'admin/django_rq_scheduled/status.html', context)
