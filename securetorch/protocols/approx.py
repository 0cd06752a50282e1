"""Fixed-point approximations: exp, reciprocal, rsqrt, GeLU, SiLU, sigmoid, tanh, softmax,
LayerNorm, RMSNorm.

Conventions: inputs and outputs are replicated shares at f fractional bits. Internally a
value may be *reinterpreted* at another scale for free (x at scale f is x / 2^s at scale
f + s), and a product may truncate by any number of bits, so scale changes ride on the
truncations the products need anyway. Costs are per element (rounds; bytes of all parties).

Sources: PUMA (Dong et al. 2023) §4 for the overall recipes (piecewise GeLU, softmax with
the row max and a clip at -14, LayerNorm via rsqrt); ABY3 §5.3 for the bit decomposition;
polynomials for reciprocal and rsqrt after normalising to [1/2, 1) and
[1/4, 1). The polynomial fits are computed at import (least squares on Chebyshev nodes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from securetorch.comm.profile import Cost, NetworkProfile, cheapest, parallel_cost, total_cost
from securetorch.protocols import arithmetic as pa
from securetorch.protocols.arithmetic import Pair
from securetorch.protocols.boolean import (
    BitPair,
    and_,
    bit_planes,
    reshare_bits,
    xor,
    xor_public,
)
from securetorch.protocols.comparison import (
    SMALL_ELEMENTS,
    bit_to_arith,
    bit_to_arith_cost,
    less_than_zero,
    less_than_zero_cost,
    max_last_dim_cost,
)
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.session.context import PartyContext
from securetorch.session.parallel import parallel

# --------------------------------------------------------------------------- helpers


def _stack(pairs: list[Pair]) -> Pair:
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _unstack(pair: Pair) -> list[Pair]:
    return [(a, b) for a, b in zip(pair[0], pair[1], strict=True)]


def mul_many(ctx: PartyContext, lefts: list[Pair], rights: list[Pair], bits: int) -> list[Pair]:
    """Several same-shape fixed-point products in one truncation (2 or 3 rounds)."""
    left, right = _stack(lefts), _stack(rights)
    return _unstack(pa.truncate_additive(ctx, pa.mul_local(left, right), bits))


def ring_mul_many(ctx: PartyContext, lefts: list[Pair], rights: list[Pair]) -> list[Pair]:
    """Several same-shape exact ring products in one resharing (1 round)."""
    return _unstack(pa.mul(ctx, _stack(lefts), _stack(rights)))


def add_constant(ctx: PartyContext, x: Pair, value: float, scale: int) -> Pair:
    return pa.add_public(ctx, x, round(value * 2**scale))


def _power_levels(degree: int) -> list[tuple[int, list[int]]]:
    """The batches of the powers t..t^degree: (2^j, the powers k in (2^j, 2^(j+1)] made as
    t^(2^j) t^(k-2^j)), all products of one depth in one truncation."""
    levels, level = [], 1
    while level < degree:
        levels.append((level, list(range(level + 1, min(2 * level, degree) + 1))))
        level *= 2
    return levels


def _powers_known(t: Pair, degree: int, outputs: list[Pair], first: int) -> dict[int, Pair]:
    """The powers of t made so far, from a chain's ``outputs`` (the power batches from
    index ``first`` on)."""
    result = {1: t}
    for batch, (_, todo) in zip(outputs[first:], _power_levels(degree), strict=False):
        result.update(zip(todo, _unstack(batch), strict=True))
    return result


_CPU = torch.device("cpu")
POLY_SCALE = 30
# The split evaluation needs this many coefficient bits at least (rounding below 2^-19).
SPLIT_COEF_BITS = 18


def _linear_combination(ctx: PartyContext, pows: list[Pair], coeffs: np.ndarray, coef_bits: int, scale: int) -> Pair:
    """sum_j c_j t^j (pows[j-1] = t^j, t^0 = 1) at scale + coef_bits: public multiples, local."""
    zero = torch.zeros_like(pows[0][0])
    acc = add_constant(ctx, (zero, zero), float(coeffs[0]), scale + coef_bits)
    for c, p in zip(coeffs[1:], pows, strict=False):
        acc = pa.add(acc, pa.mul_public(p, round(float(c) * 2**coef_bits)))
    return acc


def polynomial(
    ctx: PartyContext,
    t: Pair,
    coeffs: np.ndarray,
    scale: int,
    out_scale: int,
    work_scale: int = POLY_SCALE,
    addend: tuple[Pair, int] | None = None,
) -> Pair:
    """sum_k c_k t^k (degree d) for t in [-1, 1] at ``scale``; result at ``out_scale``, plus
    ``addend`` (a value and its scale, at most the sum's before its last truncation) if given.

    t is first moved to ``work_scale`` fractional bits s if below (a local shift: products of
    values below 1 fit). Outside [-1, 1] the result is garbage, so callers mask it.

    Split (Paterson-Stockmeyer with one split, when 2s + 18 + log2 sum_k |c_k| <= 61, i.e. for
    well-conditioned fits at s <= 21): with m = ceil(d/2), p = q0(t) + t^m q1(t), q0 and q1 of
    degree < m and <= m, public combinations of t..t^m. The product t^m q1 (at 2s + cb bits)
    and q0 (moved up by s bits) are summed as additive shares and truncated once: m
    truncations in all (the powers' m - 1 in ceil(log2 m) batches, then one).
    Direct otherwise: the powers t..t^d (d - 1 truncations), summed with the coefficients at
    as many bits as sum_k |c_k| leaves below 2^61, truncated once. The truncations form one
    chain (``truncate_chain``): ceil(log2 k) + 1 of them (k = m split, d direct), 2 rounds
    each and 1 more after a run of byte-optimal ones.
    """
    steps = polynomial_steps(ctx, lambda _: t, tuple(t[0].shape), coeffs, scale, out_scale, work_scale, addend)
    return pa.truncate_chain(ctx, steps)[-1]


def polynomial_steps(
    ctx: PartyContext,
    t_of: Callable[[list[Pair]], Pair],
    shape: tuple[int, ...],
    coeffs: np.ndarray,
    scale: int,
    out_scale: int,
    work_scale: int = POLY_SCALE,
    addend: tuple[Pair, int] | None = None,
    first: int = 0,
) -> list[pa.Step]:
    """``polynomial``'s truncations as steps of a chain (``truncate_chain``) whose results
    from index ``first`` on are theirs, t being ``t_of`` the results before (of ``shape``,
    at ``scale``): the last step's result is the polynomial's."""
    scale_up, split, count, coef_bits, shift = _polynomial_plan(coeffs, scale, out_scale, work_scale)
    work = scale + scale_up

    held: list[Pair] = []  # t at the work scale, made once (its results stay as they are)

    def t_at_work(outputs: list[Pair]) -> Pair:
        if not held:
            t = t_of(outputs)
            held.append(pa.mul_public(t, 1 << scale_up) if scale_up else t)
        return held[0]

    def power_batch(level: int, todo: list[int]) -> Callable[[list[Pair]], torch.Tensor]:
        def z(outputs: list[Pair]) -> torch.Tensor:
            known = _powers_known(t_at_work(outputs), count, outputs, first)
            return pa.mul_local(_stack([known[level]] * len(todo)), _stack([known[k - level] for k in todo]))

        return z

    def last(outputs: list[Pair]) -> torch.Tensor:
        known = _powers_known(t_at_work(outputs), max(count, 1), outputs, first)
        pows = [known[k] for k in range(1, max(count, 1) + 1)]
        if split:
            low = _linear_combination(ctx, pows, coeffs[:count], coef_bits, work)
            high = _linear_combination(ctx, pows, coeffs[count:], coef_bits, work)
            total = pa.mul_local(pows[count - 1], high) + pa.mul_public(low, 1 << work)[0]
            if addend is not None:
                total = total + (addend[0][0] << (shift + out_scale - addend[1]))
            return total
        combined = _linear_combination(ctx, pows, coeffs, coef_bits, work)
        if addend is not None:
            combined = pa.add(combined, pa.mul_public(addend[0], 1 << (shift + out_scale - addend[1])))
        return combined[0]

    steps: list[pa.Step] = [
        ((len(todo), *shape), work, power_batch(level, todo)) for level, todo in _power_levels(count)
    ]
    return [*steps, (shape, shift, last)]


def _polynomial_plan(
    coeffs: np.ndarray, scale: int, out_scale: int, work_scale: int
) -> tuple[int, bool, int, int, int]:
    """How ``polynomial`` evaluates: (bits t moves up, split or not, the highest power made,
    coefficient bits, the final truncation's bits)."""
    degree = len(coeffs) - 1
    scale_up = max(0, work_scale - scale)
    scale += scale_up
    size_bits = max(0, math.ceil(math.log2(float(np.abs(coeffs).sum()))))
    if degree >= 3 and 2 * scale + SPLIT_COEF_BITS + size_bits <= 61:
        coef_bits = 61 - 2 * scale - size_bits
        return scale_up, True, -(-degree // 2), coef_bits, 2 * scale + coef_bits - out_scale
    coef_bits = 61 - scale - size_bits
    return scale_up, False, degree, coef_bits, scale + coef_bits - out_scale


def polynomial_parts(
    n: int, coeffs: np.ndarray, scale: int, out_scale: int, work_scale: int = POLY_SCALE
) -> list[tuple[int, int]]:
    """(elements, bits) of each step of ``polynomial_steps`` on n elements."""
    scale_up, _, count, _, shift = _polynomial_plan(coeffs, scale, out_scale, work_scale)
    return [(len(todo) * n, scale + scale_up) for _, todo in _power_levels(count)] + [(n, shift)]


def polynomial_cost(
    n: int,
    coeffs: np.ndarray,
    scale: int,
    out_scale: int,
    work_scale: int = POLY_SCALE,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``polynomial`` on n elements."""
    return pa.truncate_chain_cost(polynomial_parts(n, coeffs, scale, out_scale, work_scale), network)


def _chebyshev_nodes(count: int = 4000) -> np.ndarray:
    """The ``count`` Chebyshev nodes cos(pi (k + 1/2) / count) in (-1, 1), where the least-squares
    fits here are taken."""
    return np.cos(np.pi * (np.arange(count) + 0.5) / count)


@functools.cache
def chebyshev_fit(name: str, upper: float, degree: int) -> np.ndarray:
    """Least-squares fit of the named function on [0, upper] (a power of two), on Chebyshev
    nodes: monomial coefficients in u = 2t/upper - 1 in [-1, 1], where they stay small
    (sum |c_k| <= 2 for the tails here; in t/upper they reach ~1000)."""
    fn = _TARGETS[name]
    u = _chebyshev_nodes()
    vander = np.vander(u, degree + 1, increasing=True)
    coeffs, *_ = np.linalg.lstsq(vander, fn(upper / 2 * (1 + u)), rcond=None)
    return coeffs


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def _gelu_tail(t: np.ndarray) -> np.ndarray:
    return t - t * 0.5 * (1 + _erf(t / math.sqrt(2)))  # relu(t) - gelu(t), t >= 0


def _gelu_tanh_tail(t: np.ndarray) -> np.ndarray:
    return t - 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))


def _silu_tail(t: np.ndarray) -> np.ndarray:
    return t - t / (1 + np.exp(-t))  # = t * sigmoid(-t)


def _sigmoid_tail(t: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(t))  # sigmoid(-t)


_TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu_tail,
    "gelu_tanh": _gelu_tanh_tail,
    "silu": _silu_tail,
    "sigmoid": _sigmoid_tail,
}

# name: (range T of the fitted tail, a power of two; polynomial degree); beyond T the tail
# is taken as 0. Fit error on [0, T] / tail beyond T: gelu 5e-6 / 1.3e-4, silu 9e-5 /
# 2.7e-3, sigmoid 3e-5 / 3.4e-4 (tests/test_approx.py measures the secure errors). GeLU keeps
# degree 10: degree 8 (1.3e-4 on all of [0, 4], one truncation fewer) gave BERT-base 3x the
# error (1.4e-3 against 5.0e-4 on 16 tokens), as most activations lie inside [-4, 4].
TAIL_FITS = {"gelu": (4.0, 10), "gelu_tanh": (4.0, 10), "silu": (8.0, 10), "sigmoid": (8.0, 10)}
# The tails' powers are computed at 20 fractional bits: their coefficients (in u in [-1, 1])
# sum to at most 2, so the powers' rounding stays below 1e-5, and the split evaluation fits.
TAIL_SCALE = 20


# --------------------------------------------------------------------------- signs


def _fitted_tail(ctx: PartyContext, x: Pair, name: str) -> tuple[Pair, Pair, Pair, Pair]:
    """What GeLU, SiLU and sigmoid share: [x < 0], [x < 0] x, [|x| <= T] and the fitted tail
    at |x| (at f bits).

    The sign gives |x| = x - 2[x < 0] x. [|x| > T] is either one comparison after it
    ("sequential") or [x > T] + [x < -T] batched with the sign ("batched": one comparison's
    rounds fewer, half again the comparisons' bytes), the one ``tail_signs_cost`` finds
    faster on the context's network (without one: the one with fewer rounds up to
    ``SMALL_ELEMENTS`` elements, sequential beyond).
    u = 2|x|/T - 1 is |x| read at scale f + log2(T) - 1, less 1: free."""
    f = ctx.frac_bits
    upper, degree = TAIL_FITS[name]
    bound = round(upper * 2**f)
    if _tail_signs_variant(x[0].numel(), ctx.compare_bits, ctx.network) == "batched":
        batch = _stack([x, pa.add_public(ctx, pa.neg(x), bound), pa.add_public(ctx, x, bound)])
        negative, above, below = _unstack(less_than_zero(ctx, batch))
        outside = pa.add(above, below)
        neg_x = ring_mul_many(ctx, [negative], [x])[0]
        absolute = pa.sub(pa.sub(x, neg_x), neg_x)
    else:
        negative = less_than_zero(ctx, x)
        neg_x = ring_mul_many(ctx, [negative], [x])[0]
        absolute = pa.sub(pa.sub(x, neg_x), neg_x)
        outside = less_than_zero(ctx, pa.add_public(ctx, pa.neg(absolute), bound))
    scale = _tail_scale(f, name)
    u = add_constant(ctx, absolute, -1.0, scale)
    tail = polynomial(ctx, u, chebyshev_fit(name, upper, degree), scale, f, work_scale=TAIL_SCALE)
    inside = pa.add_public(ctx, pa.neg(outside), 1)
    return negative, neg_x, inside, tail


def _tail_signs_variants(n: int, bits: int, network: NetworkProfile | None) -> dict[str, tuple[int, int]]:
    """Exact (rounds, bytes of all parties) of the comparisons of ``_fitted_tail`` on n
    elements, and of the product between them."""
    one, product = less_than_zero_cost(n, bits, network), (1, 24 * n)
    return {
        "sequential": total_cost([one, one, product]),
        "batched": total_cost([less_than_zero_cost(3 * n, bits, network), product]),
    }


def _tail_signs_variant(n: int, bits: int, network: NetworkProfile | None) -> str:
    variants = _tail_signs_variants(n, bits, network)
    # without a network: the one with fewer rounds for small tensors, else fewer bytes
    fewer_rounds = min(variants, key=lambda name: variants[name])
    return cheapest(network, variants, fewer_rounds if n <= SMALL_ELEMENTS else "sequential")


def tail_signs_cost(n: int, bits: int, network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of the signs, [|x| > T] and [x < 0] x in GeLU,
    SiLU and sigmoid on n elements (``bits``: the comparisons' ring bits), on parties whose
    context declares ``network``."""
    return _tail_signs_variants(n, bits, network)[_tail_signs_variant(n, bits, network)]


def _tail_scale(frac_bits: int, name: str) -> int:
    """The scale at which |x| reads as u + 1, u = 2|x|/T - 1."""
    return frac_bits + int(math.log2(TAIL_FITS[name][0])) - 1


def activation_cost(
    name: str,
    n: int,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``gelu`` (name "gelu" or "gelu_tanh"),
    ``silu``, ``sigmoid`` or ``tanh`` on n elements, on parties whose context declares
    ``network``."""
    if name in _EVEN_TARGETS:
        return _gelu_variants(name, n, frac_bits, compare_bits, network)[
            _gelu_variant(name, n, frac_bits, compare_bits, network)
        ]
    return _tail_variants(name, n, frac_bits, compare_bits, network)[
        _tail_variant(name, n, frac_bits, compare_bits, network)
    ]


def _tail_variants(
    name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of SiLU's, sigmoid's or tanh's tail form and
    lookup form on n elements."""
    return {
        "tail": _tail_form_cost(name, n, frac_bits, compare_bits, network),
        "lookup": activation_lookup_cost(name, n, frac_bits, compare_bits, network),
    }


@functools.cache
def _tail_variant(name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None) -> str:
    """The faster form on ``network``; without one, the tail form. Cached."""
    return cheapest(network, _tail_variants(name, n, frac_bits, compare_bits, network), "tail")


def _tail_form_cost(name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None) -> Cost:
    tail = "sigmoid" if name == "tanh" else name
    upper, degree = TAIL_FITS[tail]
    fit = chebyshev_fit(tail, upper, degree)
    products = 2 if tail == "sigmoid" else 1
    return total_cost([
        tail_signs_cost(n, compare_bits, network),
        polynomial_cost(n, fit, _tail_scale(frac_bits, tail), frac_bits, TAIL_SCALE, network),
        (products, 24 * products * n),
    ])  # fmt: skip


# GeLU's even form, where rounds are dear: GeLU(x) = x/2 + E(x) with E(x) = x (Phi(x) - 1/2)
# (or its tanh form's) even and smooth, so a polynomial in u = 2 x^2 / T^2 - 1 (degree 9:
# 7.7e-6 on [-4, 4]), and relu(x) beyond T. Its comparisons [x > T], [x < -T] need not wait
# for |x|: they run beside x^2 and the polynomial (``session.parallel``).
EVEN_DEGREE = 9
_EVEN_TARGETS = ("gelu", "gelu_tanh")


@functools.cache
def _even_fit(name: str) -> np.ndarray:
    """Monomial coefficients (constant first) in u in [-1, 1] of E(x) = x/2 - tail(|x|),
    x = T sqrt((1 + u) / 2): least squares on Chebyshev nodes."""
    upper = TAIL_FITS[name][0]
    u = _chebyshev_nodes()
    t = upper * np.sqrt((1 + u) / 2)
    vander = np.vander(u, EVEN_DEGREE + 1, increasing=True)
    return np.linalg.lstsq(vander, t / 2 - _TARGETS[name](t), rcond=None)[0]


def _square_shift(frac_bits: int, name: str) -> int:
    """The truncation of x^2 that reads as u + 1 = 2 x^2 / T^2 at TAIL_SCALE bits."""
    return 2 * frac_bits + 2 * int(math.log2(TAIL_FITS[name][0])) - TAIL_SCALE - 1


def _gelu_even(ctx: PartyContext, x: Pair, name: str) -> Pair:
    """GeLU by its even form: inside (x/2 + E(x)) + [x > T] x, inside = 1 - [x > T] -
    [x < -T]; x/2 rides in the polynomial's last truncation. Rounds: the comparisons beside
    x^2 and the polynomial (one chain of truncations), then 1."""
    f, s = ctx.frac_bits, TAIL_SCALE
    bound = round(TAIL_FITS[name][0] * 2**f)

    def outside() -> list[Pair]:
        batch = _stack([pa.add_public(ctx, pa.neg(x), bound), pa.add_public(ctx, x, bound)])
        return _unstack(less_than_zero(ctx, batch))  # [x > T], [x < -T]

    def half_plus_even() -> Pair:  # x^2 and the polynomial in one chain of truncations
        shape = tuple(x[0].shape)
        square: pa.Step = (shape, _square_shift(f, name), lambda _: pa.mul_local(x, x))
        poly = polynomial_steps(
            ctx, lambda outputs: add_constant(ctx, outputs[0], -1.0, s), shape, _even_fit(name), s, f, s, (x, f + 1), 1
        )
        return pa.truncate_chain(ctx, [square, *poly])[-1]

    (above, below), q = parallel(ctx, [outside, half_plus_even])
    inside = pa.add_public(ctx, pa.neg(pa.add(above, below)), 1)
    kept, relu = ring_mul_many(ctx, [inside, above], [q, x])
    return pa.add(kept, relu)


def _gelu_variants(
    name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of GeLU's tail form and its even form on n elements."""
    s = TAIL_SCALE
    square = (n, _square_shift(frac_bits, name))
    even = pa.truncate_chain_cost([square, *polynomial_parts(n, _even_fit(name), s, frac_bits, s)], network)
    return {
        "tail": _tail_form_cost(name, n, frac_bits, compare_bits, network),
        "even": total_cost([parallel_cost([less_than_zero_cost(2 * n, compare_bits, network), even]), (1, 48 * n)]),
        "lookup": activation_lookup_cost(name, n, frac_bits, compare_bits, network),
    }


@functools.cache
def _gelu_variant(name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None) -> str:
    """The faster form on ``network``; without one, the even form up to ``SMALL_ELEMENTS``
    elements and the tail form beyond (on loopback, [3072]: 11 rounds in 14.9 ms against 19
    in 15.2 ms; [32, 3072]: 12 rounds in 106 ms against 29 in 97 ms). Cached: a pure
    function of public facts, asked on every call."""
    fallback = "even" if n <= SMALL_ELEMENTS else "tail"
    return cheapest(network, _gelu_variants(name, n, frac_bits, compare_bits, network), fallback)


# The lookup form, where rounds are dear and elements few (a pooler's tanh under wan): x's
# bits down to 2^-ACTIVATION_LOOKUP_FRAC read F and F' from dealt tables on [-T, T) with
# T = 2^ACTIVATION_LOOKUP_RANGE_BITS in the truncation that makes them, one product corrects
# (F(x) ~ F(j) + F'(j) d, |d| <= 2^-6: error <= max|F''| 2^-13: tanh 9.4e-5, GeLU 9.7e-5,
# SiLU 6.1e-5, sigmoid 1.2e-5), and beyond T the limits: F(x) = x or a constant (as the
# tail forms take them: sigmoid leaves 1 by 3.4e-4 there, SiLU leaves x by 2.7e-3).
ACTIVATION_LOOKUP_FRAC = 6
ACTIVATION_LOOKUP_RANGE_BITS = 3
ACTIVATION_LOOKUP_BITS = ACTIVATION_LOOKUP_RANGE_BITS + 1 + ACTIVATION_LOOKUP_FRAC  # the tables' index bits K


def _gelu_tanh_slope(x: np.ndarray) -> np.ndarray:
    k = math.sqrt(2 / math.pi)
    t = np.tanh(k * (x + 0.044715 * x**3))
    return (1 + t) / 2 + x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x) / 2


# F itself from the tails' definitions (relu(t) - F(t), for any real t, and sigmoid(-t)), and F'
_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "gelu": (
        lambda x: x - _gelu_tail(x),
        lambda x: (1 + _erf(x / math.sqrt(2))) / 2 + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
    ),
    "gelu_tanh": (lambda x: x - _gelu_tanh_tail(x), _gelu_tanh_slope),
    "silu": (lambda x: x - _silu_tail(x), lambda x: (1 + np.exp(-x) + x * np.exp(-x)) / (1 + np.exp(-x)) ** 2),
    "sigmoid": (lambda x: _sigmoid_tail(-x), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
}
# F's limits below -T and above T: a constant, or x itself (None)
_LIMITS: dict[str, tuple[float, float | None]] = {
    "gelu": (0.0, None),
    "gelu_tanh": (0.0, None),
    "silu": (0.0, None),
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
}


@functools.cache
def _activation_tables(name: str, frac_bits: int, device: torch.device) -> torch.Tensor:
    """(2, 2^K) ring values, K = range bits + 1 + frac: F(j / 2^frac) at f bits and F' at
    LOOKUP_SCALE, entry j for the signed j (two's complement in K bits), on ``device``."""
    bits = ACTIVATION_LOOKUP_BITS
    signed = np.arange(1 << bits, dtype=np.float64)
    signed[signed >= 1 << (bits - 1)] -= 1 << bits
    fn, slope = _ACTIVATIONS[name]
    x = signed / 2**ACTIVATION_LOOKUP_FRAC
    values = np.stack([fn(x) * 2.0**frac_bits, slope(x) * 2.0**LOOKUP_SCALE])
    return torch.from_numpy(np.round(values).astype(np.int64)).to(device)


def activation_by_lookup(ctx: PartyContext, x: Pair, name: str) -> Pair:
    """F(x) for ``name`` in gelu, gelu_tanh, silu, sigmoid, tanh by dealt tables (above):
    beside the clip comparisons [x >= T - 2^-6] and [x < -T] (``session.parallel``; the top
    64th of the range takes the limit, as the truncation may read one entry up), x truncated to
    its bits down to 2^-6 reads F(j) and F'(j) (``truncate_many``'s lookups: 2 rounds, 16 KiB
    per element dealt), d = x - j is local, F'(j) d takes one truncation; then inside F(j) +
    F'(j) d, [x >= T] times x or the upper limit and [x < -T] times the lower one take one
    product round. Cost: ``activation_lookup_cost``."""
    f, frac = ctx.frac_bits, ACTIVATION_LOOKUP_FRAC
    bound = 1 << (f + ACTIVATION_LOOKUP_RANGE_BITS)
    top = bound - (1 << (f - frac))  # T - 2^-6: below it, j + 1 < 2^(K-1) reads no wrapped entry
    low, high = _LIMITS[name]

    def outside() -> list[Pair]:
        batch = _stack([pa.add_public(ctx, pa.neg(x), top - 1), pa.add_public(ctx, x, bound)])
        return _unstack(less_than_zero(ctx, batch))  # [x >= T - 2^-6], [x < -T]

    def inside_value() -> Pair:
        ((index, looked_up),) = pa.truncate_many(ctx, [(x[0], f - frac, _activation_tables(name, f, ctx.device))])
        value, slope = _unstack(looked_up)
        d = pa.sub(x, pa.mul_public(index, 1 << (f - frac)))  # x - j 2^-frac, at f bits
        return pa.add(value, pa.truncate_additive(ctx, pa.mul_local(slope, d), LOOKUP_SCALE))

    (above, below), value = parallel(ctx, [outside, inside_value])
    inside = pa.add_public(ctx, pa.neg(pa.add(above, below)), 1)
    if high is None:  # x itself above T
        kept, upper = ring_mul_many(ctx, [inside, above], [value, x])
    else:
        (kept,) = ring_mul_many(ctx, [inside], [value])
        upper = pa.mul_public(above, round(high * 2**f))
    return pa.add(pa.add(kept, upper), pa.mul_public(below, round(low * 2**f)))


def activation_lookup_cost(
    name: str, n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``activation_by_lookup`` on n elements."""
    products = 2 if _LIMITS[name][1] is None else 1
    lookup = total_cost([
        pa.truncate_many_cost([(n, frac_bits - ACTIVATION_LOOKUP_FRAC, 2, ACTIVATION_LOOKUP_BITS)]),
        pa.truncation_cost(n, LOOKUP_SCALE, network),
    ])  # fmt: skip
    return total_cost(
        [parallel_cost([less_than_zero_cost(2 * n, compare_bits, network), lookup]), (1, 24 * products * n)]
    )


def _relu_minus_tail(ctx: PartyContext, x: Pair, name: str) -> Pair:
    _, neg_x, inside, tail = _fitted_tail(ctx, x, name)
    return pa.sub(pa.sub(x, neg_x), ring_mul_many(ctx, [inside], [tail])[0])


def gelu(ctx: PartyContext, x: Pair, approximate: str = "none") -> Pair:
    """GeLU(x) = relu(x) - g(|x|), g(t) = t (1 - Phi(t)) fitted by a degree-10 polynomial on
    [0, 4] and 0 beyond (|error| < 2e-4 before fixed point). ``approximate="tanh"`` fits the
    tanh form's tail instead. Cost (``activation_cost``): the signs (``tail_signs_cost``:
    one or two comparisons and a product), the polynomial (8 rounds) and a product; or, where
    the network makes rounds dear, the even form (``_gelu_even``: 3 rounds fewer), or for few
    elements the lookup form (``activation_by_lookup``)."""
    name = "gelu_tanh" if approximate == "tanh" else "gelu"
    variant = _gelu_variant(name, x[0].numel(), ctx.frac_bits, ctx.compare_bits, ctx.network)
    if variant == "even":
        return _gelu_even(ctx, x, name)
    if variant == "lookup":
        return activation_by_lookup(ctx, x, name)
    return _relu_minus_tail(ctx, x, name)


def silu(ctx: PartyContext, x: Pair) -> Pair:
    """SiLU(x) = x sigmoid(x) = relu(x) - t sigmoid(-t), t = |x|, fitted on [0, 8]; or by
    lookup (``activation_by_lookup``) where the network makes that faster."""
    if _tail_variant("silu", x[0].numel(), ctx.frac_bits, ctx.compare_bits, ctx.network) == "lookup":
        return activation_by_lookup(ctx, x, "silu")
    return _relu_minus_tail(ctx, x, "silu")


def sigmoid(ctx: PartyContext, x: Pair) -> Pair:
    """sigmoid(x) = [x >= 0] + (2[x < 0] - 1) q(|x|), q(t) = sigmoid(-t) fitted on [0, 8]; or
    by lookup (``activation_by_lookup``) where the network makes that faster."""
    if _tail_variant("sigmoid", x[0].numel(), ctx.frac_bits, ctx.compare_bits, ctx.network) == "lookup":
        return activation_by_lookup(ctx, x, "sigmoid")
    return _sigmoid_tail_form(ctx, x)


def _sigmoid_tail_form(ctx: PartyContext, x: Pair) -> Pair:
    f = ctx.frac_bits
    negative, _, inside, q = _fitted_tail(ctx, x, "sigmoid")
    sign = pa.add_public(ctx, pa.add(negative, negative), -1)  # 2[x < 0] - 1
    (masked_q,) = ring_mul_many(ctx, [inside], [q])
    (signed_q,) = ring_mul_many(ctx, [sign], [masked_q])
    nonneg = pa.add_public(ctx, pa.neg(negative), 1)  # [x >= 0]
    return pa.add(pa.mul_public(nonneg, 1 << f), signed_q)


def tanh(ctx: PartyContext, x: Pair) -> Pair:
    """tanh(x) = 2 sigmoid(2x) - 1; or by lookup (``activation_by_lookup``) where the network
    makes that faster."""
    if _tail_variant("tanh", x[0].numel(), ctx.frac_bits, ctx.compare_bits, ctx.network) == "lookup":
        return activation_by_lookup(ctx, x, "tanh")
    f = ctx.frac_bits
    doubled = pa.add(x, x)
    s = _sigmoid_tail_form(ctx, doubled)
    return add_constant(ctx, pa.add(s, s), -1.0, f)


# --------------------------------------------------------------------------- exp


EXP_SQUARINGS = 5
# q(y) = 1 + 2y + 2y^2 + c3 y^3 + c4 y^4 ~ e^(2y) on y = x/32 in [-14/32, 0]; c3, c4 at up to
# EXP_QUARTIC_BITS fractional bits (their rounding moves exp by < 1e-8 at f = 18).
EXP_QUARTIC_BITS = 14


@functools.cache
def _exp_quartic(frac_bits: int) -> tuple[int, int, int]:
    """(c3, c4, b): ``exp``'s q's coefficients at b fractional bits, b = EXP_QUARTIC_BITS or
    fewer where c3 y^2 y + c4 y^2 y^2 at scale 2s + b (s = f + 5) could reach 2^62 for
    |y| <= 1 (it is below 1.93 2^(2s+b)): b = min(14, 60 - 2s), 14 up to f = 18, 10 at
    f = 20, 2 at f = 24 (beyond, too few to fit: refused). The fit: least squares of
    e^(2y) - 1 - 2y - 2y^2 on Chebyshev nodes of y in [-14/32, 0], weighted by e^(30y) (an
    error d in q moves q^16 by about 16 e^(30y) d), so the absolute error of exp is what is
    minimised."""
    bits = min(EXP_QUARTIC_BITS, 60 - 2 * (frac_bits + EXP_SQUARINGS))
    if bits < 2:
        raise ValueError(f"exp needs frac_bits <= {29 - EXP_SQUARINGS}, got {frac_bits}")
    low = -14 / 2**EXP_SQUARINGS
    y = low / 2 * (1 - _chebyshev_nodes())
    weight = np.exp(2 * (2 ** (EXP_SQUARINGS - 1) - 1) * y)
    basis = np.stack([y**3, y**4], 1) * weight[:, None]
    target = (np.exp(2 * y) - 1 - 2 * y - 2 * y * y) * weight
    c3, c4 = np.linalg.lstsq(basis, target, rcond=None)[0]
    return round(c3 * 2**bits), round(c4 * 2**bits), bits


def exp(ctx: PartyContext, x: Pair) -> Pair:
    """exp(x) = q(x / 32)^16 with q(y) = 1 + 2y + 2y^2 + c3 y^3 + c4 y^4 ~ e^(2y) (c3, c4
    fitted: ``_exp_quartic``), for x in [-32, (62 - 2s) ln 2], s = f + 5: [-32, 11] at
    f = 18 (above, the last product, e^x at scale 2s, overflows).

    x at scale f is y = x/32 at scale s (free). y^2 is x x truncated by s. c3 y^3 + c4 y^4
    is one truncation, by s + b, of c3 y^2 y + c4 y^2 y^2 (the coefficients at b bits, 14
    at f = 18, fewer above, so the sum stays below 2^62): both are products of
    y^2, so they take one depth, and 1 + 2y + 2y^2 is added to it locally. Four squarings
    follow, each truncated by s, the last by s + 5 to land at scale f. Max error 4.4e-7 on
    [-14, 0] before fixed-point rounding (6e-6 after it); above 0, where q is not fitted, the
    relative error grows to 2% at 11. The old (1 + y + y^2/2)^32 erred by up to 2.4e-4,
    always upwards, so a softmax's row sums drifted with the row's length; PUMA's
    (1 + x/32)^32: 8.6e-3. Cost: 6 products, their truncations one chain
    (``truncate_chain``: 12 rounds, or 13 by the byte-optimal one).
    """
    scale = ctx.frac_bits + EXP_SQUARINGS
    shape = tuple(x[0].shape)
    c3, c4, _ = _exp_quartic(ctx.frac_bits)

    def quartic(outputs: list[Pair]) -> torch.Tensor:
        square = outputs[0]
        return pa.mul_local(square, x) * c3 + pa.mul_local(square, square) * c4

    def first_square(outputs: list[Pair]) -> torch.Tensor:
        linear = pa.add(pa.add(x, x), pa.add(outputs[0], outputs[0]))
        q = add_constant(ctx, pa.add(linear, outputs[1]), 1.0, scale)
        return pa.mul_local(q, q)

    def square(outputs: list[Pair]) -> torch.Tensor:
        return pa.mul_local(outputs[-1], outputs[-1])

    products = [lambda _: pa.mul_local(x, x), quartic, first_square] + [square] * (EXP_SQUARINGS - 2)
    steps = [(shape, bits, z) for bits, z in zip(_exp_shifts(ctx.frac_bits), products, strict=True)]
    return pa.truncate_chain(ctx, steps)[-1]


def _exp_shifts(frac_bits: int) -> list[int]:
    """The truncations of ``exp``'s products: y^2, q's cubic and quartic terms by their
    coefficients' bits more, the squarings, the last by EXP_SQUARINGS more."""
    scale = frac_bits + EXP_SQUARINGS
    return [scale, scale + _exp_quartic(frac_bits)[2]] + [scale] * (EXP_SQUARINGS - 2) + [scale + EXP_SQUARINGS]


def exp_cost(n: int, frac_bits: int = DEFAULT_FRAC_BITS, network: NetworkProfile | None = None) -> Cost:
    """Exact (rounds, bytes of all parties) of ``exp`` on n elements."""
    return pa.truncate_chain_cost([(n, bits) for bits in _exp_shifts(frac_bits)], network)


# exp by a dealt lookup, for x in [-15.96, 0] (softmax, whose clip zeroes x < -14): x's bits
# down to 2^-6 index exp(y / 64) (2^10 entries, at 28 bits), and exp(t) on |t| <= 1/64 is
# alpha + beta t (least squares on Chebyshev nodes, relative error 6.1e-5). 8 KiB per element
# for 8 rounds fewer than ``exp``: picked by the network (without one, never: on loopback the
# tables cost more time than the rounds save).
EXP_LOOKUP_STEP_BITS = 6
EXP_LOOKUP_SCALE = 28
EXP_LOOKUP_LINEAR_BITS = 12
EXP_LOOKUP_BITS = 10
_EXP_NODES = _chebyshev_nodes(200) / 2**EXP_LOOKUP_STEP_BITS
_EXP_LINEAR = np.polyfit(_EXP_NODES, np.exp(_EXP_NODES), 1)[::-1]  # alpha, beta


@functools.cache
def _exp_table(device: torch.device) -> torch.Tensor:
    """exp(v / 64) at EXP_LOOKUP_SCALE bits at index v mod 2^10, for v in [-1022, 1]: v = 1
    (x just below 0 truncated one up) shares its entry with v = -1023 (x < -15.96, which the
    clip zeroes); on ``device``."""
    size = 1 << EXP_LOOKUP_BITS
    v = np.arange(size, dtype=np.float64)
    v = np.where(v <= 1, v, v - size)
    return (
        torch.from_numpy(np.round(np.exp(v / 2**EXP_LOOKUP_STEP_BITS) * 2**EXP_LOOKUP_SCALE).astype(np.int64))
        .unsqueeze(0)
        .to(device)
    )


def exp_lookup(ctx: PartyContext, x: Pair) -> Pair:
    """exp(x) for x in [-15.96, 0] (garbage below: callers zero it); relative error 6.2e-5.

    y = floor(x 2^6) (or one more) reads T = exp(y / 64) from dealt tables in the same
    truncation (``truncate_many``); with t = x - y / 64 in [-1/64, 1/64], exp(x) = T
    (alpha + beta t), alpha + beta t local at f + 12 bits: one product. 4 rounds."""
    f, c = ctx.frac_bits, EXP_LOOKUP_LINEAR_BITS
    ((y, looked_up),) = pa.truncate_many(ctx, [(x[0], f - EXP_LOOKUP_STEP_BITS, _exp_table(ctx.device))])
    t = pa.sub(x, pa.mul_public(y, 1 << (f - EXP_LOOKUP_STEP_BITS)))
    alpha, beta = float(_EXP_LINEAR[0]), float(_EXP_LINEAR[1])
    linear = add_constant(ctx, pa.mul_public(t, round(beta * 2**c)), alpha, f + c)
    table = (looked_up[0][0], looked_up[1][0])
    return pa.truncate_additive(ctx, pa.mul_local(table, linear), EXP_LOOKUP_SCALE + c)


def exp_lookup_cost(n: int, frac_bits: int = DEFAULT_FRAC_BITS, network: NetworkProfile | None = None) -> Cost:
    """Exact (rounds, bytes of all parties) of ``exp_lookup`` on n elements."""
    return total_cost([
        pa.truncate_many_cost([(n, frac_bits - EXP_LOOKUP_STEP_BITS, 1, EXP_LOOKUP_BITS)]),
        pa.truncation_cost(n, EXP_LOOKUP_SCALE + EXP_LOOKUP_LINEAR_BITS, network),
    ])  # fmt: skip


def _softmax_exp_variants(n: int, frac_bits: int, network: NetworkProfile | None) -> dict[str, Cost]:
    return {"polynomial": exp_cost(n, frac_bits, network), "lookup": exp_lookup_cost(n, frac_bits, network)}


@functools.cache
def _softmax_exp_variant(n: int, frac_bits: int, network: NetworkProfile | None) -> str:
    return cheapest(network, _softmax_exp_variants(n, frac_bits, network), "polynomial")


# --------------------------------------------------------------------------- normalisation


@functools.cache
def _prefix_plan(m: int, device: torch.device = _CPU) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The levels of a Sklansky prefix over m positions: at step d, each position i in the
    upper half of its 2d-block (target) combines with the top of the lower half (source)
    (index tensors on ``device``)."""
    plan, d = [], 1
    while d < m:
        targets = [i for i in range(m) if (i // d) % 2 == 1]
        plan.append(
            (torch.tensor(targets, device=device), torch.tensor([(i // d) * d - 1 for i in targets], device=device))
        )
        d *= 2
    return plan


def _prefix(ctx: PartyContext, g: BitPair, p: BitPair | None) -> BitPair:
    """Sklansky parallel prefix over planes [m, nb] (low -> high): with p, group generates
    G_i of [0, i]; without p, prefix ANDs. ceil(log2 m) rounds."""
    g = (g[0].clone(), g[1].clone())
    p = None if p is None else (p[0].clone(), p[1].clone())
    for targets, sources in _prefix_plan(g[0].shape[0], g[0].device):
        k = len(targets)
        if p is None:
            r = and_(ctx, (g[0][targets], g[1][targets]), (g[0][sources], g[1][sources]))
            for j in range(2):
                g[j][targets] = r[j]
        else:
            left = tuple(torch.cat([s[targets], s[targets]]) for s in p)
            right = (torch.cat([g[0][sources], p[0][sources]]), torch.cat([g[1][sources], p[1][sources]]))
            r = and_(ctx, left, right)
            for j in range(2):
                g[j][targets] ^= r[j][:k]
                p[j][targets] = r[j][k:]
    return g


def bit_decompose_cost(n: int, bits: int) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``bit_decompose`` (A2B) on n elements."""
    levels = [len(targets) for targets, _ in _prefix_plan(bits - 1)]
    planes = (bits - 1) + (bits - 1) + sum(2 * k for k in levels)
    return 2 + len(levels), 3 * planes * ((n + 7) // 8)


def bit_decompose(ctx: PartyContext, x: Pair, bits: int) -> BitPair:
    """XOR-shared bits 0..bits-1 of x mod 2^bits as packed planes [bits, ceil(n/8)].

    Carry-save layer (1 round) + generate bits (1 round) + Sklansky prefix (log2 rounds)."""
    first, second = x[0].reshape(-1), x[1].reshape(-1)
    s = (bit_planes(first, bits), bit_planes(second, bits))
    maj = reshare_bits(ctx, bit_planes(first & second, bits - 1))
    zero = torch.zeros_like(s[0][:1])
    c = (torch.cat([zero, maj[0]]), torch.cat([zero, maj[1]]))  # c_j = maj_{j-1}
    g = and_(ctx, (s[0][: bits - 1], s[1][: bits - 1]), (c[0][: bits - 1], c[1][: bits - 1]))
    p = xor(s, c)
    carries = _prefix(ctx, g, (p[0][: bits - 1], p[1][: bits - 1]))  # carry into j+1
    return (
        p[0] ^ torch.cat([zero, carries[0]]),
        p[1] ^ torch.cat([zero, carries[1]]),
    )


def highest_bit(ctx: PartyContext, planes: BitPair) -> BitPair:
    """One-hot planes e_j = [j is the highest set bit] (all zero for x = 0).

    h_j = OR of bits >= j by a prefix AND of the complements from the top (log2 rounds);
    e_j = h_j xor h_{j+1}."""
    ones = torch.full_like(planes[0], 255)
    complement = xor_public(ctx, planes, ones)
    flipped = (complement[0].flip(0), complement[1].flip(0))
    all_clear = _prefix(ctx, flipped, None)  # A_j = AND_{i >= j} not b_i, top first
    a = (all_clear[0].flip(0), all_clear[1].flip(0))
    zero = torch.zeros_like(a[0][:1])
    above = tuple(torch.cat([share[1:], zero]) for share in a)  # A_{j+1}, with A_l = 1 below
    top = torch.zeros_like(above[0])
    top[-1] = 255
    return xor(a, xor_public(ctx, above, top))


def _threshold_powers(ctx: PartyContext, x: Pair, bits: int, exponent_lists: list[list[int]]) -> list[Pair]:
    """2^v(p) for positive X < 2^(bits-1) with highest set bit p, for each exponent list v,
    from all comparisons X >= 2^j in one batch (``less_than_zero`` with integer outputs):
    h_j = [X >= 2^j] (h_0 = 1, h_{bits-1} = 0), the one-hot e_j = h_j - h_{j+1} and
    2^v(p) = sum_j e_j 2^v(j) are local. The comparisons' rounds only (4 by dealt tables,
    9 by the bit circuit), instead of the 14 of A2B, a prefix AND and an injection."""
    n = x[0].numel()
    flat = (x[0].reshape(1, -1), x[1].reshape(1, -1))
    thresholds = 1 << torch.arange(1, bits - 1, device=ctx.device).unsqueeze(1)
    diffs = pa.add_public(ctx, (flat[0].expand(bits - 2, n), flat[1].expand(bits - 2, n)), -thresholds)
    below = less_than_zero(ctx, (diffs[0].reshape(bits - 2, n), diffs[1].reshape(bits - 2, n)), bits)
    out = []
    for exponents in exponent_lists:
        # sum_j (h_j - h_{j+1}) 2^v(j) = 2^v(0) + sum_{j>=1} h_j (2^v(j) - 2^v(j-1)), h_j = 1 - below_j
        steps = [(1 << exponents[j]) - (1 << exponents[j - 1]) for j in range(1, bits - 1)]
        weights = torch.tensor(steps, device=ctx.device).unsqueeze(1)
        base = (1 << exponents[0]) + sum(steps)  # in Python: no read back from the device
        acc = pa.neg(((below[0] * weights).sum(0), (below[1] * weights).sum(0)))
        out.append(pa.add_public(ctx, acc, base))
    return out


def powers_of_highest_bit(ctx: PartyContext, x: Pair, bits: int, exponent_lists: list[list[int]]) -> list[Pair]:
    """Integer shares of 2^v(p) (shaped as x) for positive X < 2^(bits-1) with highest set bit
    p, for each exponent list v: by thresholds for small tensors (fewer rounds), by A2B, a
    prefix AND and ``powers_of_two`` otherwise (fewer bytes)."""
    n = x[0].numel()
    if n <= SMALL_ELEMENTS:
        powers = _threshold_powers(ctx, x, bits, exponent_lists)
    else:
        powers = powers_of_two(ctx, highest_bit(ctx, bit_decompose(ctx, x, bits)), exponent_lists, n)
    return [(p[0].reshape(x[0].shape), p[1].reshape(x[0].shape)) for p in powers]


def _function_bits(onehot: BitPair, values: list[int], nbits: int) -> BitPair:
    """Packed bits of v(j) for the one-hot position j: bit i = xor of e_j over j with bit i of v(j)."""
    out = []
    for share in onehot:
        planes = []
        for i in range(nbits):
            rows = [j for j, v in enumerate(values) if (v >> i) & 1]
            acc = torch.zeros_like(share[0])
            for j in rows:
                acc = acc ^ share[j]
            planes.append(acc)
        out.append(torch.stack(planes))
    return out[0], out[1]


def powers_of_two(ctx: PartyContext, onehot: BitPair, exponent_lists: list[list[int]], n: int) -> list[Pair]:
    """Integer shares of 2^v(j), for each exponent list v, at the secret one-hot position j
    (packed planes over n elements), for large tensors (byte-bound): the bits of v(j) are
    local XORs of the one-hot planes, one bit injection brings them over, and 2^v =
    prod_i (1 + v_i (2^(2^i) - 1)) by a tree of exact products (the injection's rounds +
    ceil(log2 bits))."""
    planes = onehot[0].shape[0]
    exponent_lists = [v[:planes] for v in exponent_lists]  # positions past the planes cannot occur
    results = []
    for exponents in exponent_lists:
        nbits = max(1, max(exponents).bit_length())
        arith = _unstack(bit_to_arith(ctx, _function_bits(onehot, exponents, nbits), (nbits, n)))
        factors = [pa.add_public(ctx, pa.mul_public(b, 2 ** (2**i) - 1), 1) for i, b in enumerate(arith)]
        while len(factors) > 1:
            half = len(factors) // 2
            factors = ring_mul_many(ctx, factors[:half], factors[half : 2 * half]) + factors[2 * half :]
        results.append(factors[0])
    return results


def powers_of_highest_bit_cost(
    n: int, bits: int, exponent_lists: list[list[int]], network: NetworkProfile | None = None
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``powers_of_highest_bit`` on n elements."""
    if n <= SMALL_ELEMENTS:
        return less_than_zero_cost((bits - 2) * n, bits, network)
    packed = (n + 7) // 8
    costs = [bit_decompose_cost(n, bits)] + [(1, 3 * len(targets) * packed) for targets, _ in _prefix_plan(bits)]
    for exponents in exponent_lists:
        nbits = max(1, max(exponents[:bits]).bit_length())
        costs.append(bit_to_arith_cost(n, 64, network, rows=nbits))
        while nbits > 1:
            costs.append((1, 24 * (nbits // 2) * n))
            nbits -= nbits // 2
    return total_cost(costs)


def _monomial_fit(fn: Callable[[np.ndarray], np.ndarray], low: float, degree: int) -> np.ndarray:
    """Least-squares monomial coefficients (constant first) of ``fn`` on [low, 1], Chebyshev nodes."""
    nodes = (1 + low) / 2 + (1 - low) / 2 * _chebyshev_nodes()
    return np.polyfit(nodes, fn(nodes), degree)[::-1]


# Lookups: a normalised value v in [low, 1] is truncated twice in one call of
# ``truncate_many``, to its top LOOKUP_BITS bits j (which read dealt tables of f and f' at
# j / 2^k) and to LOOKUP_SCALE bits; f(v) ~ f(j/2^k) + f'(j/2^k) (v - j/2^k) then takes one
# product. The tables cost 16 KiB per element (D to B), so the variant pays where rounds are
# dear and elements few (a row statistic); without a network, up to LOOKUP_ELEMENTS.
LOOKUP_BITS = 10
LOOKUP_SCALE = 28
LOOKUP_ELEMENTS = 64
_NORMALISED: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray], float]] = {
    "reciprocal": (lambda c: 1 / c, lambda c: -1 / c**2, 0.5),
    "rsqrt": (lambda u: u**-0.5, lambda u: -0.5 * u**-1.5, 0.25),
}


@functools.cache
def _lookup_tables(name: str, value_scale: int, device: torch.device) -> torch.Tensor:
    """(2, 2^k) ring values: f(j / 2^k) at ``value_scale`` and f'(j / 2^k) at LOOKUP_SCALE,
    for j in [low 2^k, 2^k), and at entry 0 those of j = 2^k (a truncation may give one more
    than the floor, and 2^k wraps to 0); entries below low 2^k are never read. On ``device``."""
    fn, slope, low = _NORMALISED[name]
    size = 1 << LOOKUP_BITS
    j = np.maximum(np.arange(size, dtype=np.float64), low * size)
    j[0] = size
    values = np.stack([fn(j / size) * 2.0**value_scale, slope(j / size) * 2.0**LOOKUP_SCALE])
    return torch.from_numpy(np.round(values).astype(np.int64)).to(device)


def _normalised_lookup(
    ctx: PartyContext,
    z: torch.Tensor,
    z_scale: int,
    name: str,
    out_scale: int,
    side: list[tuple[torch.Tensor, int, None]],
) -> tuple[Pair, list[Pair]]:
    """f(v) at ``out_scale`` (<= LOOKUP_SCALE s) for v = z / 2^z_scale in [low, 1] (z: 3-out-of-3 shares), with
    the ``side`` truncations in the same call: j = v's top k bits (reading f(j/2^k) and
    f'(j/2^k)) and v at s bits, then f(v) ~ f(j/2^k) + f'(j/2^k) d with |d| = |v - j/2^k|
    <= 2^-k (either truncation may be one more than the floor). Error <= max|f''| 2^-2k / 2:
    rsqrt 1.2e-5, reciprocal 7.7e-6 (relative). Rounds: 2 + 2."""
    s, k = LOOKUP_SCALE, LOOKUP_BITS
    tables = _lookup_tables(name, out_scale, ctx.device)
    outs = pa.truncate_many(ctx, [(z, z_scale - s, None), (z, z_scale - k, tables), *side])
    fine, (index, looked_up) = outs[0][0], outs[1]
    value, slope = _unstack(looked_up)
    d = pa.sub(fine, pa.mul_public(index, 1 << (s - k)))
    correction = pa.truncate_additive(ctx, pa.mul_local(slope, d), 2 * s - out_scale)
    return pa.add(value, correction), [y for y, _ in outs[2:]]


def _lookup_cost(
    n: int, z_scale: int, out_scale: int, side: list[tuple[int, int, int, int]], network: NetworkProfile | None
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``_normalised_lookup`` on n elements."""
    s, k = LOOKUP_SCALE, LOOKUP_BITS
    parts = [(n, z_scale - s, 0, 0), (n, z_scale - k, 2, k), *side]
    return total_cost([pa.truncate_many_cost(parts), pa.truncation_cost(n, 2 * s - out_scale, network)])


def _normaliser_variant(n: int, variants: dict[str, Cost], network: NetworkProfile | None) -> str:
    """The normaliser's variant ("lookup" or "polynomial") that is faster on ``network``;
    without one, the lookup up to LOOKUP_ELEMENTS elements."""
    return cheapest(network, variants, "lookup" if n <= LOOKUP_ELEMENTS else "polynomial")


Multiplier = tuple[Pair, int]  # a secret factor M and its scale: a result times M w g 2^-e
INVERSE_EXTRA_BITS = 8  # an unfolded multiplier's factor w g keeps 8 more bits
FOLD_ELEMENTS = 1 << 14


@dataclass(frozen=True)
class _Output:
    """How a normalised w (at ``w_scale``) and the factor g become the result, times w g
    2^-(w_scale + base) at the output scale, or times M w g 2^-(w_scale + base + M's scale)
    with a multiplier (``multiplier``: M's elements after broadcasting and its scale).

    ``times`` rides as ``extra`` bits in a truncation. The multiplier's first product M g is
    truncated in the normalisation's truncation call (``mode`` "folded") or beside the
    normalisation by the network's own truncation (``session.parallel``; "beside": where
    that truncation takes fewer bytes, as the 3-round one does, and no more rounds than the
    normalisation, whose lookup takes 4), and M g w takes the last product: 2 rounds fewer,
    one more truncation of M's size. Otherwise ("separate") w g comes first, at 8 more bits,
    and M (w g) last."""

    base: int
    extra: int
    times: float
    multiplier: tuple[int, int] | None
    network: NetworkProfile | None

    @property
    def first_bits(self) -> int:
        assert self.multiplier is not None
        bits = self.multiplier[1] + self.base + self.extra
        if bits < 1:
            raise ValueError("the multiplier's scale is too small for this output scale")
        return bits

    @property
    def mode(self) -> str:
        """How M g is truncated: "folded" or "beside" where the bytes of its truncation cost
        less than the two rounds it saves, else "separate"; without a network, folded up to
        FOLD_ELEMENTS elements of M."""
        if self.multiplier is None:
            return "separate"
        elements, bits = self.multiplier[0], self.first_bits
        variants = {
            "folded": (0, pa.truncate_many_cost([(elements, bits, 0, 0)])[1]),
            "beside": (0, pa.truncation_cost(elements, bits, self.network)[1]),
            "separate": (2, 0),
        }
        fallback = "folded" if elements <= FOLD_ELEMENTS else "separate"
        return cheapest(self.network, variants, fallback)

    def normalise(
        self,
        ctx: PartyContext,
        fn: Callable[[list[tuple[torch.Tensor, int, None]]], tuple[Pair, list[Pair]]],
        g: Pair,
        multiplier: Multiplier | None,
    ) -> tuple[Pair, list[Pair]]:
        """``fn(side)`` (the normalisation, with ``side`` parts in its first truncation call)
        and M g truncated as ``mode`` says: (w, [M g]) or (w, []) where separate."""
        mode = self.mode
        if multiplier is None or mode == "separate":
            return fn([])
        first = self._times(pa.mul_local(multiplier[0], g))
        if mode == "folded":
            return fn([(first, self.first_bits, None)])
        (w, _), settled = parallel(ctx, [lambda: fn([]), lambda: pa.truncate_additive(ctx, first, self.first_bits)])
        return w, [settled]

    def normalise_cost(self, fn: Callable[[list[tuple[int, int, int, int]]], list[Cost]]) -> list[Cost]:
        """The costs of ``normalise``, given those of ``fn`` for its side parts."""
        mode = self.mode
        if self.multiplier is None or mode == "separate":
            return fn([])
        if mode == "folded":
            return fn([(self.multiplier[0], self.first_bits, 0, 0)])
        beside = pa.truncation_cost(self.multiplier[0], self.first_bits, self.network)
        return [parallel_cost([total_cost(fn([])), beside])]

    def result(
        self, ctx: PartyContext, w: Pair, w_scale: int, g: Pair, side: list[Pair], multiplier: Multiplier | None
    ) -> Pair:
        if side:
            (first,) = side
            return pa.truncate_additive(ctx, pa.mul_local(first, _expand(w, first)), w_scale)
        if multiplier is None:
            return pa.truncate_additive(ctx, self._times(pa.mul_local(w, g)), w_scale + self.base + self.extra)
        wg = pa.truncate_additive(
            ctx, self._times(pa.mul_local(w, g)), w_scale + self.base + self.extra - INVERSE_EXTRA_BITS
        )
        factor, scale = multiplier
        return pa.truncate_additive(ctx, pa.mul_local(factor, wg), scale + INVERSE_EXTRA_BITS)

    def result_cost(self, n: int, w_scale: int) -> list[Cost]:
        bits = w_scale + self.base + self.extra
        if self.mode != "separate":
            return [pa.truncation_cost(self.multiplier[0], w_scale, self.network)]
        if self.multiplier is None:
            return [pa.truncation_cost(n, bits, self.network)]
        elements, scale = self.multiplier
        return [
            pa.truncation_cost(n, bits - INVERSE_EXTRA_BITS, self.network),
            pa.truncation_cost(elements, scale + INVERSE_EXTRA_BITS, self.network),
        ]

    def _times(self, z: torch.Tensor) -> torch.Tensor:
        return z * round(self.times * 2**self.extra) if self.extra else z


def _expand(w: Pair, like: Pair) -> Pair:
    return w[0].expand_as(like[0]), w[1].expand_as(like[1])


def _multiplier_size(x: Pair, multiplier: tuple[Pair | pa.Owed, int] | None) -> tuple[int, int] | None:
    """(M's elements broadcast against x, M's scale), M as shares or with its truncation owed."""
    if multiplier is None:
        return None
    factor = multiplier[0]
    shape = factor.additive.shape if isinstance(factor, pa.Owed) else factor[0].shape
    return torch.broadcast_shapes(x[0].shape, shape).numel(), multiplier[1]


def _truncate_with(
    ctx: PartyContext, z: torch.Tensor, bits: int, side: list[tuple[torch.Tensor, int, None]]
) -> tuple[Pair, list[Pair]]:
    """z truncated by ``bits`` and the side parts in one ``truncate_many`` call, or alone by
    the policy's truncation without side parts."""
    if not side:
        return pa.truncate_additive(ctx, z, bits), []
    (first, _), *rest = pa.truncate_many(ctx, [(z, bits, None), *side])
    return first, [y for y, _ in rest]


def _truncate_with_cost(
    n: int, bits: int, side: list[tuple[int, int, int, int]], network: NetworkProfile | None
) -> Cost:
    return pa.truncate_many_cost([(n, bits, 0, 0), *side]) if side else pa.truncation_cost(n, bits, network)


RECIPROCAL_SCALE = 20
# 1/c on [1/2, 1] by degree 7 in t = 4c - 3 in [-1, 1]: relative error 1.8e-6 (no Newton
# steps). In t the coefficients fall like 3^-k (sum |c_k| = 2.0; in c it would be 1081), so
# the powers need only 20 fractional bits and the split evaluation applies (4 truncations).
_RECIPROCAL_FIT = _monomial_fit(lambda t: 4 / (t + 3), -1.0, 7)


def reciprocal(ctx: PartyContext, x: Pair, multiplier: Multiplier | None = None, extra_bits: int = 0) -> Pair:
    """1/x for 2^-(f-1) <= x < 2^(l-1-f) (l = compare_bits), or M/x for a ``multiplier``
    (M, its scale) broadcast against x (|M/x| < 2^(61 - 2f - 8)); at f + ``extra_bits`` bits
    (|1/x| < 2^(61 - f - extra_bits); the last truncation drops that many bits fewer).

    Normalise: X = x 2^f has highest bit p; G = 2^(T-p) (T = l-1) from p's one-hot; c = X G /
    2^(T+1) in [1/2, 1). Then y = 1/c, either by the dealt lookup and one product
    (``_normalised_lookup``) or by a degree-7 polynomial in t = 4c - 3 at 20 bits, and
    1/x = y G / 2^(T+1-f). With a multiplier, M G rides in c's truncations and M/x = (M G) y
    takes the last product. ``reciprocal_cost`` gives the variant each network takes and its
    exact cost (small tensors on loopback: G + 2 + 2 + 2 = 10 rounds).
    """
    f, bits = ctx.frac_bits, ctx.compare_bits
    n = x[0].numel()
    out = _Output(bits - 2 * f - extra_bits, 0, 1.0, _multiplier_size(x, multiplier), ctx.network)
    g = _reciprocal_power(ctx, x)
    z = pa.mul_local(x, g)  # c 2^(T+1)
    variant = _reciprocal_variant(n, f, bits, out)
    y, side = out.normalise(ctx, lambda side: _inverse_of_normalised(ctx, z, variant, side), g, multiplier)
    return out.result(ctx, y, f, g, side, multiplier)


def _reciprocal_power(ctx: PartyContext, x: Pair) -> Pair:
    """G = 2^(T-p) for X = x 2^f with highest bit p (T = l - 1)."""
    bits = ctx.compare_bits
    return powers_of_highest_bit(ctx, x, bits, [[bits - 1 - j for j in range(bits)]])[0]


def _inverse_of_normalised(
    ctx: PartyContext, z: torch.Tensor, variant: str, side: list[tuple[torch.Tensor, int, None]]
) -> tuple[Pair, list[Pair]]:
    """y = 1/c at f bits for z = c 2^l (3-out-of-3 shares), c in [1/2, 1), by ``variant``
    ("lookup" or "polynomial"), with the ``side`` truncations in its first call."""
    f, top, s = ctx.frac_bits, ctx.compare_bits - 1, RECIPROCAL_SCALE
    if variant == "lookup":
        return _normalised_lookup(ctx, z, top + 1, "reciprocal", f, side)  # y G < 2^62 at f bits
    c, settled = _truncate_with(ctx, z, top + 1 - s, side)
    t = pa.add_public(ctx, pa.mul_public(c, 4), -3 << s)  # 4c - 3
    return polynomial(ctx, t, _RECIPROCAL_FIT, s, f, work_scale=s), settled


def _inverse_of_normalised_cost(
    n: int,
    frac_bits: int,
    compare_bits: int,
    variant: str,
    side: list[tuple[int, int, int, int]],
    network: NetworkProfile | None,
) -> list[Cost]:
    """Exact (rounds, bytes of all parties) of ``_inverse_of_normalised`` on n elements."""
    top, s, f = compare_bits - 1, RECIPROCAL_SCALE, frac_bits
    if variant == "lookup":
        return [_lookup_cost(n, top + 1, f, side, network)]
    return [_truncate_with_cost(n, top + 1 - s, side, network), polynomial_cost(n, _RECIPROCAL_FIT, s, f, s, network)]


def _reciprocal_variants(n: int, frac_bits: int, compare_bits: int, out: _Output) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of ``reciprocal``'s two variants on n elements."""
    network = out.network
    powers = _reciprocal_power_cost(n, compare_bits, network)
    last = out.result_cost(n, frac_bits)
    return {
        variant: total_cost(
            [
                powers,
                *out.normalise_cost(
                    lambda side, v=variant: _inverse_of_normalised_cost(n, frac_bits, compare_bits, v, side, network)
                ),
                *last,
            ]
        )
        for variant in ("lookup", "polynomial")
    }


def _reciprocal_power_cost(n: int, compare_bits: int, network: NetworkProfile | None) -> Cost:
    """Exact (rounds, bytes of all parties) of ``_reciprocal_power`` on n elements."""
    return powers_of_highest_bit_cost(n, compare_bits, [[compare_bits - 1 - j for j in range(compare_bits)]], network)


@functools.cache
def _reciprocal_variant(n: int, frac_bits: int, compare_bits: int, out: _Output) -> str:
    """The variant ``reciprocal`` runs (cached: a pure function of public facts)."""
    return _normaliser_variant(n, _reciprocal_variants(n, frac_bits, compare_bits, out), out.network)


def reciprocal_cost(
    n: int,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
    multiplier: tuple[int, int] | None = None,
    extra_bits: int = 0,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``reciprocal`` on n elements (``multiplier``:
    its elements after broadcasting and its scale)."""
    out = _Output(compare_bits - 2 * frac_bits - extra_bits, 0, 1.0, multiplier, network)
    return _reciprocal_variants(n, frac_bits, compare_bits, out)[_reciprocal_variant(n, frac_bits, compare_bits, out)]


RSQRT_SCALE = 28
# u 2^(2 T2) < 2^62, the truncations' range, for T2 = l / 2.
RSQRT_MAX_BITS = 62
# u^(-1/2) on [1/4, 1] by degree 4 (relative error 2.2e-3): one Newton step then gives 7e-6.
_RSQRT_INIT = _monomial_fit(lambda u: u**-0.5, 0.25, 4)


def rsqrt(
    ctx: PartyContext,
    x: Pair,
    in_scale: int | None = None,
    out_scale: int | None = None,
    times: float = 1.0,
    multiplier: tuple[Pair | pa.Owed, int] | None = None,
    compare_bits: int | None = None,
) -> Pair:
    """times / sqrt(x) for x > 0 with X = x 2^in_scale in [2, 2^(l-1)), or times M / sqrt(x)
    for a ``multiplier`` (M, its scale) broadcast against x; relative error < 1e-4. Scales
    default to f; ``times`` is a public factor folded into a truncation; l is
    ``compare_bits`` (at most 62), by default the context's. A multiplier whose truncation
    is owed (``pa.Owed``) is truncated side by side with the normalisation's comparisons
    (``session.parallel``), at no round of its own where those take as many.

    Normalise to u = X / 2^(2r) in [1/4, 1) with r = ceil((p+1)/2) (p: X's highest bit):
    G2 = 2^(T2 - r) and G1 = 2^(2(T2 - r)) from p's one-hot (for large tensors one round
    more, G1 = G2^2). Then w = u^(-1/2), either by the dealt lookup and one product
    (``_normalised_lookup``), or by a degree-4 initial guess and one Newton step
    w (3 - u w^2) / 2 = 1.5 w - 0.5 (u w) w^2, with u w and w^2 in one batch (6 rounds);
    1/sqrt(x) = w G2 2^(in/2 - T2), at ``out_scale``. With a multiplier, M G2 rides in u's
    truncations and the last product takes w. ``rsqrt_cost`` gives the variant each network
    takes and its exact cost (small tensors on loopback: G + 2 + 2 + 2 = 10 rounds).
    """
    f, bits = ctx.frac_bits, ctx.compare_bits if compare_bits is None else compare_bits
    in_scale = f if in_scale is None else in_scale
    out_scale = f if out_scale is None else out_scale
    if in_scale % 2:
        raise ValueError("rsqrt needs an even input scale")
    if bits > RSQRT_MAX_BITS:
        raise ValueError(f"rsqrt compares on at most {RSQRT_MAX_BITS} bits, got {bits}")
    n = x[0].numel()
    half_top, lists = _rsqrt_powers(n, bits)
    owed = multiplier[0] if multiplier is not None and isinstance(multiplier[0], pa.Owed) else None
    size = _multiplier_size(x, multiplier)
    out = _Output(half_top - in_scale // 2 - out_scale, _rsqrt_extra_bits(times), times, size, ctx.network)
    if owed is None:
        powers = powers_of_highest_bit(ctx, x, bits, lists)
    else:
        powers, settled = parallel(
            ctx,
            [
                lambda: powers_of_highest_bit(ctx, x, bits, lists),
                lambda: pa.truncate_additive(ctx, owed.additive, owed.bits),
            ],
        )
        multiplier = (settled, multiplier[1])
    g2 = powers[0]
    g1 = powers[1] if len(powers) == 2 else ring_mul_many(ctx, [g2], [g2])[0]  # large: G1 = G2^2
    z = pa.mul_local(x, g1)  # u 2^(2 T2)
    lookup = _rsqrt_variant(n, f, bits, out, owed.bits if owed else None) == "lookup"
    s = RSQRT_SCALE

    def normalise(side: list[tuple[torch.Tensor, int, None]]) -> tuple[Pair, list[Pair]]:
        if lookup:
            return _normalised_lookup(ctx, z, 2 * half_top, "rsqrt", LOOKUP_SCALE, side)
        u, settled = _truncate_with(ctx, z, 2 * half_top - s, side)
        w = polynomial(ctx, u, _RSQRT_INIT, s, s)
        # one truncation by s: u w and w^2 at scale s, and w itself at scale f (its product
        # with 2^f is local: P_i's additive share is 2^f w_i)
        batch = torch.stack([pa.mul_local(u, w), pa.mul_local(w, w), w[0] << f])
        uw, w2, w_f = _unstack(pa.truncate_additive(ctx, batch, s))
        half_cube = pa.truncate_additive(ctx, pa.mul_local(uw, w2), 2 * s - f)  # u w^3 / 2 at scale f + 1
        return pa.sub(pa.mul_public(w_f, 3), half_cube), settled  # 1.5 w - u w^3 / 2 at f + 1

    w, side = out.normalise(ctx, normalise, g2, multiplier)
    return out.result(ctx, w, LOOKUP_SCALE if lookup else f + 1, g2, side, multiplier)


def _rsqrt_powers(n: int, bits: int) -> tuple[int, list[list[int]]]:
    """(T2, the exponent lists ``powers_of_highest_bit`` makes for rsqrt on n elements):
    G2's exponents T2 - r per highest bit p (r = ceil((p+1)/2)), and for small tensors G1's,
    twice those (large tensors square G2 instead)."""
    half_top = (bits - 1 + 1) // 2  # T2 >= max r
    exponents = [half_top - (j + 2) // 2 for j in range(bits)]
    return half_top, [exponents, [2 * v for v in exponents]] if n <= SMALL_ELEMENTS else [exponents]


def _rsqrt_extra_bits(times: float) -> int:
    """Bits that carry a public factor ``times`` into rsqrt's last truncation."""
    return 0 if times == 1.0 else 12


def _rsqrt_variants(
    n: int, frac_bits: int, compare_bits: int, out: _Output, owed: int | None = None
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of ``rsqrt``'s two variants on n elements (``owed``:
    the bits of a multiplier's owed truncation)."""
    f, s, network = frac_bits, RSQRT_SCALE, out.network
    half_top, lists = _rsqrt_powers(n, compare_bits)
    first = powers_of_highest_bit_cost(n, compare_bits, lists, network)
    if owed is not None:
        assert out.multiplier is not None
        first = parallel_cost([first, pa.truncation_cost(out.multiplier[0], owed, network)])
    powers = [first] + ([] if len(lists) == 2 else [(1, 24 * n)])
    return {
        "lookup": total_cost([
            *powers,
            *out.normalise_cost(lambda side: [_lookup_cost(n, 2 * half_top, LOOKUP_SCALE, side, network)]),
            *out.result_cost(n, LOOKUP_SCALE),
        ]),
        "polynomial": total_cost([
            *powers,
            *out.normalise_cost(lambda side: [
                _truncate_with_cost(n, 2 * half_top - s, side, network),
                polynomial_cost(n, _RSQRT_INIT, s, s, network=network),
                pa.truncation_cost(3 * n, s, network),
                pa.truncation_cost(n, 2 * s - f, network),
            ]),
            *out.result_cost(n, f + 1),
        ]),
    }  # fmt: skip


@functools.cache
def _rsqrt_variant(n: int, frac_bits: int, compare_bits: int, out: _Output, owed: int | None = None) -> str:
    """The variant ``rsqrt`` runs (cached: a pure function of public facts)."""
    return _normaliser_variant(n, _rsqrt_variants(n, frac_bits, compare_bits, out, owed), out.network)


def rsqrt_cost(
    n: int,
    in_scale: int | None = None,
    out_scale: int | None = None,
    times: float = 1.0,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
    multiplier: tuple[int, int] | None = None,
    owed: int | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``rsqrt`` on n elements (``multiplier``: its
    elements after broadcasting and its scale; ``owed``: the bits of its owed truncation)."""
    in_scale = frac_bits if in_scale is None else in_scale
    out_scale = frac_bits if out_scale is None else out_scale
    half_top = _rsqrt_powers(n, compare_bits)[0]
    out = _Output(half_top - in_scale // 2 - out_scale, _rsqrt_extra_bits(times), times, multiplier, network)
    variant = _rsqrt_variant(n, frac_bits, compare_bits, out, owed)
    return _rsqrt_variants(n, frac_bits, compare_bits, out, owed)[variant]


# --------------------------------------------------------------------------- composites


EXP_CLIP = -14.0


def softmax_last_dim(ctx: PartyContext, x: Pair, row_max: Pair) -> Pair:
    """softmax over the last dim given the row max: the numerators e and row sums s
    (``softmax_numerators``), then one reciprocal per row with e as its multiplier."""
    return divide_rows(ctx, *softmax_numerators(ctx, x, row_max))


def divide_rows(ctx: PartyContext, numerators: Pair, total: Pair) -> Pair:
    """e / s for a softmax's numerators e and row sums s: one reciprocal per row with e as
    its multiplier (``reciprocal_cost`` with the multiplier)."""
    return reciprocal(ctx, total, multiplier=(numerators, ctx.frac_bits))


def softmax_numerators(ctx: PartyContext, x: Pair, row_max: Pair) -> tuple[Pair, Pair]:
    """A softmax's numerators and row sums, given the row max: e = exp(x - max) (``exp`` or
    ``exp_lookup``, whichever ``_softmax_exp_variant`` picks) side by side with the clip
    [x - max < -14] (exp(-14) < 2^-18; ``session.parallel``), zeroed there; s = e's row sums
    (local), in [1, n] up to exp's error (the max's own term is 1)."""
    f = ctx.frac_bits
    shifted = pa.sub(x, (row_max[0].unsqueeze(-1), row_max[1].unsqueeze(-1)))
    lookup = _softmax_exp_variant(shifted[0].numel(), f, ctx.network) == "lookup"
    clipped, e = parallel(
        ctx,
        [
            lambda: less_than_zero(ctx, add_constant(ctx, shifted, -EXP_CLIP, f)),
            lambda: exp_lookup(ctx, shifted) if lookup else exp(ctx, shifted),
        ],
    )
    (e,) = ring_mul_many(ctx, [pa.add_public(ctx, pa.neg(clipped), 1)], [e])
    return e, (e[0].sum(-1, keepdim=True), e[1].sum(-1, keepdim=True))


def divide_rows_after(ctx: PartyContext, total: Pair, product: Callable[[], Pair]) -> pa.Owed:
    """(e / s) @ V as (e @ V) / s: a softmax's division moved past its product with V.

    Row scaling commutes with a product on the right: (diag(1/s) e) V = diag(1/s) (e V). So
    the reciprocal of the row sums (at f + 8 bits, ``INVERSE_EXTRA_BITS``) runs side by side
    (``session.parallel``) with ``product`` (the fixed-point e @ V, V's own owed truncation
    included), and their product is left owed (truncation by f + 8): the division costs no
    round after the reciprocal, e @ V none of its own, and the multiplier is e @ V, not e
    (fewer elements wherever V is narrower than the rows are long). Error: 1/s's relative
    error (and its 2^-(f+8) grid, relative to 1/s >= 1/n at most n 2^-(f+8)) becomes the
    output's relative error, as it is of e/s in ``divide_rows``; e @ V's truncation adds
    one unit times 1/s <= 1. Cost: ``divide_rows_after_cost``."""
    f = ctx.frac_bits
    inverse, numerator = parallel(ctx, [lambda: reciprocal(ctx, total, extra_bits=INVERSE_EXTRA_BITS), product])
    return pa.Owed(pa.mul_local(numerator, _expand(inverse, numerator)), f + INVERSE_EXTRA_BITS)


def divide_rows_after_cost(
    rows: int,
    product: Cost,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``divide_rows_after`` for ``rows`` row sums,
    given the cost of ``product``."""
    inverse = reciprocal_cost(rows, frac_bits, compare_bits, network, extra_bits=INVERSE_EXTRA_BITS)
    return parallel_cost([inverse, product])


def divide_rows_beside(ctx: PartyContext, total: Pair, product: Callable[[], Pair]) -> pa.Owed:
    """(e / s) @ V as ((e @ V) G) y, for row sums s in ``reciprocal``'s range and
    |e @ V / s| < 2^(62 - l) (a softmax's: a weighted mean of V's rows): the reciprocal's
    factors meet e @ V separately.

    1/s = G y / 2^(T+1-f) (``reciprocal``: G = 2^(T-p) from the comparisons, y = 1/c of the
    normalised c). Two branches run side by side (``session.parallel``): G, then y; and
    ``product`` (e @ V, V's own owed truncation included), then, once G is there (idle
    rounds until then), M = (e @ V) G truncated by T + 1 - f, beside y's normalisation. Their
    product M y is left owed (truncation by f). Against ``divide_rows_after`` the truncation
    of y G (2 rounds after y) moves beside y's normalisation, for a truncation of e @ V's
    size: rounds max(P + N, max(V, P) + 3) instead of P + N + 2, the policy's to weigh.
    Error: M's truncation adds one unit times y <= 2; y's relative error is the output's.
    Cost: ``divide_rows_beside_cost``."""
    f, top = ctx.frac_bits, ctx.compare_bits - 1
    rows = total[0].numel()
    variant = _bare_reciprocal_variant(rows, f, ctx.compare_bits, ctx.network)
    found: list[Pair] = []

    def inverse() -> Pair:
        g = _reciprocal_power(ctx, total)
        found.append(g)
        return _inverse_of_normalised(ctx, pa.mul_local(total, g), variant, [])[0]

    def scaled() -> Pair:
        numerator = product()
        while not found:  # G comes from the other branch
            ctx.net.exchange({}, [])
        return pa.truncate_additive(ctx, pa.mul_local(numerator, _expand(found[0], numerator)), top + 1 - f)

    y, m = parallel(ctx, [inverse, scaled])
    return pa.Owed(pa.mul_local(m, _expand(y, m)), f)


def _bare_reciprocal_variant(n: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None) -> str:
    """The normalisation ``reciprocal`` would take on n elements without a multiplier."""
    return _reciprocal_variant(n, frac_bits, compare_bits, _Output(compare_bits - 2 * frac_bits, 0, 1.0, None, network))


def divide_rows_beside_cost(
    rows: int,
    out_elements: int,
    product: Cost,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``divide_rows_beside`` for ``rows`` row sums and
    a product of ``out_elements`` costing ``product``."""
    f = frac_bits
    variant = _bare_reciprocal_variant(rows, f, compare_bits, network)
    power = _reciprocal_power_cost(rows, compare_bits, network)
    inverse = total_cost(_inverse_of_normalised_cost(rows, f, compare_bits, variant, [], network))
    scaled = pa.truncation_cost(out_elements, compare_bits - f, network)
    rounds = max(power[0] + inverse[0], max(product[0], power[0]) + scaled[0])
    return rounds, power[1] + inverse[1] + product[1] + scaled[1]


def _division_variants(
    rows: int,
    row_len: int,
    out_elements: int,
    value: Cost,
    frac_bits: int,
    compare_bits: int,
    network: NetworkProfile | None,
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of a softmax's division and its product with V,
    up to and including the truncation of that product (which the next op runs): dividing
    first (``divide_rows``, then V's own truncation ``value`` and the product's), after
    (``divide_rows_after``, the product's truncation by f + 8) or beside
    (``divide_rows_beside``, the product's truncation by f)."""
    f = frac_bits
    product = pa.truncation_cost(out_elements, f, network)
    with_value = total_cost([value, product])
    return {
        "first": total_cost([
            reciprocal_cost(rows, f, compare_bits, network, multiplier=(rows * row_len, f)), value, product
        ]),
        "after": total_cost([
            divide_rows_after_cost(rows, with_value, f, compare_bits, network),
            pa.truncation_cost(out_elements, f + INVERSE_EXTRA_BITS, network),
        ]),
        "beside": total_cost([
            divide_rows_beside_cost(rows, out_elements, with_value, f, compare_bits, network), product
        ]),
    }  # fmt: skip


@functools.cache
def division_order(
    rows: int,
    row_len: int,
    out_elements: int,
    value: Cost,
    frac_bits: int,
    compare_bits: int,
    network: NetworkProfile | None,
) -> str:
    """Where a softmax of ``rows`` rows of ``row_len`` times V (``out_elements`` in the
    product; ``value``: the cost of V's own owed truncation, (0, 0) if none) divides: "first",
    "after" or "beside" the product (``_division_variants``), the fastest on ``network``;
    without one, the one with the fewest rounds, then bytes. Dividing after saves V's
    truncation and the product's rounds where the reciprocal is long, but where V is wider
    than the rows are long it truncates more elements (a decode step: the same rounds, more
    bytes); beside saves two more rounds for a truncation of the product's size, which pays
    where rounds are dear. Cached: a pure function of public facts."""
    variants = _division_variants(rows, row_len, out_elements, value, frac_bits, compare_bits, network)
    return cheapest(network, variants, min(variants, key=lambda name: variants[name]))


def division_cost(
    rows: int,
    row_len: int,
    out_elements: int,
    value: Cost,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of a softmax's division and its product with V in
    the order ``division_order`` picks, up to and including the product's truncation."""
    args = (rows, row_len, out_elements, value, frac_bits, compare_bits)
    return _division_variants(*args, network)[division_order(*args, network)]


def softmax_numerators_cost(
    shape: tuple[int, ...],
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of the row max (``max_last_dim``) and
    ``softmax_numerators`` over the last dim of ``shape``."""
    n = math.prod(shape)
    return total_cost([
        max_last_dim_cost(shape, False, compare_bits, network),
        parallel_cost([
            less_than_zero_cost(n, compare_bits, network),
            _softmax_exp_variants(n, frac_bits, network)[_softmax_exp_variant(n, frac_bits, network)],
        ]),
        (1, 24 * n),
    ])  # fmt: skip


def softmax_cost(
    shape: tuple[int, ...],
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of a softmax over the last dim of ``shape``: the
    row max (``max_last_dim``) and ``softmax_last_dim``."""
    n = math.prod(shape)
    return total_cost([
        softmax_numerators_cost(shape, frac_bits, compare_bits, network),
        reciprocal_cost(n // shape[-1], frac_bits, compare_bits, network, multiplier=(n, frac_bits)),
    ])  # fmt: skip


NORM_EXTRA_BITS = 8
WEIGHT_EXTRA_BITS = 4


MEAN_FACTOR_BITS = 20
# Row means merged into an owed input's truncation hold for row sums |sum x| < 2^20.
MERGED_SUM_BITS = 20


def _mean_factor(count: int) -> tuple[int, int]:
    """(K, c): 1/count = K / 2^(MEAN_FACTOR_BITS + c), K = 2^(20 + c)/count rounded (in
    (2^19, 2^20]), c = floor(log2 count)."""
    c = count.bit_length() - 1
    return round(2**MEAN_FACTOR_BITS * 2**c / count), c


def _divide_rows(ctx: PartyContext, total: Pair, count: int) -> Pair:
    """total / count on the (small) per-row tensors: one truncation of total K by 20 + c."""
    factor, c = _mean_factor(count)
    return pa.truncate(ctx, pa.mul_public(total, factor), MEAN_FACTOR_BITS + c)


def _mean_pieces(count: int, bits: int, frac_bits: int) -> list[tuple[int, int]] | None:
    """K of ``_mean_factor`` cut into pieces K_j 2^s_j of w bits, so that a row sum of an owed
    z (scale f + bits, |sum x| < 2^MERGED_SUM_BITS) times K_j stays below 2^62, the
    truncation's range: w = 62 - 20 - f - bits; each with its truncation, by bits + 20 + c -
    s_j; None where w < 1."""
    width = 62 - MERGED_SUM_BITS - frac_bits - bits
    if width < 1:
        return None
    factor, c = _mean_factor(count)
    pieces = [((factor >> s) & ((1 << width) - 1), s) for s in range(0, factor.bit_length(), width)]
    return [(piece, bits + MEAN_FACTOR_BITS + c - s) for piece, s in pieces if piece]


def _row_means_variants(
    rows: int, count: int, bits: int, frac_bits: int, network: NetworkProfile | None
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of an owed input's truncation and its row means:
    merged in one ``truncate_many`` call, or the policy's truncation and then the means."""
    n, c = rows * count, count.bit_length() - 1
    separate = total_cost(
        [pa.truncation_cost(n, bits, network), pa.truncation_cost(rows, MEAN_FACTOR_BITS + c, network)]
    )
    pieces = _mean_pieces(count, bits, frac_bits)
    if pieces is None:
        return {"separate": separate}
    merged = pa.truncate_many_cost([(n, bits, 0, 0), *((rows, shift, 0, 0) for _, shift in pieces)])
    return {"merged": merged, "separate": separate}


@functools.cache
def _row_means_variant(rows: int, count: int, bits: int, frac_bits: int, network: NetworkProfile | None) -> str:
    """The faster of ``_row_means_variants`` on ``network``; without one, merged where the
    input's truncation alone would take the 2-round protocol (the merge costs no bytes)."""
    variants = _row_means_variants(rows, count, bits, frac_bits, network)
    if "merged" not in variants:
        return "separate"
    two_rounds = pa.truncation_cost(rows * count, bits, None)[0] == 2
    return cheapest(network, variants, "merged" if two_rounds else "separate")


def settle_with_row_means(ctx: PartyContext, x: pa.Owed) -> tuple[Pair, Pair] | None:
    """An owed input x (``pa.Owed``: z at scale f + bits, rows along its last dim) truncated
    together with its row means, or None where ``_row_means_variant`` finds it faster to
    truncate x alone (``truncate_additive``) and take the means after.

    The mean sum(x) / count = floor(sum(z) K / 2^(bits + 20 + c)) (``_mean_factor``) by pieces
    (``_mean_pieces``): sum_j floor(sum(z) K_j / 2^(bits + 20 + c - s_j)), each a part of the
    same ``truncate_many`` call as x (2 rounds in all, instead of x's truncation and 2 more
    for the means), within (number of pieces + 1) units of the last place. Holds for row sums
    |sum x| < 2^MERGED_SUM_BITS. Returns (x, the means with the last dim kept)."""
    count = x.additive.shape[-1]
    rows = x.additive.numel() // count
    if _row_means_variant(rows, count, x.bits, ctx.frac_bits, ctx.network) != "merged":
        return None
    pieces = _mean_pieces(count, x.bits, ctx.frac_bits)
    assert pieces is not None
    total = x.additive.sum(-1, keepdim=True)
    parts = [(x.additive, x.bits, None), *((total * piece, shift, None) for piece, shift in pieces)]
    (settled, _), *means = pa.truncate_many(ctx, parts)
    mean = (sum(m[0][0] for m in means), sum(m[0][1] for m in means))
    return settled, mean


def row_means_cost(
    rows: int, count: int, bits: int, frac_bits: int = DEFAULT_FRAC_BITS, network: NetworkProfile | None = None
) -> Cost:
    """Exact (rounds, bytes of all parties) of an owed input's truncation and its row means
    (``settle_with_row_means``, or the truncation alone and ``_divide_rows``)."""
    variants = _row_means_variants(rows, count, bits, frac_bits, network)
    return variants[_row_means_variant(rows, count, bits, frac_bits, network)]


def layer_norm_last_dims(
    ctx: PartyContext,
    x: Pair,
    dims: int,
    weight: Pair | None,
    bias: Pair | None,
    eps: float,
    rms: bool = False,
    mean: Pair | None = None,
) -> Pair:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last ``dims`` dims (RMSNorm:
    x / sqrt(mean(x^2) + eps) * weight).

    Row statistics live on small per-row tensors. The sum of squares is exact: each party
    sums its 3-out-of-3 shares of the squares (x - mean)^2 over the row, at 2f bits, and one
    resharing of the row sums (1 round, no truncation) makes count * (var + eps) rsqrt's
    input, compared on l + f - e bits (``_norm_compare_bits``: the range l bits give at
    f + e bits). (x - mean) * weight stays owed and is truncated side by side with rsqrt's
    comparisons; inside rsqrt (its ``multiplier``) the big tensor sees two more products:
    (x - mean) * weight * G2, in the same call as rsqrt's normalising truncations where that
    pays, and the output's. rsqrt's public factor sqrt(count) rides on a truncation, so the
    variance needs no division. Where l + f - e exceeds 62 bits the squares are truncated to
    f + e bits instead (e up to 8 extra fractional bits, fewer for long rows, whose sum is
    large anyway), in one batch with (x - mean) * weight. ``mean``: the row means (last dim
    kept, over the flattened last ``dims``), when already known (``settle_with_row_means``)."""
    f = ctx.frac_bits
    shape = x[0].shape
    flat = tuple(s.reshape(*shape[: len(shape) - dims], -1) for s in x)
    count = flat[0].shape[-1]
    if not rms:
        if mean is None:
            total = (flat[0].sum(-1, keepdim=True), flat[1].sum(-1, keepdim=True))
            mean = _divide_rows(ctx, total, count)
        flat = pa.sub(flat, mean)
    e_sum = _sum_extra_bits(count)
    wide = _norm_compare_bits(count, f, ctx.compare_bits)
    # (x - mean) * weight, at scale f + e_sum + 4 (it is multiplied by 1/std next);
    # |(x - mean) * weight| < 2^(22 - e_sum)
    w = (
        None
        if weight is None
        else tuple((share.reshape(-1) << WEIGHT_EXTRA_BITS).expand_as(flat[0]) for share in weight)
    )
    scaled_scale = f if weight is None else f + e_sum + WEIGHT_EXTRA_BITS
    if wide is not None:  # the row sums of exact squares, at 2f bits: one resharing
        sum_sq = pa.reshare(ctx, pa.mul_local(flat, flat).sum(-1, keepdim=True))
        in_scale = 2 * f
        scaled: Pair | pa.Owed = flat if w is None else pa.Owed(pa.mul_local(flat, w), f - e_sum)
    else:  # squares truncated to f + e_sum bits, (x - mean) * weight in the same call
        in_scale, wide = f + e_sum, ctx.compare_bits
        if w is None:
            squares, scaled = pa.truncate_additive(ctx, pa.mul_local(flat, flat), f - e_sum), flat
        else:
            squares, scaled = mul_many(ctx, [flat, flat], [flat, w], f - e_sum)
        sum_sq = (squares[0].sum(-1, keepdim=True), squares[1].sum(-1, keepdim=True))
    total_sq = add_constant(ctx, sum_sq, eps * count, in_scale)  # count (var + eps)
    normed = rsqrt(ctx, total_sq, in_scale, f, math.sqrt(count), (scaled, scaled_scale), wide)
    normed = (normed[0].reshape(shape), normed[1].reshape(shape))
    if bias is not None:
        normed = pa.add(normed, bias)
    return normed


def _norm_compare_bits(count: int, frac_bits: int, compare_bits: int) -> int | None:
    """The width on which rsqrt compares count * var held exactly at 2f bits, for the range
    that l bits give it at f + e bits (``_sum_extra_bits``): l + f - e, or None where that
    exceeds rsqrt's 62 (then the squares are truncated first)."""
    wide = compare_bits + frac_bits - _sum_extra_bits(count)
    return wide if wide <= RSQRT_MAX_BITS else None


def _sum_extra_bits(count: int) -> int:
    """Extra fractional bits of the squares: count * var keeps log2(count) more bits by
    itself, so larger rows use fewer (even, for rsqrt's input scale)."""
    return max(0, NORM_EXTRA_BITS - (count.bit_length() - 1)) // 2 * 2


def layer_norm_cost(
    rows: int,
    count: int,
    weight: bool,
    rms: bool = False,
    frac_bits: int = DEFAULT_FRAC_BITS,
    compare_bits: int = DEFAULT_COMPARE_BITS,
    network: NetworkProfile | None = None,
    owed_bits: int | None = None,
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``layer_norm_last_dims`` on ``rows`` rows of
    ``count`` elements (``weight``: with a secret weight), with an owed input's truncation by
    ``owed_bits`` where given (and its row means: ``row_means_cost``)."""
    f, n = frac_bits, rows * count
    e_sum = _sum_extra_bits(count)
    if owed_bits is None:
        costs = [] if rms else [pa.truncation_cost(rows, MEAN_FACTOR_BITS + count.bit_length() - 1, network)]
    else:
        costs = [
            pa.truncation_cost(n, owed_bits, network) if rms else row_means_cost(rows, count, owed_bits, f, network)
        ]
    scaled_scale = f if not weight else f + e_sum + WEIGHT_EXTRA_BITS
    wide = _norm_compare_bits(count, f, compare_bits)
    if wide is None:
        return total_cost([
            *costs,
            pa.truncation_cost(2 * n if weight else n, f - e_sum, network),
            rsqrt_cost(rows, f + e_sum, f, math.sqrt(count), f, compare_bits, network, multiplier=(n, scaled_scale)),
        ])  # fmt: skip
    owed = f - e_sum if weight else None
    return total_cost([
        *costs,
        (1, 24 * rows),
        rsqrt_cost(rows, 2 * f, f, math.sqrt(count), f, wide, network, multiplier=(n, scaled_scale), owed=owed),
    ])  # fmt: skip
