"""Comparisons, selection and max/argmax on SharedTensors.

Comparisons return secret ``torch.bool`` SharedTensors (plain 0/1 integers in the ring, so
``torch.where`` on them is one exact product round). ``max``/``min`` along a dim use the
comparison tree of ``protocols.comparison``; their indices are secret ``torch.int64``.
"""

from __future__ import annotations

from typing import Any

import torch

from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.session.context import current
from securetorch.tensor.registry import func_name, implements
from securetorch.tensor.shape_ops import as_pair, public_tensor
from securetorch.tensor.shared import SharedTensor, as_fixed

_T = torch.Tensor
F = torch.nn.functional


def _fixed_pair(value: Any) -> pa.Pair:
    return as_pair(as_fixed(value) if isinstance(value, SharedTensor) else value)


def _float_dtype(*values: Any) -> torch.dtype:
    for v in values:
        if isinstance(v, SharedTensor) and v.dtype.is_floating_point:
            return v.dtype
    return torch.get_default_dtype()


def less_than(a: Any, b: Any) -> SharedTensor:
    """[a < b] as a secret bool tensor (either side may be public)."""
    pa_, pb = _fixed_pair(a), _fixed_pair(b)
    shape = torch.broadcast_shapes(pa_[0].shape, pb[0].shape)
    diff = (pa_[0].expand(shape) - pb[0].expand(shape), pa_[1].expand(shape) - pb[1].expand(shape))
    return SharedTensor(pc.less_than_zero(current(), diff), torch.bool)


def _not(bit: SharedTensor) -> SharedTensor:
    ctx = current()
    return SharedTensor(pa.add_public(ctx, pa.neg(bit.shares), 1), torch.bool)


