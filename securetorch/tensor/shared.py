"""``SharedTensor``: a torch.Tensor whose value is replicated-secret-shared over three parties.

It holds this party's share pair (two int64 tensors of its shape) and a logical float dtype;
``shape``, ``dtype``, ``dim()`` behave as for a plain tensor. Every other torch function goes
through ``__torch_function__`` to the op tables in ``registry``; an op with no table entry
raises ``NotImplementedError`` naming the function and argument types: nothing ever runs on
raw shares or reveals silently.

During a dry run (``tensor.dryrun``, ``puma.check``) the current party context is a stand-in
whose ``recorder`` is the dry run: outermost ops go to its ``dispatch``, which runs the same
handlers on stand-in shares (meta tensors, which the wrapper presents as CPU tensors) and
records what they refuse. Outside a dry run this costs nothing: it shares the cost recorder's
existing check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.ring import decode, encode
from securetorch.session import costs
from securetorch.session.context import current
from securetorch.tensor.registry import HANDLERS, func_name, type_names

_T = torch.Tensor
_CPU = torch.device("cpu")
# Functions that read metadata only (shape, dtype, …): run on the wrapper itself.
_METADATA = {
    _T.dim, _T.size, _T.numel, _T.nelement, _T.__len__, _T.stride, _T.is_contiguous,
    _T.is_floating_point, _T.is_complex, _T.element_size, _T.__hash__, _T.__format__,
    _T.shape.__get__, _T.dtype.__get__, _T.device.__get__, _T.ndim.__get__, _T.layout.__get__,
    _T.requires_grad.__get__, _T.is_cuda.__get__, _T.is_sparse.__get__, _T.is_quantized.__get__,
    _T.is_meta.__get__, _T.is_nested.__get__, _T.grad_fn.__get__, _T.is_leaf.__get__,
}  # fmt: skip


def _wrapper(cls: type, like: torch.Tensor, dtype: torch.dtype) -> Any:
    device = like.device
    if device.type == "meta":  # a dry run's stand-in shares (tensor.dryrun) pose as CPU tensors
        device = _CPU
    return torch.Tensor._make_wrapper_subclass(cls, like.shape, dtype=dtype, device=device)


def scale_bits(dtype: torch.dtype, frac_bits: int) -> int:
    """Fractional bits of a secret of logical ``dtype``: f for floats, 0 for bool and integers."""
    return frac_bits if dtype.is_floating_point else 0


def decode_as(ring_value: torch.Tensor, frac_bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Plaintext of logical ``dtype`` from an opened ring tensor."""
    if dtype == torch.bool:
        return ring_value != 0
    if not dtype.is_floating_point:
        return ring_value.to(dtype)
    return decode(ring_value, frac_bits, dtype)


class _OwedTruncation:
    """A product's truncation still to run (``pa.Owed``), run at most once for the product
    and every reshaped view of it (``SharedTensor.viewed``)."""

    __slots__ = ("owed", "shares")

    def __init__(self, owed: pa.Owed) -> None:
        self.owed, self.shares = owed, None

    def run(self) -> pa.Pair:
        if self.shares is None:
            additive = self.owed.additive
            if additive.device.type == "meta":  # a dry run's stand-in: nothing to compute
                self.shares = (additive, additive)
            else:
                self.shares = pa.truncate_additive(current(), additive, self.owed.bits)
        return self.shares


class _RowDivision:
    """A softmax's division by its row sums still to run: its numerators e and row sums s
    (``ap.softmax_numerators``), so that a product e/s @ V can divide after the product or
    beside it (``ap.division_order``, in ``arith_ops``); any other read divides first."""

    __slots__ = ("numerators", "shares", "totals")

    def __init__(self, numerators: pa.Pair, totals: pa.Pair) -> None:
        self.numerators, self.totals, self.shares = numerators, totals, None

    def run(self) -> pa.Pair:
        if self.shares is None:
            self.shares = ap.divide_rows(current(), self.numerators, self.totals)
        return self.shares


View = Callable[[torch.Tensor], torch.Tensor]


