"""Django Tasks as the callables of schedules: a function decorated with ``@task`` (``django.tasks``, Django 6.0 and
later, or the ``django-tasks`` backport) is scheduled by its dotted path like any function.

Each occurrence goes through the task's backend, so its result is the Task API's (``task.get_result(id)``):

- with django-tasks-rq's ``RQBackend``, a row's template is the job that backend would enqueue (the task's function
  path, meta ``backend_name``, its callbacks chained after ours: ``core.capture``), and the loop's one atomic move
  puts each occurrence on the queue; the occurrence id, the ``Run``'s ``rq_job_id``, is the ``TaskResult`` id;
- with any other backend, the template runs ``enqueue_task`` (``conf.TASK_BRIDGE``), which enqueues the task into
  its backend and returns the ``TaskResult`` id, the bridge job's result.

None of this imports django-tasks until a row names a task: without it, every callable is a plain one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from . import conf
from .core import capture, keys

TASK_MODULES = ('django.tasks.base', 'django_tasks.base')
RQ_BACKEND_CALLBACKS = capture.CHAINABLE


@functools.cache
def task_classes() -> tuple[type, ...]:
    """The Task classes importable here: Django's own (6.0 and later), the backport's, both or none."""
    classes = []
    for module_name in TASK_MODULES:
        try:
            classes.append(importlib.import_module(module_name).Task)
        except ImportError:
            continue
    return tuple(classes)


def is_task(value: Any) -> bool:
    classes = task_classes()
    return bool(classes) and isinstance(value, classes)


def task_at(path: Any) -> Any:
    """The Task at ``path``, or None when it names anything else, is refused or cannot be imported (the validation
    of ``callable`` says why). A path the allow-list refuses is never imported."""
    if not task_classes() or not isinstance(path, str) or not conf.callable_allowed(path):
        return None
    try:
        target = import_string(path)
    except Exception:  # whatever the module raises at import time
        return None
    return target if is_task(target) else None


def uses_rq_backend(task: Any) -> bool:
    """Whether ``task`` runs on django-tasks-rq's backend, whose jobs the loop can move itself."""
    try:
        from django_tasks_rq.backend import RQBackend
    except ImportError:
        return False
    return isinstance(task.get_backend(), RQBackend)


@dataclass
class Call:
    """What a row's template asks RQ to call, and the meta that goes with it."""

    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def call_of(callable_path: str, args: list[Any], kwargs: dict[str, Any]) -> Call:
    """The call of a row's template: the function itself, the task as its RQ backend enqueues it, or the bridge."""
    task = task_at(callable_path)
    if task is None:
        return Call(callable_path, args, kwargs)
    if uses_rq_backend(task):
        meta = {'backend_name': task.backend, keys.CHAINED_CALLBACKS_META_KEY: dict(RQ_BACKEND_CALLBACKS)}
        return Call(task.module_path, args, kwargs, meta)
    return Call(conf.TASK_BRIDGE, [callable_path, args, kwargs], {})


def definition_of(callable_path: Any) -> dict[str, Any]:
    """What a row's definition digest adds for a task (its backend and how it is called), so that a change of
    ``TASKS`` or a function turned into a task rewrites the template; nothing for a plain callable."""
    task = task_at(callable_path)
    if task is None:
        return {}
    try:
        how = 'rq' if uses_rq_backend(task) else 'bridge'
    except Exception as exc:  # a backend that is not configured: the row is invalid, and its digest says why
        how = f'unavailable: {exc!r}'
    return {'task': [task.backend, task.queue_name, how]}


def enqueue_task(path: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The bridge: one occurrence of a task on a backend other than RQ's, run by an RQ worker. Enqueues the task
    into its backend and returns the ``TaskResult`` id.

    It checks what it is given as the loop checks a job's callable: ``ALLOWED_CALLABLES``, and that the path still
    names a task (a deploy may have changed it since the row was saved).
    """
    conf.allow_list().check(path)
    task = import_string(path)
    if not is_task(task):
        raise TypeError(f'{path} is not a Django Task: scheduled as one, it no longer is')
    return str(task.enqueue(*args, **kwargs).id)


def row_errors(row: Any) -> dict[str, list[str]]:
    """Field errors of a row whose callable is a task: a backend that cannot run it, a queue the occurrence cannot
    use, arguments its function does not take. Empty for anything else."""
    task = task_at(row.callable)
    if task is None:
        return {}
    try:
        task.get_backend().validate_task(task)
        rq_backend = uses_rq_backend(task)
    except Exception as exc:  # an alias missing from TASKS, a backend that cannot be built or refuses the task
        return {'callable': [_('The task %(path)s cannot run: %(error)s') % {'path': row.callable, 'error': exc}]}
    errors = {}
    if rq_backend and row.queue != task.queue_name:
        errors['queue'] = [
            _('The task %(path)s runs on the RQ queue %(task_queue)s (its queue_name): choose that queue.')
            % {'path': row.callable, 'task_queue': task.queue_name}
        ]
    errors.update(_argument_errors(task, row.args, row.kwargs))
    return errors


def _argument_errors(task: Any, args: Any, kwargs: Any) -> dict[str, list[str]]:
    """Arguments the task's function cannot be called with, on the field that holds the culprit."""
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return {}  # the fields' own validation says why
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        return {}
    if task.takes_context:
        parameters = list(signature.parameters.values())[1:]  # the backend passes the context first
        signature = signature.replace(parameters=parameters)
    for name, attempt in (
        ('args', lambda: signature.bind_partial(*args)),
        ('kwargs', lambda: signature.bind_partial(*args, **kwargs)),
        ('args', lambda: signature.bind(*args, **kwargs)),
    ):
        try:
            attempt()
        except TypeError as exc:
            return {name: [_('The task %(name)s cannot take these arguments: %(error)s.') % {
                'name': task.name, 'error': exc,
            }]}  # fmt: skip
    return {}
