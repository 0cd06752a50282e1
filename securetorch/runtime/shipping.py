"""Functions shipped by value for ``Cluster.run`` (admins and local clusters only).

The driver pickles the function and its public arguments with cloudpickle (the function's
module by value when the parties may not import it: a test module, a script, a notebook).
Secret arguments never enter the pickle: each ``private(t)`` becomes a ``SecretSlot`` and
its shares travel beside it as tensor frames (``Private`` itself refuses to be pickled, so
one hidden where the driver does not look raises instead of travelling in the clear). A
party unpickles a shipped call only for a driver whose role is admin: whoever can ship code
can read every secret the party holds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from securetorch.tensor.payload import Private, map_structure

_BY_VALUE_EXCLUDED = ("securetorch", "torch", "numpy", "transformers", "pytest", "_pytest")


@dataclass(frozen=True)
class SecretSlot:
    """Where the ``index``-th secret argument of a shipped call goes."""

    index: int


def pack_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, list[Private]]:
    """The pickled call, with each ``Private`` replaced by a slot; and the privates, in slot order."""
    privates: list[Private] = []
    slots: dict[int, SecretSlot] = {}

    def slot(value: Any) -> Any:
        if not isinstance(value, Private):
            return value
        if id(value) not in slots:
            slots[id(value)] = SecretSlot(len(privates))
            privates.append(value)
        return slots[id(value)]

    call = map_structure((args, kwargs), slot)
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and module.__name__ != "__main__":
        path = getattr(module, "__file__", None) or ""
        if not module.__name__.startswith(_BY_VALUE_EXCLUDED) and "site-packages" not in path and path:
            cloudpickle.register_pickle_by_value(module)
    return cloudpickle.dumps((fn, call)), privates


def unpack_call(data: bytes, secrets: list[Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The shipped function and its arguments, slots filled with ``secrets`` (party side)."""
    fn, call = cloudpickle.loads(data)

    def fill(value: Any) -> Any:
        return secrets[value.index] if isinstance(value, SecretSlot) else value

    args, kwargs = map_structure(call, fill)
    return fn, args, kwargs