class SharedTensor(torch.Tensor):
    """A secret tensor: this party's replicated shares plus a logical dtype.

    Floating dtypes hold fixed-point values (f fractional bits); ``torch.bool`` and integer
    dtypes hold plain integers (comparison results, argmax indices).

    A fixed-point product may hold its truncation still owed (``owing``): it runs when the
    shares are first read, so that what comes before that read can ride in it: a public
    power-of-two factor (``times_power_of_two``), a sum with another secret or a public
    value (``owed``, ``arith_ops``), reshaping (``viewed``), and a LayerNorm's row means
    (``nonlinear_ops``). A model's matmuls and linear layers give such products.

    A softmax over the last dim holds its division by the row sums still owed
    (``dividing``), so that the product with V that attention takes next can divide after
    or beside it (``ap.division_order``); a retype keeps it owed, any other read divides
    first."""

    _shares: pa.Pair | None
    _owed: tuple[_OwedTruncation, View | None] | None
    _division: _RowDivision | None

    @staticmethod
    def __new__(cls, shares: pa.Pair, dtype: torch.dtype = torch.float32) -> SharedTensor:
        first, second = shares
        if first.dtype != torch.int64 or second.dtype != torch.int64 or first.shape != second.shape:
            raise ValueError("shares must be two int64 tensors of one shape")
        out = _wrapper(cls, first, dtype)
        out._shares, out._owed, out._division = (first, second), None, None
        return out

    def __init__(self, shares: pa.Pair, dtype: torch.dtype = torch.float32) -> None:
        pass

    @classmethod
    def owing(cls, additive: torch.Tensor, bits: int, dtype: torch.dtype) -> SharedTensor:
        """A fixed-point product whose truncation by ``bits`` is still owed (``additive``:
        this party's 3-out-of-3 share of the product)."""
        additive = additive.contiguous()  # as every party's: a product's layout may not be
        out = _wrapper(cls, additive, dtype)
        out._shares, out._owed, out._division = None, (_OwedTruncation(pa.Owed(additive, bits)), None), None
        return out

    @classmethod
    def dividing(cls, numerators: pa.Pair, totals: pa.Pair, dtype: torch.dtype) -> SharedTensor:
        """A softmax over the last dim, numerators / row sums, whose division is still owed."""
        out = _wrapper(cls, numerators[0], dtype)
        out._shares, out._owed, out._division = None, None, _RowDivision(numerators, totals)
        return out

    @property
    def division(self) -> tuple[pa.Pair, pa.Pair] | None:
        """(numerators, row sums) of a softmax whose division is still owed; None otherwise."""
        if self._division is None or self._division.shares is not None:
            return None
        return self._division.numerators, self._division.totals

    @property
    def shares(self) -> pa.Pair:
        """This party's pair (x_i, x_{i+1}) of ring tensors (an owed truncation runs first:
        every party reads a tensor's shares at the same point of the same program)."""
        if self._shares is None and self._division is not None:
            self._shares, self._division = self._division.run(), None
        if self._shares is None:
            assert self._owed is not None
            truncation, view = self._owed
            base = truncation.run()
            self._shares = base if view is None else (view(base[0]), view(base[1]))
            self._owed = None
        return self._shares

    @property
    def owed(self) -> pa.Owed | None:
        """The product with its truncation still owed, in this tensor's shape; None once the
        truncation has run (reading the shares is free then) or if there is none."""
        if self._owed is None or self._owed[0].shares is not None:
            return None
        owed, view = self._owed[0].owed, self._owed[1]
        return owed if view is None else pa.Owed(view(owed.additive), owed.bits)

    def viewed(self, view: View | None, dtype: torch.dtype) -> SharedTensor | None:
        """``view`` (a reshaping that keeps every element: view, transpose, ...; None: the
        same elements, another dtype) applied to an owed product, still owed and sharing its
        truncation (an owed division: a retype only); None if nothing is owed."""
        if view is None and self.division is not None:
            out = _wrapper(SharedTensor, self.division[0][0], dtype)
            out._shares, out._owed, out._division = None, None, self._division
            return out
        if self.owed is None:
            return None
        assert self._owed is not None
        truncation, before = self._owed
        if view is None or before is None:
            composed = before if view is None else view
        else:
            composed = lambda t: view(before(t))  # noqa: E731
        additive = truncation.owed.additive
        out = _wrapper(SharedTensor, additive if composed is None else composed(additive), dtype)
        out._shares, out._owed, out._division = None, (truncation, composed), None
        return out

    def set_shares(self, shares: pa.Pair) -> None:
        """Replace the value (in-place ops)."""
        self._shares, self._owed, self._division = shares, None, None

    def settle(self, shares: pa.Pair) -> None:
        """The shares of this tensor's owed product (``owed``), from its truncation run
        outside ``shares`` (with other truncations in one call); the product's other views
        get them too where this tensor holds the product's elements in the product's order
        (the product itself, or a view or reshape of it)."""
        assert self._owed is not None
        truncation, view = self._owed
        base = truncation.owed.additive
        if view is None:
            truncation.shares = shares
        else:
            mine = view(base)
            if mine.is_contiguous() and mine.data_ptr() == base.data_ptr() and mine.numel() == base.numel():
                truncation.shares = (shares[0].reshape(base.shape), shares[1].reshape(base.shape))
        self._shares, self._owed, self._division = shares, None, None

    def times_power_of_two(self, exponent: int) -> SharedTensor | None:
        """self * 2^exponent folded into an owed truncation (no round of its own), or None
        if there is none or it cannot take the factor."""
        owed = self.owed
        if owed is None or not 1 <= owed.bits - exponent <= pa.MAX_TRUNCATION_BITS:
            return None
        return SharedTensor.owing(owed.additive, owed.bits - exponent, self.dtype)

    def reveal(self, to: int | None = None) -> torch.Tensor | None:
        """Open the value: a plaintext tensor on every party (``to=None``) or on party ``to``
        only (the others get None)."""
        ctx = current()
        plain = pa.reveal(ctx, self.shares, to)
        return None if plain is None else decode_as(plain, ctx.frac_bits, self.dtype)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"SharedTensor(shape={tuple(self.shape)}, dtype={self.dtype})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a SharedTensor cannot be pickled; return it from Cluster.run to send it to the driver")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        handler = HANDLERS.get(func)
        recorder = costs.active()
        if recorder is not None and not recorder.depth:
            if not isinstance(recorder, costs.CostRecorder):  # a dry run (tensor.dryrun): stand-in shares
                return recorder.dispatch(func, handler, args, kwargs)
            if handler is not None:
                return recorder.measure(costs.op_name(func_name(func)), lambda: handler(func, args, kwargs))
        if handler is None:
            raise NotImplementedError(
                f"securetorch has no secure protocol for {func_name(func)}({type_names(args, kwargs)}); "
                "it was not run (no fallback on shares, nothing revealed)"
            )
        return handler(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        raise NotImplementedError(
            f"securetorch has no secure protocol for {func}({type_names(args, kwargs or {})}); "
            "it was not run (no fallback on shares, nothing revealed)"
        )


def settle(*values: Any) -> None:
    """Run now the owed truncations of the secrets among ``values`` (an op about to read
    them, a model's outputs): several together (``pa.truncate_together``: one call where that
    is faster), not one after the other as each read would."""
    # each product once, however many views of it are among them: the views read its shares
    cells = list(
        {id(v._owed[0]): v._owed[0] for v in values if isinstance(v, SharedTensor) and v.owed is not None}.values()
    )
    if len(cells) >= 2 and all(c.owed.additive.device.type != "meta" for c in cells):
        for cell, shares in zip(cells, pa.truncate_together(current(), [c.owed for c in cells]), strict=True):
            cell.shares = shares
    for cell in cells:  # one alone (or a dry run's stand-ins): as a read would
        cell.run()


def share(value: torch.Tensor | None, owner: int, dtype: torch.dtype | None = None) -> SharedTensor:
    """Secret-share a tensor known to party ``owner``; the other parties pass None.

    The shape travels with the shares; the logical dtype is ``dtype`` (default: torch's
    default float dtype) on every party. Cost: 1 round, 16 bytes per element.
    """
    ctx = current()
    dtype = dtype or torch.get_default_dtype()
    encoded = None if value is None else encode(value, scale_bits(dtype, ctx.frac_bits))
    pair = pa.share_from_party(ctx, encoded, owner)
    return SharedTensor(pair, dtype)


def as_fixed(x: SharedTensor) -> SharedTensor:
    """A bool/integer secret as a fixed-point float secret (shares times 2^f, local)."""
    if x.dtype.is_floating_point:
        return x
    ctx = current()
    return SharedTensor(pa.mul_public(x.shares, 1 << ctx.frac_bits), torch.get_default_dtype())
