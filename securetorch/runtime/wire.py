"""What travels between the driver and the parties (control channel, not party-to-party).

The driver ships functions by value (cloudpickle), so functions defined in a notebook, a
script or a test module run inside the parties. Secret inputs travel as one party's share
pair (``SharePayload``); secret outputs come back the same way and only the driver
reconstructs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import torch

_BY_VALUE_EXCLUDED = ("securetorch", "torch", "numpy", "transformers", "pytest", "_pytest")


@dataclass
class SeededShare:
    """A share that is a PRG stream: the 16-byte key and the shape (expanded by the party)."""

    key: bytes
    shape: tuple[int, ...]

    def expand(self) -> torch.Tensor:
        from securetorch.prg import AesPrg

        return AesPrg(self.key).int64(self.shape)


@dataclass
class SharePayload:
    """One party's pair of shares for one secret (tensors or PRG seeds), with the logical dtype."""

    first: torch.Tensor | SeededShare
    second: torch.Tensor | SeededShare
    dtype: torch.dtype

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(s.expand() if isinstance(s, SeededShare) else s for s in (self.first, self.second))  # type: ignore[return-value]


def map_structure(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every leaf of nested tuples, lists and dicts (named tuples kept)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_structure(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_structure(v, fn) for v in value)
    if isinstance(value, dict):
        items = {k: map_structure(v, fn) for k, v in value.items()}
        try:
            return type(value)(**items)  # dataclass-like mappings (HF ModelOutput)
        except TypeError:
            return type(value)(items)
    return fn(value)


def dumps_callable(fn: Callable[..., Any], payload: Any) -> bytes:
    """Pickle ``(fn, payload)`` with fn's defining module by value when the parties may not
    be able to import it (a test module, a script, a notebook)."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and module.__name__ != "__main__":
        path = getattr(module, "__file__", None) or ""
        if not module.__name__.startswith(_BY_VALUE_EXCLUDED) and "site-packages" not in path and path:
            cloudpickle.register_pickle_by_value(module)
    return cloudpickle.dumps((fn, payload))


def dumps(value: Any) -> bytes:
    return cloudpickle.dumps(value)


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)
