"""The ``ALERTS`` setting: each entry's notifier and keys, their defaults and limits, and the problems the system
checks report (an entry with a problem is left out by the leader). Messages never repeat a secret or a URL whole:
the checks' output may be logged, and webhook URLs often carry a token."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Problem = Callable[[Any], 'str | None']
REQUIRED = object()


def url_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f'must be an http:// or https:// URL, got {type(value).__name__}'
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return 'must be an http:// or https:// URL, got one that cannot be parsed'
    if parts.scheme not in ('http', 'https'):
        return f'must be an http:// or https:// URL, got a {parts.scheme or "relative"!r} URL'
    if not host or any(character.isspace() for character in value):
        return 'must be an http:// or https:// URL with a host, and no spaces'
    return None


def _number(low: float, high: float, *, whole: bool = False, open_low: bool = False) -> Problem:
    kind = 'a whole number' if whole else 'a number of seconds'
    above = f'above {low:g}' if open_low else f'from {low:g}'

    def problem(value: Any) -> str | None:
        valid_type = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not valid_type or not math.isfinite(value):
            return f'must be {kind} {above} to {high:g}, got {value!r}'
        if value < low or (open_low and value == low) or value > high:
            return f'must be {kind} {above} to {high:g}, got {value!r}'
        return None

    return problem


def _secret_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip()):
        return None
    return 'must be None or a non-empty string'


def _flag_problem(value: Any) -> str | None:
    return None if isinstance(value, bool) else f'must be True or False, got {value!r}'


TIMEOUT = _number(0, 300, open_low=True)
NOTIFIERS: dict[str, dict[str, tuple[Any, Problem]]] = {
    'mail_admins': {},
    'webhook': {
        'url': (REQUIRED, url_problem),
        'secret': (None, _secret_problem),
        'timeout': (5, TIMEOUT),
        'retries': (3, _number(0, 10, whole=True)),
        'backoff': (1.0, _number(0, 300)),
    },
    'heartbeat': {
        'url': (REQUIRED, url_problem),
        'every': (60, _number(1, 86_400)),
        'timeout': (5, TIMEOUT),
    },
    'sentry_crons': {'monitor_config': (True, _flag_problem)},
}
"""Each notifier's keys besides ``notifier``: (default or REQUIRED, what is wrong with a value)."""


def entry_name(index: int, entry: Any) -> str:
    notifier = entry.get('notifier') if isinstance(entry, dict) else None
    label = f' ({notifier})' if isinstance(notifier, str) and notifier in NOTIFIERS else ''
    return f"RQ_SCHEDULED['ALERTS'][{index}]{label}"


def setting_problem(alerts: Any) -> str | None:
    """What is wrong with ``ALERTS`` as a whole, or None."""
    if isinstance(alerts, (list, tuple)):
        return None
    return f"RQ_SCHEDULED['ALERTS'] must be a list of notifiers (dicts), got {type(alerts).__name__}"


def notifier_problem(index: int, entry: Any) -> str | None:
    """What is wrong with an entry's kind (not a dict, no notifier, an unknown one), or None."""
    name = entry_name(index, entry)
    if not isinstance(entry, dict):
        return f'{name} must be a dict such as {{"notifier": "mail_admins"}}, got {type(entry).__name__}'
    notifier = entry.get('notifier')
    if notifier not in NOTIFIERS:
        known = ', '.join(repr(known) for known in NOTIFIERS)
        got = repr(notifier) if isinstance(notifier, str) else type(notifier).__name__
        return f"{name}: 'notifier' must be one of {known}, got {got}"
    return None


def key_problems(index: int, entry: dict[str, Any]) -> list[str]:
    """What is wrong with the keys of an entry whose notifier is known."""
    name = entry_name(index, entry)
    keys = NOTIFIERS[entry['notifier']]
    problems = [
        f'{name}: unknown key {key!r} (known: {", ".join(sorted(keys)) or "none"})'
        for key in entry
        if key != 'notifier' and key not in keys
    ]
    for key, (default, problem) in keys.items():
        if key not in entry:
            if default is REQUIRED:
                problems.append(f'{name}: {key!r} is required')
            continue
        if message := problem(entry[key]):
            problems.append(f'{name}: {key!r} {message}')
    return problems


def parsed(alerts: Any) -> list[dict[str, Any]]:
    """The entries without a problem, with their defaults filled in (the checks report the others)."""
    if setting_problem(alerts):
        return []
    entries = []
    for index, entry in enumerate(alerts):
        if notifier_problem(index, entry) is None and not key_problems(index, entry):
            defaults = {key: default for key, (default, _) in NOTIFIERS[entry['notifier']].items()}
            entries.append({**defaults, **entry})
    return entries


SETTING_NOT_A_LIST, BAD_NOTIFIER, BAD_KEY = 'E010', 'E011', 'E012'
"""The system checks' ids (``django_rq_scheduled.E010``...) of each kind of problem."""


def problems(alerts: Any) -> list[tuple[str, str]]:
    """Every problem of ``ALERTS``, with the id of its system check."""
    if problem := setting_problem(alerts):
        return [(SETTING_NOT_A_LIST, problem)]
    found = []
    for index, entry in enumerate(alerts):
        if problem := notifier_problem(index, entry):
            found.append((BAD_NOTIFIER, problem))
        else:
            found += [(BAD_KEY, problem) for problem in key_problems(index, entry)]
    return found
