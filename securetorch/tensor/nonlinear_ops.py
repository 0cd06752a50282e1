"""Nonlinear torch functions on SharedTensors, bound to ``protocols.approx``.

GeLU (exact and tanh forms), SiLU, sigmoid, tanh, exp, reciprocal and division by a
secret, rsqrt, sqrt, small integer powers, softmax (any dim, with ``dtype``), LayerNorm and
RMSNorm. Domains and error bounds are in the protocol docstrings and docs/protocols.md.
"""

from __future__ import annotations

from typing import Any

import torch

from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.session.context import current
from securetorch.tensor.arith_ops import in_place, mul_secret
from securetorch.tensor.registry import func_name, implements
from securetorch.tensor.shape_ops import as_pair, public_tensor
from securetorch.tensor.shared import SharedTensor, as_fixed

_T = torch.Tensor
F = torch.nn.functional


def _unary(protocol: Any):
    def handler(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
        x = as_fixed(args[0])
        return SharedTensor(protocol(current(), x.shares), x.dtype)

    return handler


implements(torch.exp, _T.exp)(_unary(ap.exp))
implements(torch.sigmoid, _T.sigmoid, F.sigmoid)(_unary(ap.sigmoid))
implements(torch.tanh, _T.tanh, F.tanh)(_unary(ap.tanh))
implements(F.silu)(_unary(ap.silu))
implements(torch.reciprocal, _T.reciprocal)(_unary(ap.reciprocal))
implements(torch.rsqrt, _T.rsqrt)(_unary(ap.rsqrt))


@implements(F.gelu)
def _gelu(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    x = as_fixed(args[0])
    approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: unknown approximate={approximate!r}")
    return SharedTensor(ap.gelu(current(), x.shares, approximate), x.dtype)


def sqrt(x: SharedTensor) -> SharedTensor:
    """sqrt(x) = x * rsqrt(x) (x > 0)."""
    x = as_fixed(x)
    return mul_secret(x, SharedTensor(ap.rsqrt(current(), x.shares), x.dtype))


@implements(torch.sqrt, _T.sqrt)
def _sqrt(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return sqrt(args[0])


def divide(numerator: Any, denominator: SharedTensor) -> SharedTensor:
    """numerator / denominator for a secret denominator: numerator * reciprocal(denominator)."""
    denominator = as_fixed(denominator)
    inverse = SharedTensor(ap.reciprocal(current(), denominator.shares), denominator.dtype)
    return mul_secret(numerator, inverse)


@implements(torch.div, torch.divide, torch.true_divide, _T.div, _T.divide, _T.true_divide, _T.__truediv__)
def _div(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    if kwargs.get("rounding_mode") is not None:
        raise NotImplementedError(f"securetorch: {func_name(func)} with rounding_mode is not supported")
    if isinstance(args[1], SharedTensor):
        return divide(args[0], args[1])
    return mul_secret(args[0], 1.0 / public_tensor(args[1]).to(torch.float64))


@implements(_T.__itruediv__, _T.div_)
def _idiv(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return in_place(args[0], lambda: _div(func, args, kwargs), func)


@implements(_T.__rtruediv__)
def _rdiv(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return divide(args[1], args[0])


def power(x: SharedTensor, exponent: Any) -> SharedTensor:
    """x ** k for small integer k (repeated squaring), and k in {0.5, -0.5, -1}."""
    x = as_fixed(x)
    if isinstance(exponent, torch.Tensor):
        if exponent.numel() != 1 or isinstance(exponent, SharedTensor):
            raise NotImplementedError("securetorch: torch.pow needs a public scalar exponent")
        exponent = exponent.item()
    if exponent == 0.5:
        return sqrt(x)
    if exponent == -0.5:
        return SharedTensor(ap.rsqrt(current(), x.shares), x.dtype)
    if exponent == -1:
        return SharedTensor(ap.reciprocal(current(), x.shares), x.dtype)
    if float(exponent).is_integer() and 1 <= exponent <= 64:
        k = int(exponent)
        result, base = None, x
        while k:
            if k & 1:
                result = base if result is None else mul_secret(result, base)
            k >>= 1
            if k:
                base = mul_secret(base, base)
        return result
    raise NotImplementedError(f"securetorch: torch.pow with exponent {exponent!r} (supported: 1..64, 0.5, -0.5, -1)")


@implements(torch.pow, _T.pow, _T.__pow__)
def _pow(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    if not isinstance(args[0], SharedTensor):
        raise NotImplementedError(f"securetorch: {func_name(func)} with a secret exponent")
    return power(args[0], args[1] if len(args) > 1 else kwargs["exponent"])


def softmax(x: SharedTensor, dim: int, dtype: torch.dtype | None = None) -> SharedTensor:
    """Softmax along ``dim``: row max by the comparison tree, exp of x - max clipped below -14,
    one reciprocal per row. Public -inf/finfo.min masks added before act as -2^20 (weight 0).
    Over the last dim the division is left owed (``SharedTensor.dividing``): a product with
    V next divides after it, any other read divides first."""
    ctx = current()
    x = as_fixed(x)
    moved = tuple(s.movedim(dim, -1) for s in x.shares)
    row_max, _ = pc.max_last_dim(ctx, moved, with_index=False)
    if dim in (-1, x.dim() - 1):
        return SharedTensor.dividing(*ap.softmax_numerators(ctx, moved, row_max), dtype or x.dtype)
    out = ap.softmax_last_dim(ctx, moved, row_max)
    out = tuple(s.movedim(-1, dim) for s in out)
    return SharedTensor(out, dtype or x.dtype)


@implements(F.softmax, torch.softmax, _T.softmax)
def _softmax(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:
        raise NotImplementedError("securetorch: softmax needs an explicit dim")
    dtype = args[2] if len(args) > 2 and isinstance(args[2], torch.dtype) else kwargs.get("dtype")
    return softmax(args[0], dim, dtype)


def _optional_pair(value: Any) -> pa.Pair | None:
    if value is None:
        return None
    return as_pair(as_fixed(value) if isinstance(value, SharedTensor) else value)


def _norm(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...], eps: float, rms: bool) -> SharedTensor:
    """F.layer_norm / F.rms_norm: bind (input, normalized_shape, *names) and run the protocol."""
    bound = dict(zip(("input", "normalized_shape", *names), args, strict=False)) | kwargs
    x = as_fixed(bound["input"])
    shape = bound["normalized_shape"]
    dims = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    eps = eps if bound.get("eps") is None else bound["eps"]
    weight, bias = _optional_pair(bound.get("weight")), _optional_pair(bound.get("bias"))
    ctx, mean, owed = current(), None, x.owed
    if owed is not None and not rms:  # an owed input (a linear layer plus the residual)
        rows = pa.Owed(owed.additive.reshape(*x.shape[: x.dim() - dims], -1), owed.bits)
        settled = ap.settle_with_row_means(ctx, rows)
        if settled is not None:  # truncated with its row means: the owing tensor takes the shares
            x.settle((settled[0][0].reshape(x.shape), settled[0][1].reshape(x.shape)))
            mean = settled[1]
    return SharedTensor(ap.layer_norm_last_dims(ctx, x.shares, dims, weight, bias, eps, rms=rms, mean=mean), x.dtype)


@implements(F.layer_norm)
def _layer_norm(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _norm(args, kwargs, ("weight", "bias", "eps"), 1e-5, rms=False)


@implements(F.rms_norm)
def _rms_norm(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _norm(args, kwargs, ("weight", "eps"), 1e-6, rms=True)
