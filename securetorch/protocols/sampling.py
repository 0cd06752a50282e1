"""Sampling the next token inside MPC: the distribution, the random draw and the token all stay
secret; only the token's index is opened, to the caller alone (by the service).

For secret logits x [rows, V] and public settings (temperature T, top-k k, top-p p):

1. **Temperature**: y = x / T, a public scaling (one truncation), then y - max(y) per row
   (``max_last_dim``).
2. **Top-k** (HF's ``TopKLogitsWarper``: keep every logit at least the k-th largest): a
   secret threshold found by bisection. Logits below -2^6 are first raised to -2^6 (one
   comparison and one product each: they are never kept), so that every later comparison
   reads f + 9 bits only. With t = -2^6 to start, for each step s = 2^5, ..., 2^-8:
   t += s * [#{j: y_j >= t + s} >= k]. Each step is V comparisons and one more; the bit
   times the public step is local. Kept: y_j >= t, the k largest and any within 2^-8
   below the k-th (its resolution); logits more than 2^6 below the row max have
   probability below e^-64 and are never kept. The others get -2^12 (probability 0).
3. **Softmax** over the kept logits (``approx.softmax_last_dim``): probabilities q >= 0.
4. **Top-p** (HF's ``TopPLogitsWarper``: the smallest set of most likely tokens whose mass
   reaches p): bisection on a probability threshold. With t = 0, for s = 2^-1, ..., 2^-14:
   t += s * [sum_j q_j [q_j >= t + s] >= p]; kept q_j >= t (ties and probabilities within
   2^-14 of the boundary are kept too). Each step is V comparisons, V exact ring products
   (a 0/1 bit times a probability) and one comparison.
5. **The draw** (inverse transform, as ``torch.multinomial``): u uniform in [0, 1) with f
   random bits, each an XOR-sharing drawn from the parties' pairwise PRG streams (no party
   knows u) and injected into the ring together (``bits_to_arith_word``); the cumulative
   sums c_j = q_0 + ... + q_j are local; b_j = [c_j > u * c_{V-1}] (one product, V
   comparisons), b_{V-1} = 1; the one-hot is b_j - b_{j-1} (local: c is nondecreasing, so
   b is 0...01...1 and exactly one entry is 1) and the index sum_j j onehot_j (local).

Comparisons between probabilities (top-p, the draw) read f + 3 bits of the ring instead of
``compare_bits``: their operands lie in [0, 1]. The settings are public (they come with the
caller's request); every intermediate is secret. Cost (V = vocabulary, r = rows): the row max, one truncation, the softmax, V r + r
comparisons per bisection step (14 steps for top-k, 14 for top-p with V r products each),
f r bit injections, one product and V r comparisons for the draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from securetorch.prg import KEY_BYTES, AesPrg
from securetorch.protocols import arithmetic as pa
from securetorch.protocols.approx import softmax_last_dim
from securetorch.protocols.arithmetic import Pair
from securetorch.protocols.comparison import bits_to_arith_word, less_than_zero, max_last_dim
from securetorch.session.context import PartyContext

TOP_K_RANGE_BITS = 6  # logits more than 2^6 below the row max are never among the top k
TOP_K_RESOLUTION_BITS = 8  # the top-k threshold is found to 2^-8
TOP_P_RESOLUTION_BITS = 14  # the top-p threshold (a probability) is found to 2^-14
DROPPED = 1 << 12  # what a logit outside the top k loses: its probability becomes 0
PROBABILITY_BITS = 3  # comparisons of probabilities (values in [0, 1], differences below 2) read f + 3 bits


@dataclass(frozen=True)
class SamplingSettings:
    """Public settings of a sampled generation (HF's names and meanings): ``temperature`` > 0,
    ``top_k`` (None: all tokens), ``top_p`` in (0, 1] (None or 1: all tokens); ``seed`` makes
    the draws reproducible (for tests): u comes from AES keyed by the seed, so the parties
    know u (never the distribution or the token); without it no party knows u."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 / 64 <= float(self.temperature) <= 64:
            raise ValueError(f"temperature must lie in [1/64, 64], got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and not 0 < float(self.top_p) <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")


def _rows(x: Pair) -> Pair:
    return x[0].unsqueeze(-1), x[1].unsqueeze(-1)


def _greater_equal(ctx: PartyContext, x: Pair, threshold: Pair, bits: int | None = None) -> Pair:
    """[x >= threshold] (arithmetic 0/1, an integer), per row: 1 - [x - t < 0], the
    comparison on ``bits`` bits where the caller bounds x - t (``less_than_zero``)."""
    below = less_than_zero(ctx, pa.sub(x, threshold), bits)
    return pa.add_public(ctx, pa.neg(below), torch.ones((), dtype=torch.int64))


def _bisect(ctx: PartyContext, start: Pair, steps: list[float], holds: Callable[[Pair], Pair]) -> Pair:
    """The largest t = start + sum of some ``steps`` for which ``holds(t)`` (a 0/1 integer
    secret per row) is 1, found greedily from the largest step: t += s * holds(t + s)."""
    f = ctx.frac_bits
    t = start
    for s in steps:
        step = torch.tensor(round(s * (1 << f)), dtype=torch.int64)
        ok = holds(pa.add_public(ctx, t, step))
        t = pa.add(t, pa.mul_public(ok, step))
    return t


def top_k_mask(ctx: PartyContext, y: Pair, k: int) -> Pair:
    """0/1 integers marking, per row of ``y`` (row max 0), the logits kept by top-k."""
    f = ctx.frac_bits
    count_k = torch.tensor(k, dtype=torch.int64)
    start = pa.public_shares(ctx, torch.full(y[0].shape[:-1], -(1 << (TOP_K_RANGE_BITS + f)), dtype=torch.int64))

    floor = pa.public_shares(ctx, torch.full(y[0].shape, -(1 << (TOP_K_RANGE_BITS + f)), dtype=torch.int64))
    below = less_than_zero(ctx, pa.sub(y, floor))  # y_j < -2^6: raised to -2^6, never kept
    y = pa.add(y, pa.mul(ctx, below, pa.sub(floor, y)))
    bits = f + TOP_K_RANGE_BITS + 3  # now |y - t| <= 2^7

    def enough(t: Pair) -> Pair:
        kept = _greater_equal(ctx, y, _rows(t), bits)
        count = (kept[0].sum(-1), kept[1].sum(-1))
        return _greater_equal(ctx, count, pa.public_shares(ctx, count_k.expand_as(t[0])))

    steps = [2.0**e for e in range(TOP_K_RANGE_BITS - 1, -TOP_K_RESOLUTION_BITS - 1, -1)]
    return _greater_equal(ctx, y, _rows(_bisect(ctx, start, steps, enough)), bits)


def top_p_mask(ctx: PartyContext, q: Pair, p: float) -> Pair:
    """0/1 integers marking, per row of probabilities ``q``, those kept by top-p."""
    f = ctx.frac_bits
    mass = torch.tensor(round(p * (1 << f)), dtype=torch.int64)
    start = pa.public_shares(ctx, torch.zeros(q[0].shape[:-1], dtype=torch.int64))

    bits = f + PROBABILITY_BITS  # q and t lie in [0, 1]: |q - t| < 2

    def enough(t: Pair) -> Pair:
        kept = pa.mul(ctx, _greater_equal(ctx, q, _rows(t), bits), q)  # exact: a 0/1 integer times q
        total = (kept[0].sum(-1), kept[1].sum(-1))
        return _greater_equal(ctx, total, pa.public_shares(ctx, mass.expand_as(t[0])), bits)

    steps = [2.0**-e for e in range(1, TOP_P_RESOLUTION_BITS + 1)]
    return _greater_equal(ctx, q, _rows(_bisect(ctx, start, steps, enough)), bits)


def uniform(ctx: PartyContext, rows: int, seed: int | None = None, draw: int = 0) -> Pair:
    """u uniform in [0, 1) (f random bits), one per row. Without a ``seed``, a secret: each
    bit an XOR-sharing drawn from the pairwise PRG streams (share i from the stream of P_i
    and P_{i-1}), all injected into the ring at once, so no party knows u. With one, public:
    AES keyed by SHA-256 of the seed, stream ``draw`` (reproducible; local)."""
    if seed is not None:
        key = hashlib.sha256(seed.to_bytes(8, "big")).digest()[:KEY_BYTES]
        words = AesPrg(key, draw).int64((rows,))
        return pa.public_shares(ctx, words & ((1 << ctx.frac_bits) - 1))
    shape = (ctx.frac_bits, (rows + 7) // 8)
    planes = (ctx.prg_prev.uint8(shape), ctx.prg_next.uint8(shape))
    return bits_to_arith_word(ctx, planes, rows)


def sample(ctx: PartyContext, logits: Pair, settings: SamplingSettings, draw: int = 0) -> tuple[Pair, Pair]:
    """A token drawn from softmax(logits / T) with top-k and top-p applied, per row of
    ``logits`` [rows, V] (fixed point): its index (an integer secret [rows]) and its one-hot
    (integers [rows, V]). ``draw`` numbers the draws of a seeded generation."""
    f = ctx.frac_bits
    rows, vocab = logits[0].shape
    y = logits
    if settings.temperature != 1:
        y = pa.truncate(ctx, pa.mul_public(y, torch.tensor(round((1 << f) / settings.temperature))), f)
    row_max, _ = max_last_dim(ctx, y, with_index=False)
    y = pa.sub(y, _rows(row_max))
    if settings.top_k is not None and settings.top_k < vocab:
        kept = top_k_mask(ctx, y, settings.top_k)
        dropped = pa.add_public(ctx, pa.neg(kept), torch.ones((), dtype=torch.int64))
        y = pa.sub(y, pa.mul_public(dropped, torch.tensor(DROPPED << f)))
    zero = pa.public_shares(ctx, torch.zeros(rows, dtype=torch.int64))
    q = softmax_last_dim(ctx, y, zero)
    if settings.top_p is not None and settings.top_p < 1:
        q = pa.mul(ctx, top_p_mask(ctx, q, settings.top_p), q)
    cumulative = (q[0].cumsum(-1), q[1].cumsum(-1))
    total = (cumulative[0][:, -1], cumulative[1][:, -1])
    threshold = pa.mul_fixed(ctx, uniform(ctx, rows, settings.seed, draw), total, f)
    crossed = less_than_zero(ctx, pa.sub(_rows(threshold), cumulative), f + PROBABILITY_BITS)  # [c_j > u total]
    last = pa.public_shares(ctx, torch.ones(rows, 1, dtype=torch.int64))
    crossed = (torch.cat([crossed[0][:, :-1], last[0]], 1), torch.cat([crossed[1][:, :-1], last[1]], 1))
    before = (torch.nn.functional.pad(crossed[0][:, :-1], (1, 0)), torch.nn.functional.pad(crossed[1][:, :-1], (1, 0)))
    onehot = pa.sub(crossed, before)
    positions = torch.arange(vocab, dtype=torch.int64)
    index = ((onehot[0] * positions).sum(-1), (onehot[1] * positions).sum(-1))
    return index, onehot


__all__ = ["SamplingSettings", "sample", "top_k_mask", "top_p_mask", "uniform"]
