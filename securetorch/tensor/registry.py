"""Op tables: which handler a torch function dispatches to when a SharedTensor is involved.

Handlers are registered per family module (``shape_ops``, ``arith_ops``, …) with
``@implements(torch.add, torch.Tensor.add, ...)``, the way torchao's ``implements`` and
DTensor's op registry work. A handler is called as ``handler(func, args, kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Handler = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]

HANDLERS: dict[Any, Handler] = {}


def implements(*funcs: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for every torch function in ``funcs``."""

    def register(handler: Handler) -> Handler:
        for func in funcs:
            if HANDLERS.get(func, handler) is not handler:
                raise ValueError(f"{func} already has a secure handler")
            HANDLERS[func] = handler
        return handler

    return register


def func_name(func: Any) -> str:
    """A readable name for a torch function, e.g. ``torch.Tensor.__bool__`` or ``torch.sin``."""
    name = torch.overrides.resolve_name(func)
    if name:
        return name
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{qual}" if module else qual


def type_names(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return ", ".join(parts)
