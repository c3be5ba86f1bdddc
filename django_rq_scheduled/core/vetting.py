"""What the scheduler checks of a job before it enqueues it: that its payload can be read without running any code,
and, with an allow-list set, that every callable a worker will import and call is allowed: the job's function and the
RQ callbacks its hash names (``success_callback_name`` and the others). The callbacks of run capture are ours."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import capture, payloads

Refusal = Callable[[str], 'str | None']

CALLBACK_FIELDS = (b'success_callback_name', b'failure_callback_name', b'stopped_callback_name')
"""RQ's fields of a job hash naming the callbacks its worker imports and calls (``rq.job.Job.to_dict``)."""
OUR_CALLBACKS = frozenset(str(callback.name) for callback in capture.callbacks().values())


def payload_problem(raw: Mapping[bytes, bytes], serializer: Any, refusal: Refusal | None) -> str | None:
    """Why a job hash may not be enqueued (an unreadable payload, or a callable the allow-list refuses), or None."""
    data = raw.get(b'data')
    if not data:
        return 'job hash has no payload'
    try:
        call = payloads.read_call(data, serializer)
    except payloads.PayloadError as exc:
        return f'cannot load payload: {exc}'
    if refusal is None:
        return None
    if call.bound:
        return f'payload calls {call.func_name!r} on a pickled object, which ALLOWED_CALLABLES cannot vouch for'
    if problem := refusal(call.func_name):
        return f'callable refused: {problem}'
    return callbacks_problem(raw, refusal)


def callbacks_problem(raw: Mapping[bytes, bytes], refusal: Refusal) -> str | None:
    """Why the allow-list refuses a callback the job hash names, or None (capture's callbacks are ours)."""
    for field in CALLBACK_FIELDS:
        name = raw.get(field)
        if not name:
            continue
        path = name.decode(errors='replace')
        if path not in OUR_CALLBACKS and (problem := refusal(path)):
            return f'{field.decode()} refused: {problem}'
    return None


def job_callbacks_problem(job: Any, refusal: Refusal) -> str | None:
    """``callbacks_problem`` of an unsaved RQ job (the ``Scheduler`` API's check at call time)."""
    names = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    raw = {field: name.encode() for field, name in zip(CALLBACK_FIELDS, names) if isinstance(name, str) and name}
    return callbacks_problem(raw, refusal)