@implements(torch.lt, torch.less, _T.lt, _T.less, _T.__lt__)
def _lt(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return less_than(args[0], args[1])


@implements(torch.gt, torch.greater, _T.gt, _T.greater, _T.__gt__)
def _gt(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return less_than(args[1], args[0])


@implements(torch.ge, torch.greater_equal, _T.ge, _T.greater_equal, _T.__ge__)
def _ge(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _not(less_than(args[0], args[1]))


@implements(torch.le, torch.less_equal, _T.le, _T.less_equal, _T.__le__)
def _le(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _not(less_than(args[1], args[0]))


def where(condition: Any, if_true: Any, if_false: Any) -> SharedTensor:
    """torch.where with a secret or public condition and secret or public branches."""
    ctx = current()
    dtype = _float_dtype(if_true, if_false)
    t, f = _fixed_pair(if_true), _fixed_pair(if_false)
    shape = torch.broadcast_shapes(
        t[0].shape,
        f[0].shape,
        public_tensor(condition).shape if not isinstance(condition, SharedTensor) else condition.shape,
    )
    t = tuple(s.expand(shape) for s in t)
    f = tuple(s.expand(shape) for s in f)
    if isinstance(condition, SharedTensor):
        if condition.dtype != torch.bool:
            raise NotImplementedError("securetorch: torch.where needs a bool condition")
        bit = tuple(s.expand(shape) for s in condition.shares)
        return SharedTensor(pc.select(ctx, bit, t, f), dtype)
    mask = public_tensor(condition).to(torch.int64).expand(shape)
    return SharedTensor(pa.add(pa.mul_public(t, mask), pa.mul_public(f, 1 - mask)), dtype)


@implements(torch.where, _T.where)
def _where(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    if len(args) != 3:
        raise NotImplementedError(f"securetorch: {func_name(func)} needs (condition, input, other)")
    if func is _T.where:  # x.where(condition, y)
        return where(args[1], args[0], args[2])
    return where(*args)


@implements(_T.masked_fill, torch.masked_fill)
def _masked_fill(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    x, mask, value = args[0], args[1], args[2] if len(args) > 2 else kwargs["value"]
    return where(mask, value, x)


def relu(x: SharedTensor) -> SharedTensor:
    """max(x, 0) = x - [x < 0] x: one comparison and one exact product round."""
    ctx = current()
    x = as_fixed(x)
    negative = pc.less_than_zero(ctx, x.shares)
    return SharedTensor(pa.sub(x.shares, pa.mul(ctx, negative, x.shares)), x.dtype)


@implements(F.relu, torch.relu, _T.relu)
def _relu(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return relu(args[0])


@implements(torch.abs, torch.absolute, _T.abs, _T.absolute, _T.__abs__)
def _abs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    ctx = current()
    x = as_fixed(args[0])
    negative = pc.less_than_zero(ctx, x.shares)
    twice = pa.mul(ctx, negative, x.shares)
    return SharedTensor(pa.sub(x.shares, pa.add(twice, twice)), x.dtype)


@implements(torch.clamp, torch.clip, _T.clamp, _T.clip)
def _clamp(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    x = as_fixed(args[0])
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = args[2] if len(args) > 2 else kwargs.get("max")
    if isinstance(low, SharedTensor) or isinstance(high, SharedTensor):
        raise NotImplementedError(f"securetorch: {func_name(func)} with secret bounds")
    out = x
    if low is not None:
        out = low + relu(out - low)
    if high is not None:
        out = high - relu(high - out)
    return out


def _reduce_max(x: SharedTensor, dim: int | None, keepdim: bool, with_index: bool, negate: bool):
    ctx = current()
    x = as_fixed(x)
    pair = pa.neg(x.shares) if negate else x.shares
    if dim is None:
        moved = tuple(s.reshape(-1) for s in pair)
    else:
        moved = tuple(s.movedim(dim, -1) for s in pair)
    values, index = pc.max_last_dim(ctx, moved, with_index)
    if negate:
        values = pa.neg(values)
    if keepdim and dim is not None:
        values = tuple(v.unsqueeze(dim) for v in values)
        index = None if index is None else tuple(i.unsqueeze(dim) for i in index)
    out_values = SharedTensor(values, x.dtype)
    out_index = None if index is None else SharedTensor(index, torch.int64)
    return out_values, out_index


def _dim_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int | None, bool]:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if isinstance(dim, (tuple, list)):
        if len(dim) != 1:
            raise NotImplementedError("securetorch: max/min over several dims at once")
        dim = dim[0]
    return dim, bool(keepdim)


def _max_like(negate: bool, result_type: Any):
    def handler(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) > 1 and isinstance(args[1], (SharedTensor, torch.Tensor)):
            a, b = args[0], args[1]  # elementwise max/min of two tensors
            take_b = less_than(a, b) if not negate else less_than(b, a)
            return where(take_b, b, a)
        dim, keepdim = _dim_args(args, kwargs)
        values, index = _reduce_max(args[0], dim, keepdim, with_index=dim is not None, negate=negate)
        if dim is None:
            return values
        return result_type((values, index))

    return handler


implements(torch.max, _T.max)(_max_like(False, torch.return_types.max))
implements(torch.min, _T.min)(_max_like(True, torch.return_types.min))
implements(torch.maximum, _T.maximum)(_max_like(False, None))
implements(torch.minimum, _T.minimum)(_max_like(True, None))


@implements(torch.amax, _T.amax)
def _amax(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dim, keepdim = _dim_args(args, kwargs)
    return _reduce_max(args[0], dim, keepdim, with_index=False, negate=False)[0]


@implements(torch.amin, _T.amin)
def _amin(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dim, keepdim = _dim_args(args, kwargs)
    return _reduce_max(args[0], dim, keepdim, with_index=False, negate=True)[0]


@implements(torch.argmax, _T.argmax)
def _argmax(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dim, keepdim = _dim_args(args, kwargs)
    return _reduce_max(args[0], dim, keepdim, with_index=True, negate=False)[1]


@implements(torch.argmin, _T.argmin)
def _argmin(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dim, keepdim = _dim_args(args, kwargs)
    return _reduce_max(args[0], dim, keepdim, with_index=True, negate=True)[1]
