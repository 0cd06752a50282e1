"""Arithmetic ops on SharedTensors: + - * @, matmul family, linear, sum, mean, division by a
public value. A plain tensor or number mixed in is public (local work, no communication).

Fixed-point rules (f fractional bits):
* secret x secret: ``mul_fixed``, or ``matmul_local`` with its truncation owed
  (``SharedTensor.owing``) (one truncation: 2 rounds and 41 B per output element, or 3
  rounds and 26.5 B from 2^17 elements);
* secret x public integer values (integer dtype, or floats that are small integers): exact
  ring product, no truncation, no communication;
* secret integer (bool mask, one-hot) x secret fixed point: exact ring product, 1 round,
  24 B per output element;
* secret x public float: the public factor is encoded with e >= f fractional bits, more
  when it is small (its largest magnitude keeps 24 significant bits, so x * 0.001 is as
  precise as x * 1), e = f for matmul; then truncated by e (one truncation).
  Division by a public p multiplies by 1/p this way.
* secret integer (one-hot) @ public float: the public operand encoded with f bits is the
  fixed-point result: exact, local, no truncation (a one-hot times a public embedding table).

A public matmul operand (a public weight, possibly in bf16) is widened to the ring
``PUBLIC_BLOCK_ELEMENTS`` elements at a time, in blocks that are stretches of its memory
(rows of a row-major matrix, columns of a transposed one: ``_public_blocks``), so a compact
weight is never copied whole at 8 bytes an element.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.ring import COMPACT_FLOATS, encode, encode_into, ring_matmul
from securetorch.session.context import current
from securetorch.tensor.registry import func_name, implements
from securetorch.tensor.shape_ops import masked_public, public_tensor, share_wise
from securetorch.tensor.shared import SharedTensor, as_fixed, settle

_T = torch.Tensor
F = torch.nn.functional
_EXACT_INTEGER_LIMIT = 2**20
_PUBLIC_FACTOR_BITS = 24
PUBLIC_BLOCK_ELEMENTS = 1 << 21


def _dtype_of(*values: Any) -> torch.dtype:
    return next(v.dtype for v in values if isinstance(v, SharedTensor))


def _is_exact_integer(p: torch.Tensor) -> bool:
    if not p.is_floating_point():
        return True
    return bool(torch.all(p == torch.round(p))) and bool(torch.all(p.abs() < _EXACT_INTEGER_LIMIT))


def mul_by_public(x: pa.Pair, p: Any) -> pa.Pair:
    """x * p for a public p (tensor or number), with the precision rules of this module."""
    ctx = current()
    p = public_tensor(p)
    if _is_exact_integer(p):
        return pa.mul_public(x, p.to(torch.int64))
    largest = float(p.abs().max()) if p.numel() else 0.0
    if largest == 0.0:
        return pa.mul_public(x, torch.zeros_like(p, dtype=torch.int64))
    bits = min(62, max(ctx.frac_bits, _PUBLIC_FACTOR_BITS - 1 - math.ceil(math.log2(largest))))
    scaled = pa.mul_public(x, encode(p, bits))
    return pa.truncate(ctx, scaled, bits) if bits else scaled


def _fixed(value: Any) -> Any:
    return as_fixed(value) if isinstance(value, SharedTensor) else value


def _add(a: Any, b: Any) -> SharedTensor:
    a, b = _fixed(a), _fixed(b)
    ctx, dtype = current(), _dtype_of(a, b)
    owed = _owed_sum(a, b, dtype)
    if owed is not None:
        return owed
    if isinstance(a, SharedTensor) and isinstance(b, SharedTensor):
        return SharedTensor(pa.add(a.shares, b.shares), dtype)
    shared, public = (a, b) if isinstance(a, SharedTensor) else (b, a)
    return SharedTensor(pa.add_public(ctx, shared.shares, encode(masked_public(public), ctx.frac_bits)), dtype)


def _owed_sum(a: Any, b: Any, dtype: torch.dtype) -> SharedTensor | None:
    """a + b still owed where a side is an owed product (``SharedTensor.owed``, z at scale
    f + bits): the other side joins z at that scale, exactly (floor((z + y 2^bits) / 2^bits)
    = floor(z / 2^bits) + y), so the sum takes the product's one truncation, wherever it
    runs. A secret side joins by its first share (P_i's y_i: 3-out-of-3 shares of y) or,
    owed too, by its z at the same bits; a public one by P_0 alone, if it lies within the
    truncation's range with room for the product (|y| 2^(f + bits) < 2^61). None otherwise."""
    mine = a.owed if isinstance(a, SharedTensor) else None
    theirs = b.owed if isinstance(b, SharedTensor) else None
    if mine is not None:
        owed, other = mine, b
    elif theirs is not None:
        owed, other, theirs = theirs, a, None
    else:
        return None
    if isinstance(other, SharedTensor):
        if theirs is not None:
            if theirs.bits != owed.bits:
                return None
            term = theirs.additive
        else:
            term = other.shares[0] << owed.bits
    else:
        ctx = current()
        public = masked_public(other)
        largest = float(public.abs().max()) if public.numel() else 0.0
        if largest * 2.0 ** (ctx.frac_bits + owed.bits) >= 2.0**61:
            return None
        encoded = encode(public, ctx.frac_bits) << owed.bits
        term = encoded if ctx.rank == 0 else torch.zeros_like(encoded)
    return SharedTensor.owing(owed.additive + term, owed.bits, dtype)


def _neg(a: SharedTensor) -> SharedTensor:
    a = as_fixed(a)
    return SharedTensor(pa.neg(a.shares), a.dtype)


def _scaled(value: Any, alpha: Any) -> Any:
    if alpha == 1:
        return value
    if isinstance(value, SharedTensor):
        return SharedTensor(mul_by_public(value.shares, alpha), value.dtype)
    return public_tensor(value) * alpha


def mul_secret(a: Any, b: Any) -> SharedTensor:
    """a * b where at least one side is a SharedTensor (the other may be public)."""
    return _mul(a, b)


def _integer_secret(value: Any) -> bool:
    return isinstance(value, SharedTensor) and not value.dtype.is_floating_point


def _power_of_two(value: Any) -> int | None:
    """e if a public scalar ``value`` is exactly 2^e, else None."""
    if isinstance(value, torch.Tensor):
        if isinstance(value, SharedTensor) or value.numel() != 1 or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    mantissa, exponent = math.frexp(value)
    return exponent - 1 if mantissa == 0.5 else None


def _mul(a: Any, b: Any) -> SharedTensor:
    if isinstance(a, SharedTensor) != isinstance(b, SharedTensor):
        shared, public = (a, b) if isinstance(a, SharedTensor) else (b, a)
        exponent = _power_of_two(public)
        folded = None if exponent is None else shared.times_power_of_two(exponent)
        if folded is not None:  # rides in the product's owed truncation
            return folded
    if _integer_secret(a) != _integer_secret(b) and isinstance(a, SharedTensor) and isinstance(b, SharedTensor):
        # an integer (0/1 mask, one-hot) times a fixed-point secret: exact, no truncation
        fixed = b if _integer_secret(a) else a
        return SharedTensor(pa.mul(current(), a.shares, b.shares), fixed.dtype)
    a, b = _fixed(a), _fixed(b)
    dtype = _dtype_of(a, b)
    if isinstance(a, SharedTensor) and isinstance(b, SharedTensor):
        settle(a, b)
        return SharedTensor(pa.mul_fixed(current(), a.shares, b.shares, current().frac_bits), dtype)
    shared, public = (a, b) if isinstance(a, SharedTensor) else (b, a)
    return SharedTensor(mul_by_public(shared.shares, public), dtype)


def _matmul(a: Any, b: Any) -> SharedTensor:
    """a @ b with a secret side; a fixed-point product keeps its truncation owed
    (``SharedTensor.owing``): it runs when the shares are read, after what can ride in it.
    A softmax whose division is owed, times a fixed-point secret, divides after the product
    or beside it (``ap.divide_rows_after``, ``ap.divide_rows_beside``) where the policy finds
    that faster (``_division_order``)."""
    if isinstance(a, SharedTensor) and isinstance(b, SharedTensor):
        order = _division_order(a, b)
        if order != "first":
            return _divided_matmul(a, b, order)
    if _integer_secret(a) != _integer_secret(b) and isinstance(a, SharedTensor) and isinstance(b, SharedTensor):
        # e.g. a secret one-hot matrix times a secret embedding table: exact, 1 round
        fixed = b if _integer_secret(a) else a
        return SharedTensor(pa.matmul(current(), a.shares, b.shares), fixed.dtype)
    if not isinstance(a, SharedTensor) or not isinstance(b, SharedTensor):
        secret_first = isinstance(a, SharedTensor)
        return _public_matmul(a if secret_first else b, public_tensor(b if secret_first else a), secret_first)
    a, b = as_fixed(a), as_fixed(b)
    settle(a, b)
    return SharedTensor.owing(pa.matmul_local(a.shares, b.shares), current().frac_bits, _dtype_of(a, b))


def _division_order(a: SharedTensor, b: SharedTensor) -> str:
    """Where a @ b divides, for a softmax with its division owed times a fixed-point secret
    (``ap.division_order``: the policy's choice on the network); "first" for anything else."""
    if a.division is None or not b.dtype.is_floating_point:
        return "first"
    ctx = current()
    numerators, _ = a.division
    owed = b.owed
    value = (0, 0) if owed is None else pa.truncation_cost(owed.additive.numel(), owed.bits, ctx.network)
    row_len = numerators[0].shape[-1]
    out = torch.matmul(torch.empty(numerators[0].shape, device="meta"), torch.empty(b.shape, device="meta"))
    args = (numerators[0].numel() // row_len, row_len, out.numel(), value, ctx.frac_bits, ctx.compare_bits)
    return ap.division_order(*args, ctx.network)


def _divided_matmul(a: SharedTensor, b: SharedTensor, order: str) -> SharedTensor:
    """(e / s) @ b for a softmax ``a`` whose division is owed: e @ b (with b's own owed
    truncation) beside the reciprocal of s (``order`` "after") or beside its factors
    ("beside"), their product left owed."""
    ctx = current()
    numerators, totals = a.division  # type: ignore[misc]
    if b.dim() == 1:  # a vector: the product drops the rows' last dim
        totals = (totals[0].squeeze(-1), totals[1].squeeze(-1))

    def product() -> pa.Pair:
        settle(b)
        return pa.truncate_additive(ctx, pa.matmul_local(numerators, b.shares), ctx.frac_bits)

    owed = (ap.divide_rows_after if order == "after" else ap.divide_rows_beside)(ctx, totals, product)
    return SharedTensor.owing(owed.additive, owed.bits, _dtype_of(a, b))


def _public_blocks(public: torch.Tensor, secret_first: bool) -> tuple[int, bool, list[tuple[int, int]]]:
    """How to cut the public operand into blocks of about ``PUBLIC_BLOCK_ELEMENTS``, each a
    stretch of memory: (its dim to cut, whether that dim is summed over (the product's inner
    dim: partial products add up) or indexes the output (they are concatenated), and the
    (start, length) of each block). A row-major matrix is cut into rows, a transposed one
    (an [out, in] weight under ``F.linear``) into columns."""
    if public.dim() < 2 or public.numel() == 0:  # one block: a vector, or nothing to widen
        return -1, False, [(0, public.shape[-1] if public.dim() else 1)]
    dim = -2 if public.stride(-1) == 1 else -1
    inner = (dim == -2) == secret_first
    width = public.shape[dim]
    step = max(1, PUBLIC_BLOCK_ELEMENTS * width // max(public.numel(), 1))
    return dim, inner, [(start, min(step, width - start)) for start in range(0, width, step)]


def _laid_out_as(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The first ``like.numel()`` elements of ``buffer`` as a tensor of ``like``'s shape whose
    dims lie in memory in the order of ``like``'s strides (a block of a transposed weight
    stays transposed): copying ``like`` into it then reads and writes memory in order, where
    a row-major view made every copy a transposition (2.4x the time per weight of an
    [out, in] bf16 weight here), and the product takes it in that layout."""
    order = sorted(range(like.dim()), key=like.stride, reverse=True)
    view = buffer[: like.numel()].view([like.shape[d] for d in order])
    return view.permute([order.index(d) for d in range(like.dim())])


def _public_matmul(x: SharedTensor, public: torch.Tensor, secret_first: bool) -> SharedTensor:
    """x @ public (or public @ x), local on each share: public integers as they are (no
    truncation); public floats encoded with f bits, then one truncation, unless x is a
    secret integer (a one-hot), whose product with them is already fixed point. A product to
    be truncated is computed on the first share only: x_i @ public are 3-out-of-3 shares of
    it, which the truncation takes (``truncate_additive``), half the local work. Each block
    (``_public_blocks``) is widened into the same two buffers (``encode_into``), laid out as
    the block is stored (``_laid_out_as``)."""
    ctx = current()
    dim, inner, spans = _public_blocks(public, secret_first)
    blocks = [public.narrow(dim, start, length) if public.dim() >= 2 else public for start, length in spans]
    exact = all(_is_exact_integer(block) for block in blocks)
    if exact or x.dtype.is_floating_point:
        x = as_fixed(x)
    truncated = x.dtype.is_floating_point and not exact
    shares = x.shares[:1] if truncated else x.shares
    largest = max(block.numel() for block in blocks)
    wide = torch.empty(largest, dtype=torch.int64, device=ctx.device)
    compact = not exact and public.dtype in COMPACT_FLOATS
    scratch = torch.empty(largest if compact else 0, dtype=torch.float32, device=ctx.device)
    secret_dim = -1 if secret_first or x.dim() == 1 else -2  # the secret's inner dim
    out_dim = -1 if secret_first else (-2 if x.dim() > 1 else -1)
    parts: list[list[torch.Tensor]] = [[] for _ in shares]
    for (start, length), block in zip(spans, blocks, strict=True):
        ring = _laid_out_as(wide, block)
        if exact:
            ring.copy_(block)
        else:
            encode_into(block, ctx.frac_bits, ring, _laid_out_as(scratch, block) if compact else None)
        for share, part in zip(shares, parts, strict=True):
            operand = share.narrow(secret_dim, start, length) if inner else share
            product = ring_matmul(operand, ring) if secret_first else ring_matmul(ring, operand)
            if inner and part:
                part[0] += product
            else:
                part.append(product)
    products = [part[0] if len(part) == 1 else torch.cat(part, out_dim) for part in parts]
    dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
    if truncated:  # owed, as a product of secrets (``_matmul``)
        return SharedTensor.owing(products[0], ctx.frac_bits, dtype)
    return SharedTensor((products[0], products[1]), dtype)


def in_place(self_: Any, compute: Callable[[], SharedTensor], func: Any) -> SharedTensor:
    """``self_ op= other``: ``compute()`` gives the value, refused (before anything is computed)
    when ``self_`` is public."""
    if not isinstance(self_, SharedTensor):
        raise NotImplementedError(f"securetorch: {func_name(func)} would write a secret into a public tensor")
    result = compute()
    if result.shape != self_.shape:
        raise RuntimeError(f"{func_name(func)}: result shape {tuple(result.shape)} differs from {tuple(self_.shape)}")
    self_.set_shares(result.shares)
    return self_


def _alpha(kwargs: dict[str, Any]) -> Any:
    alpha = kwargs.pop("alpha", 1)
    if kwargs:
        raise NotImplementedError(f"securetorch: unsupported keyword arguments {sorted(kwargs)}")
    return alpha


@implements(torch.add, _T.add, _T.__add__, _T.__radd__)
def _add_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _add(args[0], _scaled(args[1], _alpha(dict(kwargs))))


@implements(torch.sub, torch.subtract, _T.sub, _T.subtract, _T.__sub__)
def _sub_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _add(args[0], _scaled(args[1], -_alpha(dict(kwargs))))


@implements(_T.__rsub__, torch.rsub)
def _rsub_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _add(_scaled(args[0], -_alpha(dict(kwargs))), args[1])


@implements(_T.__iadd__, _T.add_)
def _iadd_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return in_place(args[0], lambda: _add_op(func, args, kwargs), func)


@implements(_T.__isub__, _T.sub_)
def _isub_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return in_place(args[0], lambda: _sub_op(func, args, kwargs), func)


@implements(torch.neg, torch.negative, _T.neg, _T.negative, _T.__neg__)
def _neg_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _neg(args[0])


@implements(_T.__pos__, torch.positive, _T.positive)
def _pos_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return args[0]


@implements(torch.mul, torch.multiply, _T.mul, _T.multiply, _T.__mul__, _T.__rmul__)
def _mul_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _mul(args[0], args[1])


@implements(_T.__imul__, _T.mul_)
def _imul_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return in_place(args[0], lambda: _mul(args[0], args[1]), func)


@implements(torch.matmul, _T.matmul, _T.__matmul__, torch.bmm, _T.bmm, torch.mm, _T.mm)
def _matmul_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _matmul(args[0], args[1])


@implements(_T.__rmatmul__)
def _rmatmul_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    return _matmul(args[1], args[0])


@implements(torch.addmm, _T.addmm, torch.baddbmm, _T.baddbmm)
def _addmm_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    names = ("batch1", "batch2") if func in (torch.baddbmm, _T.baddbmm) else ("mat1", "mat2")
    given = dict(zip(("input", *names, "beta", "alpha"), args, strict=False)) | kwargs
    base, m1, m2 = given.get("input", given.get("self")), given[names[0]], given[names[1]]
    beta, alpha = given.get("beta", 1), given.get("alpha", 1)
    product = _scaled(_matmul(m1, m2), alpha)
    if beta == 0:
        return product
    return _add(_scaled(base, beta), product)


@implements(F.linear)
def _linear_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    out = _matmul(
        x, weight.transpose(-1, -2) if isinstance(weight, SharedTensor) else public_tensor(weight).transpose(-1, -2)
    )
    return out if bias is None else _add(out, bias)


@implements(torch.sum, _T.sum)
def _sum_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    return share_wise(func, args, kwargs)


@implements(torch.mean, _T.mean)
def _mean_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    x = args[0]
    kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    total = share_wise(torch.sum, args, kwargs)
    count = x.numel() // max(1, total.numel())
    return SharedTensor(mul_by_public(total.shares, 1.0 / count), x.dtype)
