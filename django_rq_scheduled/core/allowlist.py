"""Which callables may run: the ``ALLOWED_CALLABLES`` rule, in one place for the models, the API and the loop.

A path ``<module>.<name>`` is allowed when a pattern matches it segment by segment (``*`` never crosses a dot,
so ``myapp.tasks.*`` does not match ``myapp.tasks.os.system``) and ``<name>`` is defined in ``<module>`` itself:
the object's ``__module__`` is ``<module>``, so a name the module merely imported (``from os import system``) is
refused. The pattern is checked before anything is imported: a refused path never runs import-time code.

A Django Task (a function decorated with ``@task``) is not callable itself; it counts as its function, defined where
the function is and under the function's name: ``task_function``. Paths the project itself trusts (the bridge that
enqueues a task into its backend, which checks the task it is given) pass whatever the patterns say.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any


class CallableRefused(ValueError):
    """A callable path the allow-list refuses; the message says why, ``code`` says which rule."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def split_path(path: Any) -> tuple[str, str]:
    """``(module, name)`` of a dotted path of identifiers; CallableRefused if it is not one."""
    if not isinstance(path, str):
        raise CallableRefused(f'a callable path must be a string, got {type(path).__name__}', 'invalid')
    module, _, name = path.rpartition('.')
    if not module or not all(part.isidentifier() for part in path.split('.')):
        raise CallableRefused(f'{path!r} is not a dotted path such as "myapp.tasks.send_report"', 'invalid')
    return module, name


def matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` matches ``path`` segment by segment (fnmatch within each dotted segment)."""
    parts, wanted = path.split('.'), pattern.split('.')
    return len(parts) == len(wanted) and all(fnmatchcase(part, want) for part, want in zip(parts, wanted))


def task_function(target: Any) -> Any:
    """The function of a Django Task (``django.tasks`` or the ``django-tasks`` backport), known by its shape
    (the core imports nothing of Django): not callable itself, a callable ``func``, and a ``module_path`` naming
    that function. None for anything else."""
    func = getattr(target, 'func', None)
    if callable(target) or not callable(func):
        return None
    path = f'{getattr(func, "__module__", None)}.{getattr(func, "__qualname__", None)}'
    return func if getattr(target, 'module_path', None) == path else None


def defined_in_module(path: str) -> Any:
    """The object at ``path``, imported, if its module defines it; CallableRefused otherwise."""
    module_name, name = split_path(path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error at import time, not only ImportError
        raise CallableRefused(f'cannot import {module_name}: {exc!r}', 'not_importable') from exc
    target = getattr(module, name, None)
    if target is None:
        raise CallableRefused(f'{module_name} has no attribute {name!r}', 'not_importable')
    function = task_function(target)
    if function is not None and function.__qualname__ != name:
        # Another name for a task: the worker would be sent the function's own path, which the patterns never saw.
        raise CallableRefused(f'{path} is the task {target.module_path}: use that path', 'not_defined_here')
    subject = target if function is None else function
    if not callable(subject):
        raise CallableRefused(f'{path} is not callable', 'not_callable')
    if getattr(subject, '__module__', None) != module_name:
        defined = getattr(subject, '__module__', None) or 'another module'
        raise CallableRefused(f'{path} is not defined in {module_name} (it comes from {defined})', 'not_defined_here')
    return target


class AllowList:
    """The patterns of ``ALLOWED_CALLABLES`` (None: every importable callable) and the verdicts already reached.

    Verdicts are cached per path: the loop asks once per due job. Import failures are not cached, so a module
    deployed a moment late is found on the next try.
    """

    def __init__(self, patterns: Iterable[str] | None, *, trusted: Iterable[str] = ()) -> None:
        self.patterns = None if patterns is None else tuple(patterns)
        self.trusted = frozenset(trusted)
        self._verdicts: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f'AllowList({self.patterns!r})'

    @property
    def restricts(self) -> bool:
        return self.patterns is not None

    def refusal(self, path: Any) -> str | None:
        """Why ``path`` may not run, or None if it may."""
        if isinstance(path, str) and path in self._verdicts:
            return self._verdicts[path]
        try:
            self.check(path)
        except CallableRefused as exc:
            verdict: str | None = str(exc)
            cache = exc.code != 'not_importable'
        else:
            verdict, cache = None, True
        if cache and isinstance(path, str):
            with self._lock:
                self._verdicts[path] = verdict
        return verdict

    def __call__(self, path: Any) -> bool:
        return self.refusal(path) is None

    def check(self, path: Any) -> None:
        """Raises CallableRefused unless ``path`` may run; imports its module only once a pattern matched."""
        split_path(path)
        if self.patterns is None or path in self.trusted:
            return
        if not any(matches(path, pattern) for pattern in self.patterns):
            raise CallableRefused(f'{path} is not allowed by ALLOWED_CALLABLES', 'not_allowed')
        defined_in_module(path)
