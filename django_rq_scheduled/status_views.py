"""The scheduler status page: one snapshot per Redis server, with retry/discard/cancel buttons (POST + CSRF)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _

from .models import SCHEDULE_MODELS
from .status import TEMPLATE_PREFIX, read_status

MODELS_BY_NAME = {model._meta.model_name: model for model in SCHEDULE_MODELS}


def owner_link(template_id: str) -> str | None:
    """The admin change page of the row that owns a template, without loading the row."""
    model_name, _, pk = template_id.removeprefix(TEMPLATE_PREFIX).rpartition('-')
    model = MODELS_BY_NAME.get(model_name)
    if not template_id.startswith(TEMPLATE_PREFIX) or model is None:
        return None
    try:
        return reverse(f'admin:{model._meta.app_label}_{model_name}_change', args=[pk])
    except NoReverseMatch:
        return None


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, tz=timezone.utc) if epoch else None


def _server_context(name: str, scheduler: Any) -> dict[str, Any]:
    status = read_status(scheduler.connection)
    return {
        'name': name,
        'status': status,
        'leader_heartbeat': _time(status.leader.last_heartbeat) if status.leader else None,
        'standbys': [(standby, _time(standby.last_heartbeat)) for standby in status.standbys],
        'next_due': [(member, _time(score), owner_link(member)) for member, score in status.next_due],
        'dead_letters': [(letter, _time(letter.score), _time(letter.at)) for letter in status.dead_letters],
        'unowned': [(member, _time(score)) for member, score in status.unowned],
    }


def _servers_by_name() -> dict[str, Any]:
    from .sync import _servers

    servers = _servers()
    names: dict[Any, list[str]] = {}
    for queue_name, identity in servers.queue_home.items():
        names.setdefault(identity, []).append(queue_name)
    return {', '.join(names.get(identity, [])): scheduler for identity, scheduler in servers.schedulers.items()}


def _act(request: HttpRequest, scheduler: Any) -> None:
    action, job_id = request.POST.get('action'), request.POST.get('job_id', '')
    try:
        if action == 'retry':
            done = scheduler.retry_dead_letter(job_id)
            message = _('“%(job)s” is scheduled again.') if done else _('“%(job)s” was not a dead letter.')
        elif action in ('discard', 'cancel'):
            done = scheduler.cancel(job_id)
            message = _('“%(job)s” was removed.') if done else _('“%(job)s” was not scheduled.')
        else:
            raise ValueError(f'action: unknown action {action!r}')
    except ValueError as exc:
        messages.error(request, str(exc))
        return
    messages.add_message(request, messages.SUCCESS if done else messages.WARNING, message % {'job': job_id})


def status_page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    servers = _servers_by_name()
    can_change = model_admin.has_change_permission(request)
    if request.method == 'POST':
        if not can_change:
            raise PermissionDenied
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
        'servers': [_server_context(name, scheduler) for name, scheduler in servers.items()],
        'can_change': can_change,
    }
    return TemplateResponse(request, 'admin/django_rq_scheduled/status.html', context)
