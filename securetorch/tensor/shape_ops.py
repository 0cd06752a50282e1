"""Shape and data-movement ops: applied to both shares, no communication.

They are linear and independent of the values, so applying them share-wise is exact. Index
arguments (``__getitem__``, ``gather``, ``index_select``) must be public: a secret index is
refused with ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any

import torch

from securetorch.protocols import arithmetic as pa
from securetorch.ring import encode
from securetorch.session.context import current, current_or_none
from securetorch.tensor.registry import func_name, implements
from securetorch.tensor.shared import SharedTensor, as_fixed

_T = torch.Tensor

# The SharedTensor operand is the first argument; a second tensor argument only gives a shape.
_SHAPE_FROM_OTHER = {_T.view_as, _T.expand_as, _T.reshape_as}


def wrap(first: Any, second: Any, dtype: torch.dtype) -> Any:
    """Pair up share-wise results (a tensor, or a tuple/list of tensors) as SharedTensors."""
    if isinstance(first, torch.Tensor):
        return SharedTensor((first, second), dtype)
    if isinstance(first, (tuple, list)):
        return type(first)(wrap(a, b, dtype) for a, b in zip(first, second, strict=True))
    return first  # non-tensor results (e.g. sizes) are equal on both shares


def _no_secret(value: Any, func: Any) -> None:
    if isinstance(value, SharedTensor):
        raise NotImplementedError(f"securetorch: {func_name(func)} with a secret index or argument is not supported")
    if isinstance(value, (tuple, list)):
        for v in value:
            _no_secret(v, func)


def share_wise(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Apply ``func`` to each share of the first argument; everything else must be public.
    A reshaping of an owed product (``_REORDERING``) stays owed (``SharedTensor.viewed``)."""
    self_, rest = args[0], list(args[1:])
    if func in _SHAPE_FROM_OTHER and rest and isinstance(rest[0], SharedTensor):
        rest[0] = rest[0].shares[0]
    _no_secret(rest, func)
    _no_secret(list(kwargs.values()), func)
    if func in _REORDERING:
        viewed = self_.viewed(lambda t: func(t, *rest, **kwargs), self_.dtype)
        if viewed is not None:
            return viewed
    first = func(self_.shares[0], *rest, **kwargs)
    second = func(self_.shares[1], *rest, **kwargs)
    return wrap(first, second, self_.dtype)


# Single-result ops that keep every element (a truncation owed by the whole is owed by it).
_REORDERING = {
    _T.view, _T.reshape, torch.reshape, _T.permute, torch.permute, _T.transpose, torch.transpose,
    _T.t, torch.t, _T.contiguous, _T.view_as, _T.reshape_as, _T.squeeze, torch.squeeze,
    _T.unsqueeze, torch.unsqueeze, _T.flatten, torch.flatten, _T.unflatten, torch.unflatten,
    _T.movedim, torch.movedim, _T.swapaxes, torch.swapaxes, _T.T.__get__, _T.mT.__get__,
}  # fmt: skip

implements(
    _T.view, _T.reshape, torch.reshape, _T.permute, torch.permute, _T.transpose, torch.transpose,
    _T.t, torch.t, _T.contiguous, _T.__getitem__, _T.expand, _T.expand_as, _T.view_as, _T.reshape_as,
    _T.squeeze, torch.squeeze, _T.unsqueeze, torch.unsqueeze, _T.flatten, torch.flatten,
    _T.unflatten, torch.unflatten, _T.split, torch.split, _T.chunk, torch.chunk, _T.unbind,
    torch.unbind, _T.narrow, torch.narrow, _T.select, torch.select, _T.movedim, torch.movedim,
    _T.swapaxes, torch.swapaxes, _T.clone, torch.clone, _T.detach, torch.detach, _T.flip,
    torch.flip, _T.roll, torch.roll, _T.repeat, _T.tril, torch.tril, _T.triu, torch.triu,
    _T.diagonal, torch.diagonal, _T.gather, torch.gather, _T.index_select, torch.index_select,
    _T.T.__get__, _T.mT.__get__,
)(share_wise)  # fmt: skip


MASK_FLOOR = -(2.0**20)


def public_tensor(value: Any) -> torch.Tensor:
    """A plain (public) operand as a detached tensor, on the party's device inside a party."""
    ctx = current_or_none()
    device = None if ctx is None else ctx.device
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value if device is None or value.is_meta else value.to(device)
    return torch.as_tensor(value, device=device)


def masked_public(value: Any) -> torch.Tensor:
    """A public value with -inf / finfo.min entries (attention masks) raised to -2^20: far
    below any activation, so softmax gives them weight exactly 0, yet inside the fixed-point
    and comparison ranges."""
    return torch.clamp(public_tensor(value).to(torch.float64), min=MASK_FLOOR)


def as_pair(value: Any) -> pa.Pair:
    """A SharedTensor's pair, or a public tensor/number encoded as a trivial sharing."""
    if isinstance(value, SharedTensor):
        return value.shares
    ctx = current()
    return pa.public_shares(ctx, encode(masked_public(value), ctx.frac_bits))


def _first_shared(values: Any) -> SharedTensor:
    return next(v for v in values if isinstance(v, SharedTensor))


@implements(torch.cat, torch.concat, torch.concatenate, torch.stack)
def _join(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    tensors, rest = list(args[0]), args[1:]
    pairs = [as_pair(t) for t in tensors]
    first = func([p[0] for p in pairs], *rest, **kwargs)
    second = func([p[1] for p in pairs], *rest, **kwargs)
    return SharedTensor((first, second), _first_shared(tensors).dtype)


_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _retype(self_: SharedTensor, dtype: Any, func: Any) -> SharedTensor:
    if dtype is None or dtype == self_.dtype:
        return self_
    if dtype not in _FLOAT:
        raise NotImplementedError(
            f"securetorch: {func_name(func)} to {dtype}: a fixed-point secret cannot become an integer "
            "(no secure rounding to integers)"
        )
    if self_.dtype.is_floating_point:
        viewed = self_.viewed(None, dtype)
        if viewed is not None:
            return viewed
    return SharedTensor(as_fixed(self_).shares, dtype)


@implements(_T.to)
def _to(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    self_, dtype = args[0], kwargs.get("dtype")
    for a in [*list(args[1:]), kwargs.get("device")]:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            dtype = a.dtype
        elif a is not None and torch.device(a).type != "cpu":
            raise NotImplementedError(f"securetorch: shares live on the CPU; cannot move to {a}")
    return _retype(self_, dtype, func)


@implements(_T.float, _T.double, _T.half, _T.bfloat16)
def _cast(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dtype = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16}
    return _retype(args[0], dtype[func.__name__], func)


@implements(_T.type, _T.type_as)
def _type(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    target = args[1] if len(args) > 1 else kwargs.get("dtype")
    if target is None:
        return "securetorch.SharedTensor"
    return _retype(args[0], target.dtype if isinstance(target, torch.Tensor) else target, func)


@implements(_T.requires_grad_)
def _requires_grad(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return args[0]
