"""Schedules in words, for the admin and the command line: "every 15 minutes", "At 07:00, Monday through Friday
(Europe/Paris)"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

UNITS = (
    (604800, lambda n: ngettext('every week', 'every %(n)d weeks', n)),
    (86400, lambda n: ngettext('every day', 'every %(n)d days', n)),
    (3600, lambda n: ngettext('every hour', 'every %(n)d hours', n)),
    (60, lambda n: ngettext('every minute', 'every %(n)d minutes', n)),
    (1, lambda n: ngettext('every second', 'every %(n)d seconds', n)),
)


def describe_interval(seconds: int) -> str:
    for size, phrase in UNITS:
        if seconds % size == 0:
            count = seconds // size
            return phrase(count) % {'n': count}
    return ''


def describe_cron(cron_string: str, timezone: str | None = None) -> str:
    """Plain words for a croniter string (cron-descriptor underneath); the string itself if it cannot."""
    from cron_descriptor import ExpressionDescriptor, Options

    fields = cron_string.split()
    if len(fields) == 6:
        fields = [fields[5], *fields[:5]]  # croniter puts seconds last, cron-descriptor first
    options = Options()
    options.use_24hour_time_format = True
    options.throw_exception_on_parse_error = True
    try:
        words = ExpressionDescriptor(' '.join(fields), options).get_description()
    except Exception:
        words = cron_string
    return _('%(words)s (%(zone)s)') % {'words': words, 'zone': timezone} if timezone else words


def describe_schedule(row: Any) -> str:
    """When ``row`` runs, in words, whatever its kind: "once, at ...", "every 5 minutes, 3 times", a cron's words."""
    meta = row.schedule_meta()
    if meta['kind'] == 'cron':
        return describe_cron(meta['cron_string'], meta['timezone'])
    if meta['kind'] == 'interval':
        words = describe_interval(meta['interval'])
        if row.repeat:
            words += ngettext(', %d time', ', %d times', row.repeat) % row.repeat
        return words
    return _('once, at %(time)s') % {'time': local_time(row.scheduled_time)}


def local_time(moment: datetime | None) -> str:
    """A moment in the current time zone, to the second, with the zone's abbreviation; empty for none."""
    return f'{timezone.localtime(moment):%Y-%m-%d %H:%M:%S %Z}' if moment else ''
