"""The banners above the schedule change lists: a Redis server that does not answer, one where no scheduler leads,
one where scheduling is paused (by whom, since when, why), and the schedules whose last runs failed. They cost one
COUNT query, and the Redis reads ride on the round trip the page makes anyway for its status column
(``admin.redis_presence``)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from .core.health import ServerHealth
from .health import stale_after
from .pausing import describe_state
from .servers import servers

BANNER = 'drqs-banner'
"""The CSS class of the banners among the page's messages (``<li class="error drqs-banner">``)."""
FAILING_QUERY = '?outcome=failing&enabled__exact=1'
"""The change list's own filters: the "last outcome: failing" filter, on enabled rows, as the banner counts them."""


def show_banners(request: HttpRequest, model: Any, health: dict[Any, ServerHealth | None]) -> None:
    known = servers()
    for identity, reading in health.items():
        name = known.name_of(identity)
        if reading is None:
            message = _(
                'Redis unreachable on %(server)s: Redis did not answer, so the status of its schedules is unknown.'
            )
            messages.error(request, message % {'server': name}, extra_tags=BANNER)
        elif problem := leader_problem(reading):
            messages.error(request, problem % {'server': name, 'leader': reading.leader}, extra_tags=BANNER)
        if reading is not None and reading.pause.any:
            message = _('Scheduling paused on %(server)s: %(paused)s.')
            paused = describe_state(reading.pause)
            messages.warning(request, message % {'server': name, 'paused': paused}, extra_tags=BANNER)
    failing = model._default_manager.failing().count()
    if failing:
        text = ngettext(
            '%(count)d schedule failing: its last run failed.',
            '%(count)d schedules failing: their last runs failed.',
            failing,
        )
        messages.warning(
            request, format_html('<a href="{}">{}</a>', FAILING_QUERY, text % {'count': failing}), extra_tags=BANNER
        )


def leader_problem(reading: ServerHealth) -> str | None:
    if reading.lock_held_by_others:
        return _(
            'No scheduler leads on %(server)s: the lock is held by another program (rq-scheduler?), not by '
            'manage.py rqscheduler.'
        )
    if reading.leader is None:
        return _(
            'No scheduler leads on %(server)s: due jobs are not moved to their queues. Start manage.py rqscheduler.'
        )
    age = reading.heartbeat_age
    if age is None or abs(age) > stale_after(reading):
        return _('The scheduler leading on %(server)s (%(leader)s) has stopped beating: it may be stuck.')
    return None
