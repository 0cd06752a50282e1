"""Sampling the next token inside MPC: the distribution, the random draw and the token all stay
secret; only the token's index is opened, to the caller alone (by the service).

For secret logits x [rows, V] and public settings (temperature T, top-k k, top-p p):

1. **Temperature**: y = x / T, a public scaling (one truncation), then y - max(y) per row
   (``max_last_dim``).
2. **Top-k** (HF's ``TopKLogitsWarper``: keep every logit at least the k-th largest): a
   secret threshold t, the largest multiple of 2^-8 in [-2^6, 0] with #{j: y_j >= t} >= k,
   found bit by bit from the top (``radix_threshold``) on one bit decomposition of
   z = y + 2^6 (``bit_decompose`` on ``compare_bits`` bits: logits more than 2^6 below the row
   max, negative z, have probability below e^-64 and are never kept). Each of the 15 bits
   costs one AND, one count of bits per row (``bit_sum``, in a ring of log2 V + 1 bits), one
   comparison per row and one AND to update. Kept: y_j >= t (the k largest and any within
   2^-8 below the k-th: its resolution); the others get -2^12 (probability 0).
3. **Softmax** over the kept logits (``approx.softmax_last_dim``): probabilities q.
4. **Top-p** (HF's ``TopPLogitsWarper``: the smallest set of most likely tokens whose mass
   reaches p): the largest probability threshold t, a multiple of 2^-14 in [0, 1], with
   sum_j q_j [q_j >= t] >= p, bit by bit on one bit decomposition of q (f + 3 bits; negative
   q, an approximation's rounding, is never kept). Each of the 15 bits costs one AND, one
   bit injection into a ring of f + 3 bits, one exact product per row (the mass
   sum_j q_j [q_j >= t'], local products summed before one resharing), one comparison per
   row and one AND. Kept: q_j >= t (ties and probabilities within 2^-14 of the boundary too).
5. **The draw** (inverse transform, as ``torch.multinomial``): u uniform in [0, 1) with f
   random bits, each an XOR-sharing drawn from the parties' pairwise PRG streams (no party
   knows u) and injected into the ring together (``bits_to_arith_word``); the cumulative
   sums c_j = q_0 + ... + q_j are local; b_j = [c_j > u * c_{V-1}] (one product, V
   comparisons), b_{V-1} = 1; the one-hot is b_j - b_{j-1} (local: c is nondecreasing, so
   b is 0...01...1 and exactly one entry is 1) and the index sum_j j onehot_j (local).

Comparisons between probabilities (top-p, the draw) read f + 3 bits of the ring instead of
``compare_bits``: their operands lie in [0, 1]. The settings are public (they come with the
caller's request); every intermediate is secret. ``top_k_mask_cost`` and ``top_p_mask_cost``
give the exact rounds and bytes of the two selections: a top-k threshold bit moves
(m + 10)/8 bytes per logit (m = log2 V + 1), where comparing every logit with a bisection
candidate would move an msb and a 64-bit injection per logit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from securetorch.comm.profile import NetworkProfile, total_cost
from securetorch.prg import KEY_BYTES, AesPrg
from securetorch.protocols import arithmetic as pa
from securetorch.protocols.approx import bit_decompose, bit_decompose_cost, softmax_last_dim
from securetorch.protocols.arithmetic import Pair
from securetorch.protocols.boolean import BitPair, and_, pack_bits, unpack_bits, xor, xor_public
from securetorch.protocols.comparison import (
    bit_sum,
    bit_sum_cost,
    bit_to_arith,
    bit_to_arith_cost,
    bits_to_arith_word,
    less_than_zero,
    max_last_dim,
    msb,
    msb_cost,
)
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


def _per_element(bits: BitPair, rows: int, vocab: int) -> BitPair:
    """Per-row XOR-shared bits (packed over rows) repeated over their row's ``vocab``
    positions, packed over the flattened [rows, vocab] (local)."""
    first, second = (pack_bits(unpack_bits(share, rows).repeat_interleave(vocab)) for share in bits)
    return first, second


def radix_threshold(
    ctx: PartyContext,
    planes: BitPair,
    sign: int,
    levels: range,
    shape: tuple[int, int],
    short: Callable[[BitPair], BitPair],
) -> BitPair:
    """Which elements reach a secret per-row threshold t found bit by bit from the top.

    ``planes`` are the XOR-shared bits of the values (``bit_decompose``), packed over the
    flattened ``shape`` [rows, V]; elements whose ``sign`` bit is set are never counted or
    kept. t has its bits in ``levels`` (descending) and zeros below. For each level i the
    candidate is t + 2^i: per element, ``greater`` (the bits above i exceed t's) or ``equal``
    and bit i set marks z_j >= t + 2^i (one AND), and ``short`` of those marks says, per row
    (XOR-shared, packed over rows), that they fall short of what the threshold must keep;
    where they do not, the candidate bit is taken. The update is one AND of "short" with
    (equal, equal and bit i): equal' = (equal and bit i) xor (short and equal), greater' =
    greater xor (short and equal and bit i). The result: z_j >= t, packed like the planes.
    Cost per level: two AND rounds (3 and 6 bits per element) plus ``short``.
    """
    rows, vocab = shape
    equal = xor_public(ctx, (planes[0][sign], planes[1][sign]), torch.full_like(planes[0][sign], 255))
    greater = (torch.zeros_like(equal[0]), torch.zeros_like(equal[1]))
    for i in levels:
        above = and_(ctx, equal, (planes[0][i], planes[1][i]))
        fall_short = _per_element(short(xor(greater, above)), rows, vocab)
        both = tuple(torch.stack([s, s]) for s in fall_short)
        update = and_(ctx, (both[0], both[1]), (torch.stack([equal[0], above[0]]), torch.stack([equal[1], above[1]])))
        equal = (above[0] ^ update[0][0], above[1] ^ update[1][0])
        greater = (greater[0] ^ update[0][1], greater[1] ^ update[1][1])
    return xor(greater, equal)


def _top_k_layout(vocab: int, frac_bits: int) -> tuple[int, range]:
    """(count ring bits, threshold bit levels) of ``top_k_mask``."""
    return max(4, vocab.bit_length() + 1), range(
        frac_bits + TOP_K_RANGE_BITS, max(frac_bits - TOP_K_RESOLUTION_BITS, 0) - 1, -1
    )


def top_k_mask(ctx: PartyContext, y: Pair, k: int) -> Pair:
    """0/1 integers marking, per row of ``y`` [rows, V] (row max 0), the logits kept by top-k:
    y_j >= t for the largest t (a multiple of 2^-8 in [-2^6, 0]) that keeps at least k."""
    rows, vocab = y[0].shape
    f = ctx.frac_bits
    count_bits, levels = _top_k_layout(vocab, f)
    z = pa.add_public(ctx, y, 1 << (f + TOP_K_RANGE_BITS))
    planes = bit_decompose(ctx, z, ctx.compare_bits)
    minus_k = -k

    def short(marked: BitPair) -> BitPair:  # [#marked < k]
        count = bit_sum(ctx, marked, (rows, vocab), count_bits)
        return msb(ctx, pa.add_public(ctx, count, minus_k), count_bits)

    kept = radix_threshold(ctx, planes, ctx.compare_bits - 1, levels, (rows, vocab), short)
    arith = bit_to_arith(ctx, kept, (rows * vocab,))
    return arith[0].view(rows, vocab), arith[1].view(rows, vocab)


def top_k_mask_cost(
    rows: int, vocab: int, frac_bits: int, compare_bits: int, network: NetworkProfile | None = None
) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``top_k_mask`` on [rows, vocab], on parties
    whose context declares ``network``."""
    count_bits, levels = _top_k_layout(vocab, frac_bits)
    per_level = [bit_sum_cost(rows, vocab, count_bits), msb_cost(rows, count_bits, network)]
    return total_cost(
        [bit_decompose_cost(rows * vocab, compare_bits), bit_to_arith_cost(rows * vocab, 64, network)]
        + _radix_cost(rows * vocab, per_level) * len(levels)
    )


def _top_p_layout(frac_bits: int) -> tuple[int, range]:
    """(ring bits of the mass and of the decomposition of q, threshold bit levels) of ``top_p_mask``."""
    return frac_bits + PROBABILITY_BITS, range(frac_bits, max(frac_bits - TOP_P_RESOLUTION_BITS, 0) - 1, -1)


def top_p_mask(ctx: PartyContext, q: Pair, p: float) -> Pair:
    """0/1 integers marking, per row of probabilities ``q`` [rows, V], those kept by top-p:
    q_j >= t for the largest t (a multiple of 2^-14 in [0, 1]) whose kept mass reaches p."""
    rows, vocab = q[0].shape
    bits, levels = _top_p_layout(ctx.frac_bits)
    planes = bit_decompose(ctx, q, bits)
    minus_p = -round(p * (1 << ctx.frac_bits))
    columns = (q[0].unsqueeze(-1), q[1].unsqueeze(-1))

    def short(marked: BitPair) -> BitPair:  # [sum of marked q < p]
        picked = bit_to_arith(ctx, marked, (rows * vocab,), bits)
        mass = pa.matmul(ctx, (picked[0].view(rows, 1, vocab), picked[1].view(rows, 1, vocab)), columns)
        return msb(ctx, pa.add_public(ctx, (mass[0].view(rows), mass[1].view(rows)), minus_p), bits)

    kept = radix_threshold(ctx, planes, bits - 1, levels, (rows, vocab), short)
    arith = bit_to_arith(ctx, kept, (rows * vocab,))
    return arith[0].view(rows, vocab), arith[1].view(rows, vocab)


def top_p_mask_cost(rows: int, vocab: int, frac_bits: int, network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``top_p_mask`` on [rows, vocab], on parties
    whose context declares ``network``."""
    bits, levels = _top_p_layout(frac_bits)
    n = rows * vocab
    per_level = [bit_to_arith_cost(n, bits, network), (1, 24 * rows), msb_cost(rows, bits, network)]
    first = [bit_decompose_cost(n, bits), bit_to_arith_cost(n, 64, network)]
    return total_cost(first + _radix_cost(n, per_level) * len(levels))


def _radix_cost(n: int, short: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The costs of one level of ``radix_threshold`` on n elements whose ``short`` costs these."""
    packed = (n + 7) // 8
    return [(1, 3 * packed), *short, (1, 6 * packed)]


def uniform(ctx: PartyContext, rows: int, seed: int | None = None, draw: int = 0) -> Pair:
    """u uniform in [0, 1) (f random bits), one per row. Without a ``seed``, a secret: each
    bit an XOR-sharing drawn from the pairwise PRG streams (share i from the stream of P_i
    and P_{i-1}), all injected into the ring at once, so no party knows u. With one, public:
    AES keyed by SHA-256 of the seed, stream ``draw`` (reproducible; local)."""
    if seed is not None:
        key = hashlib.sha256(seed.to_bytes(8, "big")).digest()[:KEY_BYTES]
        words = AesPrg(key, draw, ctx.device).int64((rows,))
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
        y = pa.truncate(ctx, pa.mul_public(y, round((1 << f) / settings.temperature)), f)
    row_max, _ = max_last_dim(ctx, y, with_index=False)
    y = pa.sub(y, _rows(row_max))
    if settings.top_k is not None and settings.top_k < vocab:
        kept = top_k_mask(ctx, y, settings.top_k)
        dropped = pa.add_public(ctx, pa.neg(kept), 1)
        y = pa.sub(y, pa.mul_public(dropped, DROPPED << f))
    zero = pa.public_shares(ctx, torch.zeros(rows, dtype=torch.int64, device=ctx.device))
    q = softmax_last_dim(ctx, y, zero)
    if settings.top_p is not None and settings.top_p < 1:
        q = pa.mul(ctx, top_p_mask(ctx, q, settings.top_p), q)
    cumulative = (q[0].cumsum(-1), q[1].cumsum(-1))
    total = (cumulative[0][:, -1], cumulative[1][:, -1])
    threshold = pa.mul_fixed(ctx, uniform(ctx, rows, settings.seed, draw), total, f)
    crossed = less_than_zero(ctx, pa.sub(_rows(threshold), cumulative), f + PROBABILITY_BITS)  # [c_j > u total]
    last = pa.public_shares(ctx, torch.ones(rows, 1, dtype=torch.int64, device=ctx.device))
    crossed = (torch.cat([crossed[0][:, :-1], last[0]], 1), torch.cat([crossed[1][:, :-1], last[1]], 1))
    before = (torch.nn.functional.pad(crossed[0][:, :-1], (1, 0)), torch.nn.functional.pad(crossed[1][:, :-1], (1, 0)))
    onehot = pa.sub(crossed, before)
    positions = torch.arange(vocab, dtype=torch.int64, device=ctx.device)
    index = ((onehot[0] * positions).sum(-1), (onehot[1] * positions).sum(-1))
    return index, onehot


__all__ = [
    "SamplingSettings",
    "radix_threshold",
    "sample",
    "top_k_mask",
    "top_k_mask_cost",
    "top_p_mask",
    "top_p_mask_cost",
    "uniform",
]
