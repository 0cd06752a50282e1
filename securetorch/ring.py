"""The ring Z_2^64 on ``torch.int64`` and fixed-point encoding.

Every secret value lives in Z_2^64 as a two's-complement ``torch.int64``; torch's int64
add, sub and mul wrap around modulo 2^64, which is exactly ring arithmetic. A real number r
is encoded as round(r * 2^f) (f fractional bits, PUMA's default f = 18).

The ring matrix product has two exact kernels:

* ``native``: torch's int64 kernels (they wrap mod 2^64; on torch 2.13's CPU build about
  1-3x the time of a float64 GEMM of the same shape, single-threaded). Their speed depends on
  the layout: a single row goes through ``torch.mv`` (about 2x ``matmul``'s speed), and a
  right operand stored transposed is multiplied as (b^T a^T)^T, since ``matmul`` on a
  transposed int64 operand is 3-10x slower;
* ``limbs``: three balanced 22-bit limbs per operand and six float64 BLAS products
  (Σ_{i+j<=2} A_i B_j 2^{22(i+j)}); every partial sum stays below 2^53 because the inner
  dimension is cut into chunks of at most 1024, so each product is exact. It scales with
  BLAS threads, so it wins on machines with many cores.

``auto`` (the default) times both once per process on a transformer-sized product (the
best of five turns each: ``fastest_kernel``) and keeps the faster one, except for one row
times matrices: a decoded token's products with the weights, where the work is reading the
matrices (8 bytes per multiply-add). Those take the row kernel (``row_matmul_sum``): loops
compiled by numba into vectorised 64-bit multiply-adds, each matrix read once in the layout
it is stored in, and the two products of a replicated share (``matmul_local``) in one pass;
torch's int64 ``mv`` is a scalar loop, about half as fast (``benchmarks.engine``). On an
accelerator the product always takes ``limbs`` (torch has no int64 GEMM there).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numba
import torch

RING_BITS = 64
DEFAULT_FRAC_BITS = 18
# Comparisons look at the low l bits: exact for |x| < 2^(l-1) in the ring (reals below 2^25).
DEFAULT_COMPARE_BITS = 44

MatmulKernel = Literal["auto", "native", "limbs"]

_LIMB_BITS = 22
_LIMB_HALF = 1 << (_LIMB_BITS - 1)
_LIMB_MASK = (1 << _LIMB_BITS) - 1
# |limb| <= 2^21, so one limb product is <= 2^42; the largest sum (three limb pairs per
# inner index, two of them with the <= 2^19 top limb) stays below 1.5 * 2^42 per index.
_LIMB_CHUNK = 1024


def encode(x: torch.Tensor | float, frac_bits: int) -> torch.Tensor:
    """Fixed-point encode: round(x * 2^f) as int64 (computed in float64)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    scaled = torch.round(t * float(1 << frac_bits))
    limit = float(2**63)
    if bool((scaled.abs() >= limit).any()) or not bool(torch.isfinite(scaled).all()):
        raise ValueError(
            f"value out of the fixed-point range: |x| must be below 2^{63 - frac_bits} "
            f"with {frac_bits} fractional bits, and finite"
        )
    return scaled.to(torch.int64)


COMPACT_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
"""Public operands in these dtypes are encoded in float32 (``encode_into``)."""


