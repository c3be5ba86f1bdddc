"""Reading a job's payload and meta without running code from them.

RQ pickles ``(func_name, instance, args, kwargs)`` and ``meta`` by default, and unpickling runs whatever callables
the pickle names. The scheduler only needs the function's name and a few meta keys, so it reads pickles with an
unpickler that resolves no global: a name the pickle refers to becomes a ``Foreign`` stand-in that records what it
stands for and does nothing. A handful of plain data types (dates, decimals, UUIDs) are built for real so that
meta holding them can be written back unchanged; meta holding anything else is read, but never rewritten.

JSON payloads are parsed as JSON. A serializer of the project's own is trusted and called as it is.
"""

from __future__ import annotations

import io
import json
import pickle
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from rq.serializers import DefaultSerializer, JSONSerializer

# Globals a pickle may name that are built for real: constructing them runs no code of the payload's choosing.
PLAIN_GLOBALS: dict[tuple[str, str], Any] = {}
for _module, _names in {
    'datetime': ('datetime', 'date', 'time', 'timedelta', 'timezone'),
    'decimal': ('Decimal',),
    'uuid': ('UUID',),
    'collections': ('OrderedDict',),
}.items():
    for _name in _names:
        PLAIN_GLOBALS[_module, _name] = getattr(__import__(_module), _name)
PLAIN_GLOBALS['collections', 'OrderedDict'] = OrderedDict


class PayloadError(ValueError):
    """A payload or meta that cannot be read safely; the message says why."""


class Foreign:
    """Stands for an object the pickle builds from a global that was not resolved. Calling it does nothing."""

    foreign_name = ''

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __reduce__(self) -> Any:
        raise PayloadError(f'cannot write back an unresolved {self.foreign_name} object')

    def __repr__(self) -> str:
        return f'<unresolved {self.foreign_name}>'


def _foreign_class(module: str, name: str) -> type[Foreign]:
    # A class, not an instance: pickle's NEWOBJ refuses anything but a type.
    return type('Foreign', (Foreign,), {'foreign_name': f'{module}.{name}'})


class SafeUnpickler(pickle.Unpickler):
    made_stand_ins = False
    """Whether any ``Foreign`` stand-in was made: if not, what was read can be written back as it is."""

    def find_class(self, module: str, name: str) -> Any:
        found = PLAIN_GLOBALS.get((module, name))
        if found is None:
            self.made_stand_ins = True
            return _foreign_class(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError('persistent ids are not supported')


def is_pickle(serializer: Any) -> bool:
    return serializer is pickle or serializer is DefaultSerializer or getattr(serializer, 'loads', None) is pickle.loads


def is_json(serializer: Any) -> bool:
    return serializer is JSONSerializer or serializer is json


def safe_loads(raw: bytes, serializer: Any) -> Any:
    """Deserializes ``raw`` as ``serializer`` would, except that a pickle runs none of the code it names."""
    return safe_loads_telling(raw, serializer)[0]


def safe_loads_telling(raw: bytes, serializer: Any) -> tuple[Any, bool]:
    """``safe_loads``, and whether the value holds no ``Foreign`` stand-in (it can be written back as it is)."""
    try:
        if is_pickle(serializer):
            unpickler = SafeUnpickler(io.BytesIO(raw))
            return unpickler.load(), not unpickler.made_stand_ins
        if is_json(serializer):
            return json.loads(raw), True
        return serializer.loads(raw), True  # the project's own serializer is trusted: it builds real objects
    except RecursionError as exc:
        raise PayloadError('nested too deeply') from exc
    except Exception as exc:
        raise PayloadError(f'cannot deserialize: {exc!r}') from exc


def foreign_objects(value: Any) -> list[str]:
    """The names of the unresolved objects inside ``value`` (walked without recursion)."""
    found: list[str] = []
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Foreign):
            found.append(item.foreign_name)
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack += list(item)
    return found


@dataclass(frozen=True)
class Call:
    """What a job's payload asks a worker to call."""

    func_name: str
    bound: bool
    """True when the payload holds an instance: the worker calls a method of that object, not a module function."""


def read_call(data: bytes, serializer: Any) -> Call:
    """The function name of a job's ``data`` field, read without resolving any global of the payload."""
    try:
        raw = zlib.decompress(data)
    except zlib.error:
        raw = data  # RQ falls back to an uncompressed payload too
    payload = safe_loads(raw, serializer)
    if not isinstance(payload, (tuple, list)) or len(payload) != 4:
        raise PayloadError(f'payload is a {type(payload).__name__}, not (func_name, instance, args, kwargs)')
    func_name, instance = payload[0], payload[1]
    if not isinstance(func_name, str):
        raise PayloadError(f'function name is a {type(func_name).__name__}, not a string')
    return Call(func_name, bound=instance is not None)


def read_meta(raw: bytes | None, serializer: Any) -> dict[str, Any]:
    """A job's meta, read without resolving any global; unresolved objects stay as ``Foreign`` stand-ins."""
    return read_meta_telling(raw, serializer)[0]


def read_meta_telling(raw: bytes | None, serializer: Any) -> tuple[dict[str, Any], bool]:
    """``read_meta``, and whether the meta holds no stand-in (``dumps_meta`` of it, or of plain data built from
    it, need not look for one)."""
    if not raw:
        return {}, True
    meta, plain = safe_loads_telling(raw, serializer)
    if not isinstance(meta, dict):
        raise PayloadError(f'meta is a {type(meta).__name__}, not a dict')
    return meta, plain


def dumps_meta(meta: dict[str, Any], serializer: Any, *, plain: bool = False) -> bytes:
    """``meta`` serialized to be written back; PayloadError if it holds an object that was never resolved.

    ``plain``: the caller knows it holds none (it was built from meta ``read_meta_telling`` found plain).
    """
    unresolved = [] if plain else foreign_objects(meta)
    if unresolved:
        raise PayloadError(
            f'meta holds {", ".join(sorted(set(unresolved)))}, which the scheduler does not unpickle and so '
            'cannot copy; keep meta of periodic jobs to plain data'
        )
    dumped: bytes = serializer.dumps(meta)
    return dumped