def encode_into(x: torch.Tensor, frac_bits: int, out: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
    """``encode(x)`` written into the int64 tensor ``out`` (x's shape), for x in a compact
    float dtype (``COMPACT_FLOATS``): x * 2^f and its rounding are exact in float32 (a power-of-two
    scaling; rounding a float to an integer), so no float64 copy is made; ``scratch`` is a
    float32 tensor of x's shape. Other dtypes go through ``encode`` (``scratch`` unused). The
    same range check."""
    if x.dtype not in COMPACT_FLOATS or scratch is None:
        return out.copy_(encode(x, frac_bits))
    low, high = x.aminmax() if x.numel() else (torch.zeros(()), torch.zeros(()))
    largest = max(-float(low), float(high))
    if not largest < 2.0 ** (63 - frac_bits):  # as encode; also catches inf and nan
        raise ValueError(
            f"value out of the fixed-point range: |x| must be below 2^{63 - frac_bits} "
            f"with {frac_bits} fractional bits, and finite"
        )
    scratch.copy_(x).mul_(float(1 << frac_bits)).round_()
    return out.copy_(scratch)


def decode(x: torch.Tensor, frac_bits: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Fixed-point decode: the signed int64 value divided by 2^f, as ``dtype``."""
    return (x.to(torch.float64) / float(1 << frac_bits)).to(dtype)


def logical_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x >>> bits on the unsigned 64-bit view of ``x`` (torch's >> is arithmetic)."""
    if bits == 0:
        return x.clone()
    return (x >> bits) & ((1 << (RING_BITS - bits)) - 1)


# --------------------------------------------------------------------------- matmul


def _split_limbs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x = l0 + l1*2^22 + l2*2^44 (mod 2^64) with |l0|,|l1| <= 2^21 and |l2| <= 2^19 + 1."""
    l0 = ((x + _LIMB_HALF) & _LIMB_MASK) - _LIMB_HALF
    x1 = (x - l0) >> _LIMB_BITS
    l1 = ((x1 + _LIMB_HALF) & _LIMB_MASK) - _LIMB_HALF
    l2 = (x1 - l1) >> _LIMB_BITS
    return l0.double(), l1.double(), l2.double()


def _limb_matmul_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a0, a1, a2 = _split_limbs(a)
    b0, b1, b2 = _split_limbs(b)
    p0 = torch.matmul(a0, b0)
    p1 = torch.matmul(torch.cat([a0, a1], -1), torch.cat([b1, b0], -2))
    p2 = torch.matmul(torch.cat([a0, a1, a2], -1), torch.cat([b2, b1, b0], -2))
    return p0.to(torch.int64) + (p1.to(torch.int64) << _LIMB_BITS) + (p2.to(torch.int64) << (2 * _LIMB_BITS))


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Z_2^64 matmul from float64 GEMMs over 22-bit limbs (see module docstring)."""
    if a.dim() == 1 or b.dim() == 1:
        out = limb_matmul(a.unsqueeze(0) if a.dim() == 1 else a, b.unsqueeze(-1) if b.dim() == 1 else b)
        if a.dim() == 1:
            out = out.squeeze(-2)
        if b.dim() == 1:
            out = out.squeeze(-1)
        return out
    k = a.shape[-1]
    if k == 0:
        return torch.matmul(a, b)  # zeros: an empty sum
    out = None
    for start in range(0, k, _LIMB_CHUNK):
        stop = min(start + _LIMB_CHUNK, k)
        part = _limb_matmul_chunk(a[..., start:stop], b[..., start:stop, :])
        out = part if out is None else out + part
    return out


def native_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Z_2^64 matmul with torch's int64 kernels (wrap mod 2^64), laid out for speed
    when the right operand is a matrix: one row of ``a`` is a matrix-vector product, and a
    transposed ``b`` (an [out, in] weight or a tied embedding table) is used as stored."""
    if b.dim() != 2 or a.dim() < 1:
        return torch.matmul(a, b)
    rows = a.numel() // max(a.shape[-1], 1)
    if rows == 1:
        return torch.mv(b.t(), a.reshape(-1)).reshape(*a.shape[:-1], b.shape[1])
    if not b.is_contiguous() and b.t().is_contiguous():
        flat = a.reshape(rows, a.shape[-1])
        return (b.t() @ flat.t()).t().reshape(*a.shape[:-1], b.shape[1])
    return torch.matmul(a, b)


_KERNELS = {"native": native_matmul, "limbs": limb_matmul}


def _spread(n: int) -> torch.Tensor:
    """Full-width deterministic int64 values (Weyl sequence) for timing, not for secrets."""
    return torch.arange(1, n + 1, dtype=torch.int64) * -7046029254386353131


CALIBRATION_ROUNDS = 5


def fastest_kernel(
    kernels: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    a: torch.Tensor,
    b: torch.Tensor,
    rounds: int = CALIBRATION_ROUNDS,
) -> str:
    """The kernel with the fastest best time on ``a @ b``: each warmed up once, then timed
    ``rounds`` times in turn. The best of several turns, not one timing each: the three
    parties of a local cluster start (and calibrate) at the same moment, and one product of
    a few milliseconds descheduled for a whole time slice would pick a kernel several times
    slower for the party's whole life."""
    best = dict.fromkeys(kernels, math.inf)
    for fn in kernels.values():
        fn(a, b)
    for _ in range(rounds):
        for name, fn in kernels.items():
            t0 = time.perf_counter()
            fn(a, b)
            best[name] = min(best[name], time.perf_counter() - t0)
    return min(best, key=best.__getitem__)


@functools.cache
def _calibrated_kernel() -> str:
    """The faster exact kernel here, on a transformer-sized [128,768]x[768,768] product."""
    return fastest_kernel(_KERNELS, _spread(128 * 768).reshape(128, 768), _spread(768 * 768).reshape(768, 768))


def _requested(kernel: MatmulKernel | None) -> str:
    """The kernel asked for: the argument, else ``SECURETORCH_MATMUL_KERNEL``, else auto."""
    return kernel or os.environ.get("SECURETORCH_MATMUL_KERNEL", "auto")


def resolve_kernel(kernel: MatmulKernel | None = None) -> str:
    kernel = _requested(kernel)
    if kernel == "auto":
        return _calibrated_kernel()
    if kernel not in _KERNELS:
        raise ValueError(f"unknown ring matmul kernel {kernel!r}; choose auto, native or limbs")
    return kernel


def ring_matmul(a: torch.Tensor, b: torch.Tensor, kernel: MatmulKernel | None = None) -> torch.Tensor:
    """Exact matrix product in Z_2^64 of int64 tensors, with torch.matmul's broadcasting."""
    return ring_matmul_sum([(a, b)], kernel)


def ring_matmul_sum(
    terms: Sequence[tuple[torch.Tensor, torch.Tensor]], kernel: MatmulKernel | None = None
) -> torch.Tensor:
    """Σ a @ b over ``terms`` (pairs of int64 tensors), exact in Z_2^64: one pass of the row
    kernel over all the matrices where it applies (``is_row_product``) and the kernel is
    ``auto``, else the sum of the products by the chosen kernel."""
    if not terms:
        raise ValueError("ring_matmul_sum needs at least one product")
    if any(a.is_meta or b.is_meta for a, b in terms):  # shapes only (a dry run's stand-in shares)
        return _sum(torch.matmul(a, b) for a, b in terms)
    if any(a.device.type != "cpu" for a, _ in terms):  # accelerators: exact float64 GEMMs on limbs
        return _sum(limb_matmul(a, b) for a, b in terms)
    kernel = _requested(kernel)
    layout = _row_layout(terms) if kernel == "auto" else None
    if layout is not None:
        return _row_product(terms, layout)
    product = _KERNELS[resolve_kernel(kernel)]
    return _sum(product(a, b) for a, b in terms)


def _sum(products: Iterable[torch.Tensor]) -> torch.Tensor:
    total = None
    for p in products:
        total = p if total is None else total + p
    assert total is not None
    return total


# --------------------------------------------------------------------------- the row kernel


# Each loop reads a block of matrix rows per pass (``_axpys`` eight, the others four, of each
# matrix; the tail row by row): one row at a time leaves the core waiting on memory. From
# DRAM, on this machine's cores, the blocks read one matrix 1.3-1.4x as fast, two 1.1x.


def _dots(x, m, out):
    """out[i] = Σ_j m[i, j] x[j]: a row times a matrix stored transposed (m is [n, k])."""
    n, k = m.shape
    top = n - n % 4
    for i in range(0, top, 4):
        a0 = a1 = a2 = a3 = 0
        for j in range(k):
            xj = x[j]
            a0 += m[i, j] * xj
            a1 += m[i + 1, j] * xj
            a2 += m[i + 2, j] * xj
            a3 += m[i + 3, j] * xj
        out[i], out[i + 1], out[i + 2], out[i + 3] = a0, a1, a2, a3
    for i in range(top, n):
        acc = 0
        for j in range(k):
            acc += m[i, j] * x[j]
        out[i] = acc


def _dots2(x, m, y, p, out):
    """out[i] = Σ_j m[i, j] x[j] + p[i, j] y[j]."""
    n, k = m.shape
    top = n - n % 4
    for i in range(0, top, 4):
        a0 = a1 = a2 = a3 = 0
        for j in range(k):
            xj = x[j]
            yj = y[j]
            a0 += m[i, j] * xj + p[i, j] * yj
            a1 += m[i + 1, j] * xj + p[i + 1, j] * yj
            a2 += m[i + 2, j] * xj + p[i + 2, j] * yj
            a3 += m[i + 3, j] * xj + p[i + 3, j] * yj
        out[i], out[i + 1], out[i + 2], out[i + 3] = a0, a1, a2, a3
    for i in range(top, n):
        acc = 0
        for j in range(k):
            acc += m[i, j] * x[j] + p[i, j] * y[j]
        out[i] = acc


def _axpys(x, m, out):
    """out = Σ_j x[j] m[j, :]: a row times a matrix stored as it is used (m is [k, n])."""
    k, n = m.shape
    out[:] = 0
    top = k - k % 8
    for j in range(0, top, 8):
        for i in range(n):
            acc = out[i]
            for d in range(8):  # unrolled by the compiler
                acc += m[j + d, i] * x[j + d]
            out[i] = acc
    for j in range(top, k):
        for i in range(n):
            out[i] += m[j, i] * x[j]


def _axpys2(x, m, y, p, out):
    """out = Σ_j x[j] m[j, :] + y[j] p[j, :]."""
    k, n = m.shape
    out[:] = 0
    top = k - k % 4
    for j in range(0, top, 4):
        for i in range(n):
            acc = out[i]
            for d in range(4):
                acc += m[j + d, i] * x[j + d] + p[j + d, i] * y[j + d]
            out[i] = acc
    for j in range(top, k):
        for i in range(n):
            out[i] += m[j, i] * x[j] + p[j, i] * y[j]


_ONE = "void(int64[::1], int64[:, ::1], int64[::1])"
_TWO = "void(int64[::1], int64[:, ::1], int64[::1], int64[:, ::1], int64[::1])"
_LOOPS: dict[tuple[str, int], tuple[Callable[..., None], str]] = {
    ("rows", 1): (_axpys, _ONE),
    ("rows", 2): (_axpys2, _TWO),
    ("transposed", 1): (_dots, _ONE),
    ("transposed", 2): (_dots2, _TWO),
}
_compiled: dict[tuple[str, int], Callable[..., None]] = {}
_compiling = threading.Lock()


def register_loop(key: tuple[str, int], loop: Callable[..., None], signature: str) -> None:
    """Add a protocol's numba loop (plain Python over numpy arrays, typed by ``signature``)
    to the loops ``compiled`` builds and ``compile_kernels`` compiles ahead."""
    _LOOPS.setdefault(key, (loop, signature))


def compiled(key: tuple[str, int]) -> Callable[..., None]:
    """The loop registered under ``key``, compiled by numba on first use (the launcher
    compiles them all before it forks a local cluster's parties). Compiled in memory only:
    numba's on-disk cache is off, so a party loads no machine code from a shared directory,
    and processes starting together do not race to write it (a known cause of crashes)."""
    with _compiling:  # once, though the simulator's three party threads ask together
        if key not in _compiled:
            loop, signature = _LOOPS[key]
            _compiled[key] = numba.njit(signature, nogil=True, boundscheck=False, cache=False)(loop)
        return _compiled[key]


def row_kernel(layout: str, terms: int) -> Callable[..., None]:
    """The row kernel's loop for a matrix layout (``_layout``) and one or two terms (``compiled``)."""
    return compiled((layout, terms))


def compile_kernels() -> None:
    """Compile every registered loop now (``compiled``): the row kernel's and the protocols'."""
    for key in list(_LOOPS):
        compiled(key)


def _layout(b: torch.Tensor) -> str | None:
    """How a 2-D right operand is stored: "rows" ([k, n] row-major), "transposed" (its
    transpose is row-major: an [out, in] weight or a tied embedding table) or neither."""
    if b.is_contiguous():
        return "rows"
    if b.t().is_contiguous():
        return "transposed"
    return None


def _row_layout(terms: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> str | None:
    """The matrices' layout when the row kernel computes Σ a @ b (``is_row_product``), else None."""
    if not 1 <= len(terms) <= 2:
        return None
    a0, b0 = terms[0]
    if b0.dim() != 2 or a0.dim() < 1 or a0.numel() != a0.shape[-1] or a0.shape[-1] != b0.shape[0]:
        return None
    layout = _layout(b0)
    if layout is None or not all(
        a.shape == a0.shape
        and b.shape == b0.shape
        and a.dtype == b.dtype == torch.int64
        and a.device.type == b.device.type == "cpu"
        and _layout(b) == layout
        for a, b in terms
    ):
        return None
    return layout


def is_row_product(terms: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether the row kernel computes Σ a @ b: one or two products of one row each (the
    same shape [..., 1, k] or [k]) with int64 CPU matrices of one shape [k, n] and one
    layout (``_layout``)."""
    return _row_layout(terms) is not None


def row_matmul_sum(terms: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ a @ b for one row a per term (``is_row_product``), by the compiled row kernel: each
    matrix is read once, in its stored layout, with every product wrapping mod 2^64."""
    layout = _row_layout(terms)
    if layout is None:
        raise ValueError(
            "the row kernel takes one or two products of one int64 CPU row with matrices of one shape and layout"
        )
    return _row_product(terms, layout)


def _row_product(terms: Sequence[tuple[torch.Tensor, torch.Tensor]], layout: str) -> torch.Tensor:
    b0 = terms[0][1]
    rows = [a.reshape(-1).contiguous().numpy() for a, _ in terms]
    mats = [(b if layout == "rows" else b.t()).numpy() for _, b in terms]
    out = torch.empty(b0.shape[1], dtype=torch.int64, device=b0.device)
    row_kernel(layout, len(terms))(*(v for pair in zip(rows, mats, strict=True) for v in pair), out.numpy())
    return out.reshape(*terms[0][0].shape[:-1], b0.shape[1])
