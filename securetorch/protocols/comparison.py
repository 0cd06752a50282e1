"""Comparison and selection: sign bits, bit injection, select, ReLU, max/argmax trees.

The sign of a shared x is the top bit of x mod 2^l: exact whenever |x| < 2^(l-1) as a ring
element (|x| < 2^(l-1-f) as a real). ``l`` is the party's ``compare_bits`` setting
(default 44: reals below 2^25 at f = 18, ample for transformer activations); working on
fewer bits than the ring's 64 makes every comparison cheaper.

Sources: ABY3 §5.3 (bit decomposition with a carry-save layer and a parallel-prefix adder),
§5.4 (bit injection with three-party OT).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from securetorch import ring
from securetorch.comm.profile import Cost, NetworkProfile, chained_costs, cheapest, runs, total_cost
from securetorch.errors import ProtocolError
from securetorch.prg import AesPrg
from securetorch.protocols import arithmetic as pa
from securetorch.protocols.arithmetic import Pair, mul
from securetorch.protocols.boolean import (
    BitPair,
    and_,
    bit_planes,
    high_bits_first,
    pack_bits,
    pack_uint,
    random_bits,
    reshare_bits,
    unpack_bits,
    unpack_uint,
    xor,
    xor_public,
)
from securetorch.session.context import PartyContext


def _carry(ctx: PartyContext, g: BitPair, p: BitPair) -> BitPair:
    """Group generate of positions [0, m) (planes in order low -> high) by a prefix tree.

    Each level combines neighbours: G = G_hi xor (P_hi and G_lo), P = P_hi and P_lo (the
    lowest group's P is never needed). ceil(log2 m) rounds, about 2m AND-planes in all.
    """
    while g[0].shape[0] > 1:
        m = g[0].shape[0]
        pairs = m // 2
        g_lo, g_hi = (s[0 : 2 * pairs : 2] for s in g), (s[1 : 2 * pairs : 2] for s in g)
        p_lo, p_hi = (s[0 : 2 * pairs : 2] for s in p), (s[1 : 2 * pairs : 2] for s in p)
        g_lo, g_hi, p_lo, p_hi = tuple(g_lo), tuple(g_hi), tuple(p_lo), tuple(p_hi)
        left = tuple(torch.cat([h, h[1:]]) for h in p_hi)
        right = tuple(torch.cat([gl, pl[1:]]) for gl, pl in zip(g_lo, p_lo, strict=True))
        r = and_(ctx, left, right)
        new_g = tuple(gh ^ ri[:pairs] for gh, ri in zip(g_hi, r, strict=True))
        new_p = tuple(torch.cat([h[:1], ri[pairs:]]) for h, ri in zip(p_hi, r, strict=True))
        if m % 2:
            new_g = tuple(torch.cat([ng, s[m - 1 :]]) for ng, s in zip(new_g, g, strict=True))
            new_p = tuple(torch.cat([nq, s[m - 1 :]]) for nq, s in zip(new_p, p, strict=True))
        g, p = new_g, new_p
    return g[0][0], g[1][0]


def _tree_planes(m: int) -> tuple[int, int]:
    """(levels, AND-planes) of ``_carry`` over m positions."""
    levels = planes = 0
    while m > 1:
        pairs = m // 2
        planes += 2 * pairs - 1
        m = pairs + m % 2
        levels += 1
    return levels, planes


def _msb_prefix_cost(n: int, bits: int) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``_msb_prefix`` on n elements."""
    levels, tree = _tree_planes(bits - 2)
    planes = (bits - 1) + (bits - 2) + tree
    return 2 + levels, 3 * planes * ((n + 7) // 8)


def _msb_prefix(ctx: PartyContext, x: Pair, bits: int) -> BitPair:
    """XOR-shared top bit of x mod 2^bits, packed over the flattened x, by a bit circuit.

    x = x_0 + x_1 + x_2 is first carry-saved into s + c (s = x_0 xor x_1 xor x_2 is the share
    pair itself; c = 2 maj(x_0, x_1, x_2), whose terms x_i and x_{i+1} each party computes
    alone: one resharing round). Then top bit = s_{l-1} xor c_{l-1} xor carry_{l-1}, the carry
    from generate/propagate bits (one AND round) and a prefix tree.
    Cost: 2 + ceil(log2(l-2)) rounds; about 3(2l + 2l)/8 bytes per element (l = 44: 8 rounds,
    ~66 bytes).
    """
    first, second = x[0].reshape(-1), x[1].reshape(-1)
    s = (bit_planes(first, bits), bit_planes(second, bits))
    maj = reshare_bits(ctx, bit_planes(first & second, bits - 1))  # maj_j for j < l-1
    s_mid = (s[0][1 : bits - 1], s[1][1 : bits - 1])
    c_mid = (maj[0][: bits - 2], maj[1][: bits - 2])  # c_j = maj_{j-1}
    g = and_(ctx, s_mid, c_mid)
    p = xor(s_mid, c_mid)
    carry = _carry(ctx, g, p)
    top_s = (s[0][bits - 1], s[1][bits - 1])
    top_c = (maj[0][bits - 2], maj[1][bits - 2])
    return xor(xor(top_s, top_c), carry)


def bit_to_arith(ctx: PartyContext, b: BitPair, shape: torch.Size | tuple[int, ...], ring_bits: int = 64) -> Pair:
    """Arithmetic shares of packed XOR-shared bits b (as integers 0/1 of ``shape``).

    ``b`` is packed along its last dim; ``shape`` is b's leading dims plus the bit count.
    Two protocols: a three-party OT (1 round, 6m/8 B per bit) and a dealer-assisted product
    (2 rounds, 3m/8 + 1/8 B per bit), the one faster on the context's network
    (``comm.profile.cheapest``); without a network, the OT below ``BYTES_BOUND_ELEMENTS`` bits
    and the dealer's product from there on. With ``ring_bits`` m < 64
    the shares are right modulo 2^m only (their high bits are noise) and every ring value
    crosses the wire in m bits: for bits that are only counted or compared in a small range.
    ``bit_to_arith_cost`` gives the exact rounds and bytes.
    """
    if not 1 <= ring_bits <= 64:
        raise ValueError(f"ring_bits must lie in [1, 64], got {ring_bits}")
    if _injection_variant(math.prod(shape), ring_bits, ctx.network) == "ot":
        return _bit_to_arith_ot(ctx, b, shape, ring_bits)
    return _bit_to_arith_dealer(ctx, b, shape, ring_bits)


def _injection_variants(n: int, ring_bits: int, rows: int = 1) -> dict[str, tuple[int, int]]:
    """Exact (rounds, bytes of all parties) of each bit injection protocol on ``rows`` packed
    rows of n bits (each row padded to whole bytes)."""
    values = _wire_bytes(rows * n, ring_bits)
    return {"ot": (1, 6 * values), "dealer": (2, 3 * values + rows * ((n + 7) // 8))}


def _injection_variant(n: int, ring_bits: int, network: NetworkProfile | None) -> str:
    """The bit injection for n bits: the faster on ``network``; without one, the OT below
    ``BYTES_BOUND_ELEMENTS`` bits and the dealer's product from there on."""
    fallback = "ot" if n < pa.BYTES_BOUND_ELEMENTS else "dealer"
    return cheapest(network, _injection_variants(n, ring_bits), fallback)


def bit_to_arith_cost(
    n: int, ring_bits: int = 64, network: NetworkProfile | None = None, rows: int = 1
) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``bit_to_arith`` on ``rows`` packed rows of n
    bits, on parties whose context declares ``network``."""
    return _injection_variants(n, ring_bits, rows)[_injection_variant(rows * n, ring_bits, network)]


def _wire_bytes(n: int, ring_bits: int) -> int:
    """Bytes of n ring values sent modulo 2^``ring_bits`` (``_to_wire``)."""
    return 8 * n if ring_bits == 64 else (n * ring_bits + 7) // 8


def _to_wire(v: torch.Tensor, ring_bits: int) -> torch.Tensor:
    """Ring values as they cross the wire when only their value modulo 2^``ring_bits``
    matters: ``ring_bits`` bits each (int64 as it is for the full ring)."""
    if ring_bits == 64:
        return v
    return pack_uint(v & ((1 << ring_bits) - 1), ring_bits)


def _from_wire(t: torch.Tensor, ring_bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``_to_wire`` (the values modulo 2^``ring_bits``)."""
    return t if ring_bits == 64 else unpack_uint(t, ring_bits, shape)


def _bit_to_arith_ot(ctx: PartyContext, b: BitPair, shape: torch.Size | tuple[int, ...], ring_bits: int) -> Pair:
    """Bit injection by three-party OT: 1 round, 6 ring values (48 bytes at 64 bits) per bit.

    b = c xor b_2 with c = b_0 xor b_1 known to P_0 and b_2 known to P_1 and P_2. P_0 sends each
    of P_1, P_2 both candidates m_j = (c xor j) - s_0 - s_1, masked with pads it shares with the
    *other* one, who sends the pad for j = b_2 (a three-party OT, ABY3 §5.4.1, run in both
    directions at once). Both learn s_2 = m_{b_2} = b - s_0 - s_1; s_0, s_1 come from keys.
    """
    count = shape[-1]
    size = tuple(shape)
    n = count
    if ctx.rank == 0:
        s0, pad0, pad1 = (ctx.prg_prev.int64(size) for _ in range(3))  # key k_0 (with P_2)
        s1, qad0, qad1 = (ctx.prg_next.int64(size) for _ in range(3))  # key k_1 (with P_1)
        c = unpack_bits(b[0] ^ b[1], n)
        m0, m1 = c - s0 - s1, (1 - c) - s0 - s1
        to_1 = [_to_wire(m0 + pad0, ring_bits), _to_wire(m1 + pad1, ring_bits)]
        to_2 = [_to_wire(m0 + qad0, ring_bits), _to_wire(m1 + qad1, ring_bits)]
        ctx.net.exchange({1: to_1, 2: to_2}, [])
        return s0, s1
    if ctx.rank == 1:  # holds (b_1, b_2); shares k_1 with P_0
        s1, s2 = _choose(ctx, ctx.prg_prev, unpack_bits(b[1], n).bool(), size, other=2, ring_bits=ring_bits)
        return s1, s2
    s0, s2 = _choose(
        ctx, ctx.prg_next, unpack_bits(b[0], n).bool(), size, other=1, ring_bits=ring_bits
    )  # P_2: (b_2, b_0), k_0
    return s2, s0


def _choose(
    ctx: PartyContext, stream: Any, b2: torch.Tensor, size: tuple[int, ...], other: int, ring_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A receiver's side of ``bit_to_arith``: draw its key share and the other receiver's
    pads (from the key it shares with P_0), send that receiver the pad for b_2, and open
    m_{b_2} from P_0's two masked candidates."""
    own, pad0, pad1 = (stream.int64(size) for _ in range(3))
    got = ctx.net.exchange({other: [_to_wire(torch.where(b2, pad1, pad0), ring_bits)]}, [0, other])
    masked0, masked1 = (_from_wire(t, ring_bits, size) for t in got[0])
    return own, torch.where(b2, masked1, masked0) - _from_wire(got[other][0], ring_bits, size)


def _dealer_additive(
    ctx: PartyContext, b: BitPair, size: tuple[int, ...], ring_bits: int
) -> tuple[int, int, int, torch.Tensor | None]:
    """Round 1 of the dealer-assisted bit injection: (D, A, B, this party's additive share of
    the bits b as integers of ``size``, right modulo 2^``ring_bits``; None for D, who holds 0).

    With a rotating dealer D, A = D+1, B = D+2: b = x xor y where x = b_A xor b_B is known
    to A and y = b_D to B and D, so b = x + y - 2xy. D deals r (a bit, D-A key) and, since
    it knows y, additive shares h_A + h_B = r y (h_A from the D-A key, h_B sent to B). A sends
    e = x xor r to B; with x = e + (1 - 2e) r, xy = e y + (1 - 2e)(h_A + h_B), so A holds
    x - 2(1 - 2e) h_A and B holds y - 2 e y - 2(1 - 2e) h_B. One round: A -> B e (packed),
    D -> B h_B (m bits each). B sees e (r is uniform to it) and h_B (h_A is uniform to it);
    A and D see nothing."""
    count = size[-1]
    dealer = ctx.next_dealer()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    if ctx.rank == dealer:  # holds (b_D, b_A)
        with_a = ctx.prg_with(rank_a)
        y = unpack_bits(b[0], count)
        r, h_a = random_bits(with_a, y.numel()).reshape(size), with_a.int64(size)
        ctx.net.exchange({rank_b: [_to_wire(r * y - h_a, ring_bits)]}, [])
        return dealer, rank_a, rank_b, None
    if ctx.rank == rank_a:  # holds (b_A, b_B)
        with_d = ctx.prg_with(dealer)
        x = unpack_bits(b[0] ^ b[1], count)
        r, h_a = random_bits(with_d, x.numel()).reshape(size), with_d.int64(size)
        e = x ^ r
        ctx.net.exchange({rank_b: [pack_bits(e)]}, [])
        return dealer, rank_a, rank_b, x - 2 * (1 - 2 * e) * h_a
    y = unpack_bits(b[1], count)  # B holds (b_B, b_D)
    got = ctx.net.exchange({}, [dealer, rank_a])
    h_b, e = _from_wire(got[dealer][0], ring_bits, size), unpack_bits(got[rank_a][0], count)
    return dealer, rank_a, rank_b, y - 2 * e * y - 2 * (1 - 2 * e) * h_b


def _bit_to_arith_dealer(ctx: PartyContext, b: BitPair, shape: torch.Size | tuple[int, ...], ring_bits: int) -> Pair:
    """Bit injection by a dealer-assisted product: 2 rounds, 3 ring values (24 bytes at 64
    bits) + 1/8 byte per bit.

    Round 1 (``_dealer_additive``) leaves A and B additive shares of the bits. Round 2
    reshares them with c_A (D-A key) and c_D (D-B key): A and B swap their share less its
    mask (``_replicate_additive``). D receives nothing.
    """
    size = tuple(shape)
    dealer, _, _, mine = _dealer_additive(ctx, b, size, ring_bits)
    return _replicate_additive(ctx, dealer, mine, size, ring_bits)


def _replicate_additive(
    ctx: PartyContext, dealer: int, mine: torch.Tensor | None, size: tuple[int, ...], ring_bits: int
) -> Pair:
    """Additive shares held by A = D+1 and B = D+2 (``mine``; None for the dealer D) to
    replicated shares, in one round: with c_A (D-A key) and c_D (D-B key), A and B swap their
    share less its mask. D receives nothing."""
    masks = _replica_masks(ctx, dealer, size, torch.int64)
    if mine is None:
        ctx.net.exchange({}, [])
        return masks
    sent = mine - masks
    theirs = _from_wire(_swap(ctx, dealer, _to_wire(sent, ring_bits)), ring_bits, size)
    return _replicated(ctx, dealer, masks, sent + theirs)


def _replicate_xor(ctx: PartyContext, dealer: int, mine: torch.Tensor | None, nbytes: int) -> BitPair:
    """Packed XOR shares (``nbytes`` bytes) held by A and B (``mine``; None for the dealer) to
    replicated XOR shares in one round, as ``_replicate_additive`` does for additive shares."""
    masks = _replica_masks(ctx, dealer, (nbytes,), torch.uint8)
    if mine is None:
        ctx.net.exchange({}, [])
        return masks
    sent = mine ^ masks
    return _replicated(ctx, dealer, masks, sent ^ _swap(ctx, dealer, sent))


def _replica_masks(ctx: PartyContext, dealer: int, size: tuple[int, ...], dtype: torch.dtype) -> Any:
    """The masks of ``_replicate_additive`` (int64) or ``_replicate_xor`` (uint8), drawn
    before the round they serve: D's replicated shares (c_D, c_A), A's c_A, B's c_D."""

    def draw(peer: int) -> torch.Tensor:
        stream = ctx.prg_with(peer)
        return stream.int64(size) if dtype == torch.int64 else stream.uint8(size)

    if ctx.rank == dealer:
        return draw((dealer + 2) % 3), draw((dealer + 1) % 3)
    return draw(dealer)


def _swap(ctx: PartyContext, dealer: int, sent: torch.Tensor) -> torch.Tensor:
    """A and B swap ``sent`` (1 round): what the other sent."""
    other = (dealer + 2) % 3 if ctx.rank == (dealer + 1) % 3 else (dealer + 1) % 3
    return ctx.net.exchange({other: [sent]}, [other])[other][0]


def _replicated(ctx: PartyContext, dealer: int, mask: torch.Tensor, total: torch.Tensor) -> Pair:
    """A's or B's replicated shares once they have swapped their masked shares: (c_A, x_B)
    for A, (x_B, c_D) for B, x_B being the total of what they sent."""
    return (mask, total) if ctx.rank == (dealer + 1) % 3 else (total, mask)


def bit_sum(ctx: PartyContext, b: BitPair, shape: tuple[int, int], ring_bits: int) -> Pair:
    """Per-row counts of XOR-shared bits b, packed over the flattened ``shape`` [rows, cols]
    (row-major), as integer shares [rows] right modulo 2^``ring_bits`` (m: counts below 2^m).

    Round 1 of the dealer-assisted injection (``_dealer_additive``) leaves A and B additive
    shares of every bit, which they sum over each row, so that only that round is per bit;
    round 2 reshares the [rows] sums (``reshare``). ``bit_sum_cost``: 2 rounds, (m + 1)/8
    bytes per bit and 24 per row.
    """
    rows, cols = shape
    mine = _dealer_additive(ctx, b, (rows * cols,), ring_bits)[3]
    total = torch.zeros(rows, dtype=torch.int64, device=ctx.device) if mine is None else mine.view(rows, cols).sum(-1)
    return pa.reshare(ctx, total)


def bit_sum_cost(rows: int, cols: int, ring_bits: int) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``bit_sum`` on [rows, cols] bits."""
    n = rows * cols
    return 2, (n + 7) // 8 + _wire_bytes(n, ring_bits) + 24 * rows


def bits_to_arith_word(ctx: PartyContext, planes: BitPair, n: int) -> Pair:
    """B2A of XOR-shared words given as bit planes [bits, ceil(n/8)] (bit j in plane j):
    sum_j 2^j [b_j], all planes injected in one batch (``bit_to_arith``)."""
    bits = planes[0].shape[0]
    arith = bit_to_arith(ctx, planes, (bits, n))
    weights = 1 << torch.arange(bits, dtype=torch.int64, device=ctx.device).unsqueeze(1)
    return (arith[0] * weights).sum(0), (arith[1] * weights).sum(0)


def less_than_zero(ctx: PartyContext, x: Pair, bits: int | None = None) -> Pair:
    """[x < 0] as arithmetic 0/1 (for |x| < 2^(l-1), l = ``bits``, by default the context's
    ``compare_bits``; a caller that bounds x more tightly passes a smaller l and pays for l
    bits only): the dealt tables' sign with integer outputs, or ``msb`` by the bit circuit
    and a ``bit_to_arith``, whichever ``less_than_zero_cost`` finds faster on the context's
    network."""
    bits = bits or ctx.compare_bits
    _check_bits(bits)
    variant = _sign_variant(x[0].numel(), bits, 64, ctx.network)
    if variant == "circuit":
        out = bit_to_arith(ctx, _msb_prefix(ctx, x, bits), (x[0].numel(),))
    elif variant == "zero_test":
        out = _zero_test_sign(ctx, x, bits, 64)
    else:
        out = _dealt_sign(ctx, x, bits, _TABLE_PLANS[variant](bits, 64), 64)
    return out[0].reshape(x[0].shape), out[1].reshape(x[0].shape)


def less_than_zero_cost(n: int, bits: int, network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``less_than_zero`` on n elements of ``bits``
    bits, on parties whose context declares ``network``."""
    return _sign_variants(n, bits, 64, network)[_sign_variant(n, bits, 64, network)]


def msb(ctx: PartyContext, x: Pair, bits: int) -> BitPair:
    """XOR-shared top bit of x mod 2^bits, packed over the flattened x: by the dealt tables
    (``_dealt_sign``) or by the bit circuit (``_msb_prefix``), whichever ``msb_cost`` finds
    faster on the context's network."""
    _check_bits(bits)
    variant = _sign_variant(x[0].numel(), bits, None, ctx.network)
    if variant == "circuit":
        return _msb_prefix(ctx, x, bits)
    if variant == "zero_test":
        return _zero_test_sign(ctx, x, bits, None)
    return _dealt_sign(ctx, x, bits, _TABLE_PLANS[variant](bits, None), None)


def msb_cost(n: int, bits: int, network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``msb`` on n elements of ``bits`` bits, on
    parties whose context declares ``network``."""
    return _sign_variants(n, bits, None, network)[_sign_variant(n, bits, None, network)]


def _check_bits(bits: int) -> None:
    if not 4 <= bits <= 64:
        raise ValueError(f"comparisons work on 4 to 64 bits, got {bits}")


# ----------------------------------------------------------------------------- sign by dealt tables


@dataclass(frozen=True)
class TablePlan:
    """How ``_dealt_sign`` splits the l - 1 low bits of c = x + r: block ``widths`` (low to
    high), then for each level above the blocks the sizes of its groups (children per node,
    low to high); the last level is one group, the root."""

    widths: tuple[int, ...]
    levels: tuple[tuple[int, ...], ...]

    @property
    def symbol_entries(self) -> int:
        """Table entries of 2 bits per element, of the blocks and of the levels below the root."""
        return sum(1 << w for w in self.widths) + sum(4**g for level in self.levels[:-1] for g in level)

    @property
    def root_entries(self) -> int:
        return 4 ** self.levels[-1][0]

    def cost(self, n: int, bits: int, ring_bits: int | None) -> tuple[int, int]:
        """Exact (rounds, bytes of all parties) of ``_dealt_sign`` on n elements; ``ring_bits``
        None: the sign as XOR-shared bits, else as integers sent in that many bits."""
        roots = self.root_entries
        dealt = (n * self.symbol_entries + 3) // 4
        dealt += (n * roots + 7) // 8 if ring_bits is None else _wire_bytes(n * roots, ring_bits)
        opened = [len(self.widths)] + [len(level) for level in self.levels[:-1]]
        result = (n + 7) // 8 if ring_bits is None else _wire_bytes(n, ring_bits)
        nbytes = 2 * _wire_bytes(n, bits) + dealt + sum(2 * ((2 * n * nodes + 7) // 8) for nodes in opened)
        return len(self.levels) + 2, nbytes + 2 * result


def _even_split(total: int, parts: int) -> tuple[int, ...]:
    return tuple(total // parts + (1 if i < total % parts else 0) for i in range(parts))


# A root table has 4^g entries per element: at most this many children (4096 entries).
ROOT_FAN_IN = 6


def _table_plan(depth: int, bits: int, ring_bits: int | None) -> TablePlan | None:
    """Of the plans with ``depth`` levels above the blocks, the one that deals the fewest
    bytes per element (every block count and inner fan-in is tried); None if l - 1 bits
    cannot fill one."""
    best: tuple[int, TablePlan] | None = None
    for blocks in range(2, bits):
        for fan_in in range(2, ROOT_FAN_IN + 1):
            nodes, levels = blocks, []
            for _ in range(depth - 1):
                groups = -(-nodes // fan_in)
                levels.append(_even_split(nodes, groups))
                nodes = groups
            if not 2 <= nodes <= ROOT_FAN_IN:
                continue
            plan = TablePlan(_even_split(bits - 1, blocks), (*levels, (nodes,)))
            size = plan.cost(1 << 10, bits, ring_bits)[1]
            if best is None or size < best[0]:
                best = (size, plan)
    return None if best is None else best[1]


_TABLE_PLANS = {f"tables{depth}": functools.cache(functools.partial(_table_plan, depth)) for depth in (1, 2, 3)}
# Without a network: the masked zero test (4 rounds for integer outputs, 3 for bits, against
# 8 or 9) up to this many elements, the bit circuit (the least local work) beyond. On
# loopback (3 party processes, 2 cores), ms per comparison with integer outputs by the
# zero test / circuit (best of two runs with the compiled loops): 1.9 / 3.9 at 96 elements,
# 3.1 / 4.0 at 768, 4.9 / 4.8 at 1536, 8.6 / 4.5 at 3072.
ZERO_TEST_ELEMENTS = 1024


def _sign_variants(
    n: int, bits: int, ring_bits: int | None, network: NetworkProfile | None
) -> dict[str, tuple[int, int]]:
    """Exact (rounds, bytes of all parties) of each way to the sign of n elements: the bit
    circuit (followed by a ``bit_to_arith`` for integer outputs) and each table depth."""
    circuit = _msb_prefix_cost(n, bits)
    if ring_bits is not None:
        circuit = total_cost([circuit, bit_to_arith_cost(n, ring_bits, network)])
    variants = {"circuit": circuit, "zero_test": _zero_test_cost(n, bits, ring_bits)}
    for name, plan_for in _TABLE_PLANS.items():
        plan = plan_for(bits, ring_bits)
        if plan is not None:
            variants[name] = plan.cost(n, bits, ring_bits)
    return variants


def _sign_variant(n: int, bits: int, ring_bits: int | None, network: NetworkProfile | None) -> str:
    variants = _sign_variants(n, bits, ring_bits, network)
    fallback = "zero_test" if n <= ZERO_TEST_ELEMENTS else "circuit"
    return cheapest(network, variants, fallback, {"zero_test": _zero_test_seconds(n, bits)})


@functools.cache
def _table_layout(plan: TablePlan, device: torch.device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """(where each node's table starts among the symbol entries, per level below the root;
    each block's lowest bit; each block's mask), on ``device``."""
    sizes = [[1 << w for w in plan.widths]] + [[4**g for g in level] for level in plan.levels[:-1]]
    offsets, start = [], 0
    for level in sizes:
        offsets.append(torch.tensor([start + sum(level[:i]) for i in range(len(level))], device=device))
        start += sum(level)
    shifts = torch.tensor([sum(plan.widths[:j]) for j in range(len(plan.widths))], device=device)
    block_masks = torch.tensor([(1 << w) - 1 for w in plan.widths], device=device)
    return tuple(offsets), shifts, block_masks


def _pack_symbols(symbols: torch.Tensor) -> torch.Tensor:
    """2-bit values (uint8, any shape) packed four to a byte, in order (value i in bits
    2(i mod 4) and up of byte i // 4: the layout of ``pack_bits`` on their bits)."""
    flat = symbols.reshape(-1)
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    quads = flat.view(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def _unpack_symbols(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of ``_pack_symbols``: the first ``count`` 2-bit values (uint8)."""
    return ((packed.unsqueeze(1) >> _symbol_shifts(packed.device)) & 3).reshape(-1)[:count]


@functools.cache
def _symbol_shifts(device: torch.device) -> torch.Tensor:
    """0, 2, 4, 6 as uint8 on ``device``: where a byte holds its four 2-bit symbols."""
    return torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=device)


def _symbol_at(packed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The 2-bit values at flat positions ``index`` of a ``_pack_symbols`` array."""
    return (packed[index >> 2] >> ((index & 3) << 1).to(torch.uint8)) & 3


def _bit_at(packed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The bits at flat positions ``index`` of a ``pack_bits`` array."""
    return (packed[index >> 3] >> (index & 7).to(torch.uint8)) & 1


def _combine(children: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(lt, eq) of a range from its sub-ranges' (lt, eq), low to high: the highest sub-range
    that differs decides."""
    lt, eq = children[0]
    for lt_t, eq_t in children[1:]:
        lt, eq = lt_t | (eq_t & lt), eq & eq_t
    return lt, eq


def _dealer_mask(ctx: PartyContext, rank_a: int, rank_b: int, n: int) -> torch.Tensor:
    """The dealer's r = r_A + r_B of a masked opening (r_A from the D-A key, r_B from the D-B
    key; A and B draw theirs in ``_masked_half``)."""
    return ctx.prg_with(rank_a).int64((n,)) + ctx.prg_with(rank_b).int64((n,))


def _half(ctx: PartyContext, x: Pair, dealer: int) -> torch.Tensor:
    """A's x_A or B's x_B + x_D: its part of a two-party sharing of x between A = D+1 and
    B = D+2."""
    return x[0] if ctx.rank == (dealer + 1) % 3 else x[0] + x[1]


def _masked_half(ctx: PartyContext, half: torch.Tensor, dealer: int) -> torch.Tensor:
    """A's or B's half of c = x + r (flattened) from its ``_half`` of x: x_A + r_A or
    x_B + x_D + r_B, which A and B swap to open c."""
    return half.reshape(-1) + ctx.prg_with(dealer).int64((half.numel(),))


def _deal_tables(
    ctx: PartyContext, rank_a: int, rank_b: int, n: int, bits: int, plan: TablePlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dealer's tables for one comparison: symbol entries [n, E] (2-bit, uint8) and root
    entries [n, R] (0/1, int64).

    r = r_A + r_B mod 2^l (r_A from the D-A key, r_B from the D-B key). A block r_j of r's
    low bits gives, for every value v of c's block, the symbol [v < r_j] + 2 [v = r_j]; a
    group's table gives, for every opened (masked) symbol of its children, their combination;
    every symbol below the root is XOR-masked with 2 bits of the dealer's own stream, and the
    root's entry is [c_low < r_low] xor r's top bit."""
    r = _dealer_mask(ctx, rank_a, rank_b, n)
    low = bits - 1
    r_low, r_top = r & ((1 << low) - 1), ((r >> low) & 1).to(torch.uint8)
    nodes = [len(plan.widths)] + [len(level) for level in plan.levels[:-1]]
    count = n * sum(nodes)
    masks = _unpack_symbols(ctx.prg_private.uint8(((count + 3) // 4,)), count).view(n, -1).split(nodes, 1)
    tables, start = [], 0
    for j, width in enumerate(plan.widths):
        r_j = ((r_low >> start) & ((1 << width) - 1)).unsqueeze(1)
        start += width
        v = torch.arange(1 << width, dtype=torch.int64, device=ctx.device)
        symbol = (v < r_j).to(torch.uint8) | ((v == r_j).to(torch.uint8) << 1)
        tables.append(symbol ^ masks[0][:, j : j + 1])
    root = torch.empty(0, device=ctx.device)
    for i, level in enumerate(plan.levels):
        child = 0
        for k, group in enumerate(level):
            w = torch.arange(4**group, dtype=torch.int64, device=ctx.device)
            opened = [((w >> (2 * t)) & 3).to(torch.uint8) for t in range(group)]
            symbols = [o ^ masks[i][:, child + t : child + t + 1] for t, o in enumerate(opened)]
            lt, eq = _combine([(s & 1, s >> 1) for s in symbols])
            child += group
            if i == len(plan.levels) - 1:
                root = (lt ^ r_top.unsqueeze(1)).long()
            else:
                tables.append((lt | (eq << 1)) ^ masks[i + 1][:, k : k + 1])
    return torch.cat(tables, 1), root


def _dealt_sign(ctx: PartyContext, x: Pair, bits: int, plan: TablePlan, ring_bits: int | None) -> Any:
    """The top bit of x mod 2^l (l = ``bits``) from tables dealt by the third party: packed
    XOR shares (``ring_bits`` None) or integer shares right modulo 2^``ring_bits``.

    With a rotating dealer D, A = D+1, B = D+2 (the masked opening of FSS-style comparisons
    with a dealer, Boyle et al. EUROCRYPT 2021, evaluated by one-time truth tables, Ishai et
    al. TCC 2013): round 1: A and B open c = x + r mod 2^l to each other (A sends x_A + r_A,
    B sends x_B + x_D + r_B, l bits each), while D sends B its share of every table
    (``_deal_tables``; A's share comes from the D-A key). Then top(x) = top(c) xor top(r)
    xor [c_low < r_low]: A and B look up their shares of each block's masked symbol at c's
    block, and per level above the blocks open the masked symbols to each other (2 bits per
    node, 1 round) and look up the group's table at them; the root's table holds the answer
    (xor top(r)), and A adds top(c). A last round makes the A-B shares replicated
    (``_replicate_xor`` or ``_replicate_additive``). Rounds: levels + 2 (4 at depth 2);
    bytes: ``TablePlan.cost``. Views: B's table shares are masked by the D-A key, c by r,
    each opened symbol by D's own mask; D receives nothing.
    """
    n = x[0].numel()
    dealer = ctx.next_dealer()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    entries, roots = plan.symbol_entries, plan.root_entries
    symbol_bytes, root_bytes = (n * entries + 3) // 4, (n * roots + 7) // 8
    packed_out = (n + 7) // 8
    if ctx.rank == dealer:
        symbols, root = _deal_tables(ctx, rank_a, rank_b, n, bits, plan)
        with_a = ctx.prg_with(rank_a)
        message = [_pack_symbols(symbols) ^ with_a.uint8((symbol_bytes,))]
        if ring_bits is None:
            message.append(pack_bits(root.reshape(-1)) ^ with_a.uint8((root_bytes,)))
        else:
            message.append(_to_wire(root - with_a.int64((n, roots)), ring_bits))
        ctx.net.exchange({rank_b: message}, [])
        for _ in plan.levels:
            ctx.net.exchange({}, [])
        if ring_bits is None:
            return _replicate_xor(ctx, dealer, None, packed_out)
        return _replicate_additive(ctx, dealer, None, (n,), ring_bits)
    is_a = ctx.rank == rank_a
    other = rank_b if is_a else rank_a
    mine = _masked_half(ctx, _half(ctx, x, dealer), dealer)
    with_d = ctx.prg_with(dealer)
    if is_a:
        symbols = with_d.uint8((symbol_bytes,))
        root = with_d.uint8((root_bytes,)) if ring_bits is None else with_d.int64((n, roots))
        got = ctx.net.exchange({other: [_to_wire(mine, bits)]}, [other])
    else:
        got = ctx.net.exchange({other: [_to_wire(mine, bits)]}, [dealer, other])
        symbols, root = got[dealer]
        if ring_bits is not None:
            root = _from_wire(root, ring_bits, (n, roots))
    c = mine + _from_wire(got[other][0], bits, (n,))
    low = bits - 1
    c_low, c_top = c & ((1 << low) - 1), (c >> low) & 1
    offsets, shifts, block_masks = _table_layout(plan, ctx.device)
    rows = torch.arange(n, dtype=torch.int64, device=ctx.device).unsqueeze(1)
    held = _symbol_at(symbols, rows * entries + offsets[0] + ((c_low.unsqueeze(1) >> shifts) & block_masks))
    for i, level in enumerate(plan.levels):
        theirs = ctx.net.exchange({other: [_pack_symbols(held)]}, [other])[other][0]
        opened = (held ^ _unpack_symbols(theirs, held.numel()).view(held.shape)).long()
        starts = [sum(level[:k]) for k in range(len(level))]
        index = torch.stack(
            [sum(opened[:, s + t] << (2 * t) for t in range(g)) for s, g in zip(starts, level, strict=True)], 1
        )
        if i < len(plan.levels) - 1:
            held = _symbol_at(symbols, rows * entries + offsets[i + 1] + index)
        elif ring_bits is None:
            held = _bit_at(root, rows[:, 0] * roots + index[:, 0]).long()
        else:
            held = root.gather(1, index)[:, 0]
    if ring_bits is None:
        out = pack_bits(held ^ c_top if is_a else held)
        return _replicate_xor(ctx, dealer, out, packed_out)
    flip = 1 - 2 * c_top  # top(c) xor t = top(c) + (1 - 2 top(c)) t
    share = c_top + flip * held if is_a else flip * held
    return _replicate_additive(ctx, dealer, share, (n,), ring_bits)


# ----------------------------------------------------------------------------- sign by a masked zero test


@functools.cache
def _zero_test_prime(low: int) -> int:
    """The field of ``_zero_test``: the smallest prime above low + 1 (every term d_i lies in
    [0, low + 1])."""
    p = low + 2
    while any(p % q == 0 for q in range(2, math.isqrt(p) + 1)):
        p += 1
    return p


def _draw_below(stream: AesPrg, shape: tuple[int, ...], q: int) -> torch.Tensor:
    """Uniform integers in [0, q) (int32), exactly: 31-bit draws below the largest multiple of
    q are kept in order (a draw is refused with probability below q / 2^31, and as many are
    drawn again), so both holders of a key keep the same ones."""
    need, limit = math.prod(shape), (1 << 31) - (1 << 31) % q
    kept: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int32, device=stream.device)]
    count = 0
    while count < need:
        raw = stream.uint8((4 * (need - count),)).view(torch.int32) & 0x7FFFFFFF
        if limit < 1 << 31 and bool((raw >= limit).any()):
            raw = raw[raw < limit]
        kept.append(raw)
        count += raw.numel()
    return ((kept[-1] if len(kept) == 2 else torch.cat(kept)) % q).view(shape)


def _zero_test(
    ctx: PartyContext, dealer: int, half: torch.Tensor | None, n: int, bits: int, ride: Sequence[torch.Tensor] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rounds 1 and 2 of ``_zero_test_sign`` on n elements x, with dealer D = ``dealer``:
    (this party's part of the top bit of x mod 2^l: u (A and B) and v (D) with
    top(x) = u xor v, as integers 0/1 [n]; what the peer sent as its ``ride``). ``half``: A's
    or B's part of a two-party sharing of x (``_half``; None for D); ``ride``: what A and B
    send each other besides in round 1 (a tree level's replicating round). Bit positions run
    from the top one down, so a sum over higher bits is a prefix sum."""
    low = bits - 1
    p = _zero_test_prime(low)
    width = p.bit_length()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    if ctx.rank == dealer:
        r = _dealer_mask(ctx, rank_a, rank_b, n)
        share_b = (high_bits_first(r, low) - _draw_below(ctx.prg_with(rank_a), (n, low), p)) % p
        ctx.net.exchange({rank_b: [pack_uint(share_b, width)]}, [])
        got = ctx.net.exchange({}, [rank_a, rank_b])
        zero = _zero_rows(got[rank_a][0], got[rank_b][0], n, low, p)
        return ((r >> low) & 1) ^ zero, []
    assert half is not None
    is_a = ctx.rank == rank_a
    other = rank_b if is_a else rank_a
    mine = _masked_half(ctx, half, dealer)
    if is_a:
        r_share = _draw_below(ctx.prg_with(dealer), (n, low), p)
        got = ctx.net.exchange({other: [_to_wire(mine, bits), *ride]}, [other])
    else:
        got = ctx.net.exchange({other: [_to_wire(mine, bits), *ride]}, [dealer, other])
        r_share = _unpack_field(got[dealer][0], n, low, p)
    c = mine + _from_wire(got[other][0], bits, (n,))
    c_low, c_top = c & ((1 << low) - 1), (c >> low) & 1
    with_peer = ctx.prg_with(other)  # the A-B key: the same draws on both
    beta = random_bits(with_peer, n)
    masks = _FieldMasks(
        _draw_below(with_peer, (n, low), p - 1), _draw_below(with_peer, (n, low), p), _draw_below(with_peer, (n,), low)
    )
    ctx.net.exchange({dealer: [_tested_terms(c_low, beta, r_share, masks, low, p, is_a)]}, [])
    return c_top ^ beta, got[other][1:]


@dataclass(frozen=True)
class _FieldMasks:
    """A's and B's masks of the zero test's terms, from their key: each term's scale less
    one (uniform in [0, p - 1)), its blind (uniform in Z_p) and each row's rotation (in [0, L)),
    all int32."""

    scale: torch.Tensor
    blind: torch.Tensor
    turn: torch.Tensor


def _tested_terms(
    c_low: torch.Tensor, beta: torch.Tensor, r_share: torch.Tensor, masks: _FieldMasks, low: int, p: int, is_a: bool
) -> torch.Tensor:
    """A's or B's masked terms of the zero test (``_zero_test``), packed to p's bit length:
    row e holds s_i d_i +- m_i (A +, B -) of its L positions, rotated left by the row's turn.
    With t = c_low + beta, s = 1 - 2 beta and r_i A's or B's share of r's bit i (positions from
    the top down), d_i = s (t_i - r_i) + 1 + sum_{k<i} (t_k xor r_k) splits as A's
    s t_i + 1 + sum_{k<i} t_k - s r_i + sum_{k<i} (1 - 2 t_k) r_k and B's
    -s r_i + sum_{k<i} (1 - 2 t_k) r_k (t xor r = t + (1 - 2t) r). Where t overflows
    (c_low all ones and beta = 1) d is one zero: A's [0, 1, ..., 1] and B's zeros. On the CPU one
    compiled pass (``_TERMS_LOOP``); elsewhere torch's ops (``_tested_terms_torch``)."""
    if c_low.device.type == "cpu":
        width = p.bit_length()
        out = torch.empty((c_low.numel() * low * width + 7) // 8, dtype=torch.uint8, device=c_low.device)
        ring.compiled(_TERMS_LOOP)(
            c_low.contiguous().numpy(),
            beta.contiguous().numpy(),
            r_share.contiguous().numpy(),
            masks.scale.contiguous().numpy(),
            masks.blind.contiguous().numpy(),
            masks.turn.contiguous().numpy(),
            low,
            is_a,
            width,
            _mod_table(low, p),
            out.numpy(),
        )
        return out
    return _tested_terms_torch(c_low, beta, r_share, masks, low, p, is_a)


def _tested_terms_torch(
    c_low: torch.Tensor, beta: torch.Tensor, r_share: torch.Tensor, masks: _FieldMasks, low: int, p: int, is_a: bool
) -> torch.Tensor:
    """``_tested_terms`` by torch's ops on [n, L] tensors (any device)."""
    device = c_low.device
    t = c_low + beta
    t_bits = high_bits_first(t, low)
    sign = (1 - 2 * beta).short().unsqueeze(1)
    r = r_share.short()
    weighted = (1 - 2 * t_bits) * r
    d = weighted.cumsum(1, dtype=torch.int16) - weighted - sign * r
    wrapped = (t >> low).bool()
    scale, blind = masks.scale.short() + 1, masks.blind.short()
    if is_a:
        d += sign * t_bits + t_bits.cumsum(1, dtype=torch.int16) - t_bits + 1
        d[wrapped] = (torch.arange(low, device=device) > 0).short()
        d = (scale * (d % p) + blind) % p
    else:
        d[wrapped] = 0
        d = (scale * (d % p) - blind) % p
    turn = masks.turn.long().unsqueeze(1)
    rotated = torch.cat([d, d], 1).gather(1, torch.arange(low, device=device) + turn)  # row e from column turn_e
    return pack_uint(rotated, p.bit_length())


def _terms_loop(c_low, beta, r_share, scale, blind, turn, low, is_a, width, mod, out):
    """``_tested_terms`` on the CPU, compiled by numba: each row's terms in place, then
    appended to the packed stream (values of ``width`` bits, little-endian, as ``pack_uint``).
    ``mod``: v mod p for v in [-B, B] at v + B (no division in the loop)."""
    bound = mod.shape[0] // 2
    row = np.empty(low, np.int64)
    acc = held = at = 0
    for e in range(c_low.shape[0]):
        b = beta[e]
        t = c_low[e] + b
        s = 1 - 2 * b
        wrapped = (t >> low) != 0
        below_w = below_t = 0  # sum_{k<i} (1 - 2 t_k) r_k and sum_{k<i} t_k
        for i in range(low):
            t_i = (t >> (low - 1 - i)) & 1
            r = r_share[e, i]
            d = below_w - s * r
            if is_a:
                d += s * t_i + below_t + 1
            below_w += (1 - 2 * t_i) * r
            below_t += t_i
            if wrapped:
                d = 1 if is_a and i > 0 else 0
            m = mod[d + bound]
            if is_a:
                v = mod[(scale[e, i] + 1) * m + blind[e, i] + bound]
            else:
                v = mod[(scale[e, i] + 1) * m - blind[e, i] + bound]
            j = i - turn[e]
            row[j + low if j < 0 else j] = v
        for j in range(low):
            acc |= row[j] << held
            held += width
            while held >= 8:
                out[at] = acc & 0xFF
                at += 1
                acc >>= 8
                held -= 8
    if held:
        out[at] = acc & 0xFF


@functools.cache
def _mod_table(low: int, p: int) -> np.ndarray:
    """v mod p (int32) for every v the terms loop reduces, v in [-B, B] at index v + B: |d| is
    at most L (p - 1) + p + L + 1, and (s + 1) m + blind at most (p - 1) p. A host table:
    the compiled loops run on the CPU only."""
    bound = max(low * (p - 1) + p + low + 1, (p - 1) * p)
    return (np.arange(-bound, bound + 1, dtype=np.int64) % p).astype(np.int32)


def _unpack_field(packed: torch.Tensor, n: int, low: int, p: int) -> torch.Tensor:
    """B's shares [n, L] of r's bits, as the dealer packed them (``pack_uint`` to p's bit
    length), int32."""
    width = p.bit_length()
    _check_packed(packed, n * low, width)
    return unpack_uint(packed, width, (n, low)).int()


def _zero_rows(from_a: torch.Tensor, from_b: torch.Tensor, n: int, low: int, p: int) -> torch.Tensor:
    """D's test: [some term of row e is 0 in Z_p] (int64 [n]), given A's and B's packed terms
    (``_tested_terms``; a sum of two values below p is 0 mod p when it is 0 or p)."""
    width = p.bit_length()
    _check_packed(from_a, n * low, width)
    _check_packed(from_b, n * low, width)
    if from_a.device.type != "cpu":
        return _zero_rows_torch(from_a, from_b, n, low, p)
    out = torch.empty(n, dtype=torch.int64, device=from_a.device)
    ring.compiled(_ZERO_ROWS_LOOP)(from_a.numpy(), from_b.numpy(), low, width, p, out.numpy())
    return out


def _zero_rows_torch(from_a: torch.Tensor, from_b: torch.Tensor, n: int, low: int, p: int) -> torch.Tensor:
    """``_zero_rows`` by torch's ops (any device)."""
    width = p.bit_length()
    tested = (unpack_uint(from_a, width, (n, low)) + unpack_uint(from_b, width, (n, low))) % p
    return (tested == 0).any(1).long()


def _zero_rows_loop(from_a, from_b, low, width, p, out):
    """``_zero_rows`` on the CPU, compiled by numba: both packed streams read in step."""
    mask = (1 << width) - 1
    acc_a = acc_b = held = at = 0
    for e in range(out.shape[0]):
        zero = 0
        for _ in range(low):
            while held < width:
                acc_a |= np.int64(from_a[at]) << held
                acc_b |= np.int64(from_b[at]) << held
                at += 1
                held += 8
            total = (acc_a & mask) + (acc_b & mask)
            acc_a >>= width
            acc_b >>= width
            held -= width
            if total == 0 or total == p:
                zero = 1
        out[e] = zero


def _check_packed(packed: torch.Tensor, count: int, width: int) -> None:
    """A peer's packed values: ``count`` of ``width`` bits in as many bytes as they fill."""
    if packed.dtype != torch.uint8 or packed.shape != ((count * width + 7) // 8,):
        raise ProtocolError(
            f"expected {count} packed {width}-bit values, got {packed.dtype} of shape {tuple(packed.shape)}"
        )


_TERMS_LOOP = ("zero test terms", 0)
_ZERO_ROWS_LOOP = ("zero test rows", 0)
ring.register_loop(
    _TERMS_LOOP,
    _terms_loop,
    "void(int64[::1], int64[::1], int32[:, ::1], int32[:, ::1], int32[:, ::1], int32[::1], int64, boolean, int64,"
    " int32[::1], uint8[::1])",
)
ring.register_loop(_ZERO_ROWS_LOOP, _zero_rows_loop, "void(uint8[::1], uint8[::1], int64, int64, int64, int64[::1])")


def _zero_test_sign(ctx: PartyContext, x: Pair, bits: int, ring_bits: int | None) -> Any:
    """The top bit of x mod 2^l (l = ``bits``) by a masked zero test with a dealer: packed
    XOR shares (``ring_bits`` None) or integer shares right modulo 2^``ring_bits``.

    The private comparison of SecureNN (Wagh et al., PETS 2019, Alg. 3), with the third
    party D as dealer and tester. Round 1: A and B open c = x + r mod 2^l to each other
    (A sends x_A + r_A, B sends x_B + x_D + r_B; l bits each) while D sends B its shares in
    Z_p of r's L = l - 1 low bits (p: the smallest prime above L + 1; A's come from the D-A
    key). top(x) = top(c) xor top(r) xor [c_low < r_low], and with a bit beta of the A-B key,
    t = c_low + beta, [c_low < r_low] = beta xor [some d_i = 0] for
    d_i = s (t_i - r_i) + 1 + sum_{k>i} (t_k xor r_k), s = 1 - 2 beta (beta = 1 tests
    r < c_low + 1; when that overflows, r <= c_low holds and d is set to one zero), linear in
    r's bits. Round 2: A and B send D their shares of (s_i d_i +- m_i), with s_i uniform in
    Z_p*, m_i uniform and a rotation of the L positions, all from the A-B key. D learns
    only whether a zero occurs, z = beta xor [c_low < r_low]: so u = top(c) xor beta (A, B)
    and v = top(r) xor z (D) have top(x) = u xor v. Round 3: D sends B its part: v xor a
    pad of the D-A key (bits), or v - v_A (integers; u xor v = u + (1 - 2u) v), a 4th round
    making the A-B shares replicated (``_replicate_additive``). Rounds: 3 (bits), 4
    (integers); bytes: ``_zero_test_cost``. Views: c is masked by r, B's shares of r's bits
    by A's, D's by the A-B masks m_i, every nonzero s_i d_i is uniform in Z_p* and the zero's
    place by the rotation, z by beta, B's part of v by the D-A key.
    """
    n = x[0].numel()
    dealer = ctx.next_dealer()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    part, _ = _zero_test(ctx, dealer, None if ctx.rank == dealer else _half(ctx, x, dealer), n, bits)
    if ring_bits is None:
        nbytes = (n + 7) // 8
        if ctx.rank == dealer:
            pad = ctx.prg_with(rank_a).uint8((nbytes,))
            ctx.net.exchange({rank_b: [pack_bits(part) ^ pad]}, [])
            return pad ^ pack_bits(part), pad
        if ctx.rank == rank_a:  # every draw before the round it serves, as D's (``parallel``)
            pad = ctx.prg_with(dealer).uint8((nbytes,))
            ctx.net.exchange({}, [])
            return pad, pack_bits(part)
        return pack_bits(part), ctx.net.exchange({}, [dealer])[dealer][0]
    flip = 1 - 2 * part  # for A and B: u xor v = u + (1 - 2u) v
    if ctx.rank == dealer:
        ctx.net.exchange({rank_b: [_to_wire(part - ctx.prg_with(rank_a).int64((n,)), ring_bits)]}, [])
        share = None
    elif ctx.rank == rank_a:
        share = part + flip * ctx.prg_with(dealer).int64((n,))
        ctx.net.exchange({}, [])
    else:
        share = flip * _from_wire(ctx.net.exchange({}, [dealer])[dealer][0], ring_bits, (n,))
    return _replicate_additive(ctx, dealer, share, (n,), ring_bits)


def _select_shares(
    ctx: PartyContext, dealer: int, part: torch.Tensor, diffs: list[Pair], with_bit: bool
) -> torch.Tensor | None:
    """Round 3 of a tree level by the zero test: A's and B's additive shares [k, n] of b e for
    each e in ``diffs`` (flattened, replicated) and, with ``with_bit``, of b itself, given
    their parts u (and D's v) of b = u xor v from ``_zero_test``; None for D.

    With b = u + (1 - 2u) v and e = e_A + e_B + e_D: b e = u e + (1 - 2u) v e, where A holds
    u (e_A + e_B), B holds u e_D, D holds w = v (e_D + e_A) and v e_B is a product of D's v
    and A and B's e_B. D sends B v - v_A and w - w_A (v_A, w_A from the D-A key); A holds
    u (e_A + e_B) + (1 - 2u)(w_A + v_A e_B), B u e_D + (1 - 2u)(w_B + v_B e_B). B's parts
    are masked by the D-A key."""
    n, tracked = part.numel(), len(diffs)
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    if ctx.rank == dealer:  # holds (e_D, e_A)
        with_a = ctx.prg_with(rank_a)
        v_a = with_a.int64((n,))
        w_a = with_a.int64((tracked, n))
        w = torch.stack([part * (e[0] + e[1]) for e in diffs])
        ctx.net.exchange({rank_b: [part - v_a, w - w_a]}, [])
        return None
    flip = 1 - 2 * part
    if ctx.rank == rank_a:  # holds (e_A, e_B); draws before the round, as D
        with_d = ctx.prg_with(dealer)
        v_mine, w_mine = with_d.int64((n,)), with_d.int64((tracked, n))
        ctx.net.exchange({}, [])
        e_b = [e[1] for e in diffs]
        own = [part * (e[0] + e[1]) for e in diffs]
        bit = part + flip * v_mine
    else:  # holds (e_B, e_D)
        v_mine, w_mine = ctx.net.exchange({}, [dealer])[dealer]
        e_b = [e[0] for e in diffs]
        own = [part * e[1] for e in diffs]
        bit = flip * v_mine
    rows = [o + flip * (w_mine[j] + v_mine * e_b[j]) for j, o in enumerate(own)]
    return torch.stack(rows + [bit] * with_bit)


@dataclass
class _Level:
    """A tree level by the zero test after its round 3: its results as A's and B's additive
    shares on their way to replicated shares (the masks and, for A and B, the masked shares
    they swap), the replicated values they are added to (the losers' side) and the odd
    elements out."""

    masks: Any
    sent: torch.Tensor | None
    if_false: list[Pair]
    odd: list[Pair] | None
    with_bit: bool

    def finish(self, ctx: PartyContext, dealer: int, theirs: torch.Tensor | None) -> tuple[list[Pair], Pair | None]:
        """The level's kept values (and its bit) as replicated shares, from the peer's
        masked shares (None for D)."""
        if self.sent is None:
            out = self.masks
        else:
            assert theirs is not None
            out = _replicated(ctx, dealer, self.masks, self.sent + theirs)
        shape = self.if_false[0][0].shape
        kept = [(f[0] + out[0][j].view(shape), f[1] + out[1][j].view(shape)) for j, f in enumerate(self.if_false)]
        bit = (out[0][-1].view(shape), out[1][-1].view(shape)) if self.with_bit else None
        return _with_odd(kept, self.odd), bit


def _with_odd(kept: list[Pair], odd: list[Pair] | None) -> list[Pair]:
    """A tree level's kept values with the odd elements out (passed on unchanged) after them."""
    if odd is None:
        return kept
    return [(torch.cat([k[0], t[0]], -1), torch.cat([k[1], t[1]], -1)) for k, t in zip(kept, odd, strict=True)]


def _zero_test_levels(
    ctx: PartyContext, tracked: list[Pair], levels: int, with_bits: bool
) -> tuple[list[Pair], list[Pair]]:
    """``levels`` successive levels of ``_tournament`` by the zero test, on its ``tracked``
    values (the candidates first); returns the kept values and, with ``with_bits``, each
    level's bits.

    A level: b = [a - b' < 0] for neighbours (a, b') by ``_zero_test`` (rounds 1 and 2), the
    select riding in round 3 (``_select_shares``): A and B then hold additive shares of the
    kept values, a two-party sharing that the next level's masked opening takes as it is.
    So with one dealer for all the levels, a level's replicating round (the swap of
    ``_replicate_additive``) rides in the next level's round 1 instead of a round of its own:
    3 rounds per level and 1 at the end (``_tournament_cost``)."""
    dealer = ctx.next_dealer()
    half = None if ctx.rank == dealer else _half(ctx, tracked[0], dealer)  # of the candidates
    width = tracked[0][0].shape[-1]
    pending: _Level | None = None
    level_bits: list[Pair] = []
    for _ in range(levels):
        evens, odds = slice(0, width - width % 2, 2), slice(1, width, 2)
        lead = tracked[0][0].shape[:-1]
        n = lead.numel() * (width // 2)
        diff = None if half is None else (half[..., evens] - half[..., odds]).reshape(-1)
        ride = () if pending is None or pending.sent is None else (pending.sent,)  # the last level's swap
        part, theirs = _zero_test(ctx, dealer, diff, n, ctx.compare_bits, ride)
        if pending is not None:
            tracked, bit = pending.finish(ctx, dealer, theirs[0] if theirs else None)
            if bit is not None:
                level_bits.append(bit)
        if_true, if_false = [_take(t, odds) for t in tracked], [_take(t, evens) for t in tracked]
        diffs = [((t[0] - f[0]).reshape(-1), (t[1] - f[1]).reshape(-1)) for t, f in zip(if_true, if_false, strict=True)]
        shares = _select_shares(ctx, dealer, part, diffs, with_bits)
        masks = _replica_masks(ctx, dealer, (len(tracked) + with_bits, n), torch.int64)
        odd = [_take(t, slice(width - 1, width)) for t in tracked] if width % 2 else None
        sent = None if shares is None else shares - masks
        pending = _Level(masks, sent, if_false, odd, with_bits)
        if shares is not None:  # the kept candidates' halves, for the next level's opening
            half = _half(ctx, if_false[0], dealer) + shares[0].view(if_false[0][0].shape)
            if odd is not None:
                half = torch.cat([half, _half(ctx, odd[0], dealer)], -1)
        width = width // 2 + width % 2
    assert pending is not None
    if pending.sent is None:
        ctx.net.exchange({}, [])
    tracked, bit = pending.finish(ctx, dealer, None if pending.sent is None else _swap(ctx, dealer, pending.sent))
    if bit is not None:
        level_bits.append(bit)
    return tracked, level_bits


# The zero test's local work: A and B each compute on n (l - 1) values in Z_p (draws, prefix
# sums, masks, a rotation, packing), about 40 ns per value on this machine (2 cores) at
# n = 98304, l = 44 (336 ms for the zero test on loopback, 18 ms by the circuit). The compiled
# loops (``_tested_terms``) have since halved it (184 ms); the estimate keeps the measured
# 40 ns until benchmarks.report measures the profiles' workloads under the changed picks.
ZERO_TEST_SECONDS_PER_VALUE = 40e-9


def _zero_test_seconds(n: int, bits: int) -> float:
    """The zero test's estimated local seconds on n comparisons of ``bits`` bits."""
    return n * (bits - 1) * ZERO_TEST_SECONDS_PER_VALUE


def _zero_test_cost(n: int, bits: int, ring_bits: int | None, tracked: int = 0, with_bit: bool = True) -> Cost:
    """Exact (rounds, bytes of all parties) of ``_zero_test_sign`` on n elements (``ring_bits``
    None: packed bits), or of a tree level moving ``tracked`` pairs (``_zero_test_levels``)."""
    low = bits - 1
    values = (n * low * _zero_test_prime(low).bit_length() + 7) // 8  # B's r shares; each of A, B to D
    tested = 2 * _wire_bytes(n, bits) + 3 * values
    if tracked:
        return 4, tested + 8 * n * (1 + tracked) + 2 * 8 * n * (tracked + with_bit)
    if ring_bits is None:
        return 3, tested + (n + 7) // 8
    return 4, tested + 3 * _wire_bytes(n, ring_bits)


def select(ctx: PartyContext, bit: Pair, if_true: Pair, if_false: Pair) -> Pair:
    """bit ? if_true : if_false for an arithmetic 0/1 bit: if_false + bit * (if_true - if_false).

    An exact ring product (no truncation): 1 round, 24 bytes per element."""
    diff = (if_true[0] - if_false[0], if_true[1] - if_false[1])
    prod = mul(ctx, bit, diff)
    return if_false[0] + prod[0], if_false[1] + prod[1]


def _take(pair: Pair, columns: slice) -> Pair:
    return pair[0][..., columns], pair[1][..., columns]


def _tournament(
    ctx: PartyContext, x: Pair, with_index: bool, with_bits: bool = False
) -> tuple[Pair, Pair | None, list[Pair]]:
    """Max over the last dim by a tree: O(log n) levels, all pairs of a level in one batch.

    A level compares neighbours (a, b) and keeps b where a < b (so ties keep the first
    index, as torch.argmax does); the index, when wanted, moves along in the same product
    round. An odd element out passes to the next level unchanged. Returns the max, the
    index (integers) and, with ``with_bits``, every level's "b wins" bits. Per level
    (``_level_plan``): a comparison and a product round, or the zero test with the select
    inside (``_zero_test_levels``: 3 rounds a level, 1 more after a run of them).
    """
    tracked = [x]
    if with_index:
        positions = torch.arange(x[0].shape[-1], dtype=torch.int64, device=ctx.device)
        tracked.append(pa.add_public(ctx, (torch.zeros_like(x[0]), torch.zeros_like(x[0])), positions))
    rows, width = x[0].numel() // max(1, x[0].shape[-1]), x[0].shape[-1]
    plan = [v for _, v in _level_plan(rows, width, len(tracked), with_bits, ctx.compare_bits, ctx.network)]
    level_bits: list[Pair] = []
    for run in runs(plan, "zero_test"):
        if plan[run.start] == "zero_test":
            tracked, bits = _zero_test_levels(ctx, tracked, len(run), with_bits)
            level_bits += bits
            continue
        width = tracked[0][0].shape[-1]
        evens, odds = slice(0, width - width % 2, 2), slice(1, width, 2)
        a, b = _take(tracked[0], evens), _take(tracked[0], odds)
        b_wins = less_than_zero(ctx, (a[0] - b[0], a[1] - b[1]))
        chosen = select(
            ctx,
            tuple(torch.stack([w] * len(tracked)) for w in b_wins),
            tuple(torch.stack([_take(t, odds)[j] for t in tracked]) for j in range(2)),
            tuple(torch.stack([_take(t, evens)[j] for t in tracked]) for j in range(2)),
        )
        kept = [(chosen[0][i], chosen[1][i]) for i in range(len(tracked))]
        if with_bits:
            level_bits.append(b_wins)
        tracked = _with_odd(kept, [_take(t, slice(width - 1, width)) for t in tracked] if width % 2 else None)
    value = (tracked[0][0][..., 0], tracked[0][1][..., 0])
    index = (tracked[1][0][..., 0], tracked[1][1][..., 0]) if with_index else None
    return value, index, level_bits


@functools.cache
def _level_plan(
    rows: int, width: int, tracked: int, with_bits: bool, bits: int, network: NetworkProfile | None
) -> tuple[tuple[int, str], ...]:
    """(comparisons, variant) of each level of ``_tournament`` on [rows, width].

    Each level's own choice (``_level_variant``) weighs a zero-test level at 4 rounds, but
    inside a run it takes 3; so on a network the plan also weighs every split "comparison
    and select for the first k levels, the zero test after" (levels shrink, so the zero test
    pays best last) and takes the one with the least projected time, local work included.
    Without a network: each level's own choice. Cached: a pure function of public facts."""
    sizes = []
    while width > 1:
        sizes.append(rows * (width // 2))
        width = width // 2 + width % 2
    own = tuple(_level_variant(pairs, tracked, with_bits, bits, network) for pairs in sizes)
    if network is None:
        return tuple(zip(sizes, own, strict=True))
    options = {own} | {("select",) * k + ("zero_test",) * (len(sizes) - k) for k in range(len(sizes) + 1)}
    costs, work = {}, {}
    for plan in [own, *sorted(options - {own})]:
        name = ",".join(plan)
        costs[name] = total_cost(_plan_costs(sizes, plan, tracked, with_bits, bits, network))
        work[name] = sum(_level_work(pairs, variant, bits, network) for pairs, variant in zip(sizes, plan, strict=True))
    best = cheapest(network, costs, ",".join(own), work).split(",") if sizes else []
    return tuple(zip(sizes, best, strict=True))


def _plan_costs(
    sizes: list[int], plan: Sequence[str], tracked: int, with_bits: bool, bits: int, network: NetworkProfile | None
) -> list[Cost]:
    """Per level, exact (rounds, bytes of all parties) of a tree whose levels of ``sizes``
    comparisons take ``plan``'s variants: a zero-test level followed by another has its
    replicating round inside the next one's first (``_zero_test_levels``)."""
    levels = [
        _level_variants(pairs, tracked, with_bits, bits, network)[v] for pairs, v in zip(sizes, plan, strict=True)
    ]
    return chained_costs(levels, plan, "zero_test")


def _level_work(pairs: int, variant: str, bits: int, network: NetworkProfile | None) -> float:
    """The estimated local seconds of the zero test in a level (its own, or its comparison's)."""
    if variant == "zero_test" or _sign_variant(pairs, bits, 64, network) == "zero_test":
        return _zero_test_seconds(pairs, bits)
    return 0.0


def _level_variants(
    pairs: int, tracked: int, with_bit: bool, bits: int, network: NetworkProfile | None
) -> dict[str, Cost]:
    """Exact (rounds, bytes of all parties) of a tournament level of ``pairs`` comparisons
    moving ``tracked`` values: a comparison then a select, or the zero test with the select
    inside (``_zero_test_levels``; 1 round fewer when the next level is one too)."""
    return {
        "select": total_cost([less_than_zero_cost(pairs, bits, network), (1, 24 * tracked * pairs)]),
        "zero_test": _zero_test_cost(pairs, bits, 64, tracked, with_bit),
    }


@functools.cache
def _level_variant(pairs: int, tracked: int, with_bit: bool, bits: int, network: NetworkProfile | None) -> str:
    """The faster of ``_level_variants`` on ``network``; without one, the zero test with the
    select inside up to ``ZERO_TEST_ELEMENTS`` comparisons (where a comparison alone would
    take the zero test too), else a comparison and a select."""
    variants = _level_variants(pairs, tracked, with_bit, bits, network)
    work = {name: _level_work(pairs, name, bits, network) for name in variants}
    return cheapest(network, variants, "zero_test" if pairs <= ZERO_TEST_ELEMENTS else "select", work)


# Below this many elements a protocol is bound by rounds, not bytes: spend bytes to save rounds.
SMALL_ELEMENTS = 4096
GROUP = 8
# Padding for the grouped max: far below any value (masked logits are -2^20), inside the
# comparison range for the default l = 44 (differences stay below 2^43).
_PAD = -(2**41)


@functools.cache
def _pair_literals(g: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs i < j of g candidates, and for candidate i its g-1 literals: pair (i, j)
    negated for j > i, pair (j, i) as is for j < i (indices into the pair list, and flags),
    on ``device``."""
    pairs = [(i, j) for i in range(g) for j in range(i + 1, g)]
    pair_of = {pair: k for k, pair in enumerate(pairs)}
    ii = torch.tensor([i for i, _ in pairs], dtype=torch.int64, device=device)
    jj = torch.tensor([j for _, j in pairs], dtype=torch.int64, device=device)
    index = torch.tensor(
        [[pair_of[(min(i, j), max(i, j))] for j in range(g) if j != i] for i in range(g)], device=device
    )
    negate = torch.tensor([[j > i for j in range(g) if j != i] for i in range(g)], device=device)
    return ii, jj, index, negate


def _all_pairs_max(ctx: PartyContext, x: Pair) -> Pair:
    """Max over a short last dim (g elements) from all g(g-1)/2 comparisons in one batch.

    Candidate i wins iff x_i > x_j for every j < i and x_i >= x_j for every j > i (so exactly
    one wins, the first of equal maxima). Its indicator is either ("and_tree") an AND of g-1
    comparison bits (a tree of ceil(log2(g-1)) rounds), injected into the arithmetic world
    (1 round), or ("count") [c_i = g - 1] for the count c_i of its literals, summed from
    integer comparisons and read from dealt tables (``arithmetic.truncate_many`` of 2 c_i by
    one bit: exact, as its low bit is 0; 2 rounds); then one product with x (1 round).
    ``_all_pairs_variant`` picks. Cost: msb + ceil(log2(g-1)) + 2, or [x < 0] + 3 rounds."""
    g = x[0].shape[-1]
    if g == 1:
        return x[0][..., 0], x[1][..., 0]
    lead = x[0].shape[:-1]
    rows = lead.numel()
    first, second = (s.reshape(rows, g) for s in x)
    ii, jj, index, negate = _pair_literals(g, ctx.device)
    pairs = ii.numel()
    if _all_pairs_variant(rows, g, ctx.compare_bits, ctx.network) == "count":
        diffs = ((first[:, ii] - first[:, jj]).reshape(-1), (second[:, ii] - second[:, jj]).reshape(-1))
        smaller = tuple(share.reshape(rows, pairs)[:, index] for share in less_than_zero(ctx, diffs))  # [rows, g, g-1]
        # literal: [x_j < x_i] as is for j < i, 1 - [x_i < x_j] for j > i
        counts = pa.add_public(
            ctx, tuple(torch.where(negate, -share, share).sum(-1) for share in smaller), negate.sum(-1)
        )
        ((_, wins),) = pa.truncate_many(ctx, [(counts[0] * 2, 1, _count_table(g, ctx.device))])
        weights = mul(ctx, (wins[0][0], wins[1][0]), (first, second))
        return weights[0].sum(-1).reshape(lead), weights[1].sum(-1).reshape(lead)
    smaller = msb(
        ctx, ((first[:, ii] - first[:, jj]).reshape(-1), (second[:, ii] - second[:, jj]).reshape(-1)), ctx.compare_bits
    )
    literals = []
    for share in smaller:
        bits = unpack_bits(share, rows * pairs).reshape(rows, pairs)
        literals.append(pack_bits(bits[:, index].permute(1, 2, 0)))  # [g, g-1, nb]
    mask = torch.where(negate.unsqueeze(-1), 255, 0).to(torch.uint8).expand_as(literals[0])
    terms: BitPair = xor_public(ctx, (literals[0], literals[1]), mask)
    while terms[0].shape[1] > 1:
        k = terms[0].shape[1]
        half = k // 2
        r = and_(ctx, tuple(t[:, 0 : 2 * half : 2] for t in terms), tuple(t[:, 1 : 2 * half : 2] for t in terms))
        terms = tuple(torch.cat([ri, t[:, 2 * half :]], 1) for ri, t in zip(r, terms, strict=True))
    wins = bit_to_arith(ctx, (terms[0][:, 0], terms[1][:, 0]), (g, rows))
    weights = mul(ctx, (wins[0].t(), wins[1].t()), (first, second))
    return weights[0].sum(-1).reshape(lead), weights[1].sum(-1).reshape(lead)


@functools.cache
def _count_table(g: int, device: torch.device) -> torch.Tensor:
    """[v = g - 1] for v in [0, 2^k), k = bit length of g - 1: the all-pairs winner's count
    (on ``device``)."""
    return (torch.arange(_count_table_size(g), device=device) == g - 1).long().unsqueeze(0)


def _count_table_size(g: int) -> int:
    return 1 << max(1, (g - 1).bit_length())


def _all_pairs_variants(rows: int, g: int, bits: int, network: NetworkProfile | None) -> dict[str, list[Cost]]:
    """The per-step costs of ``_all_pairs_max``'s two ways to its winners' indicators."""
    pairs, packed, terms = rows * g * (g - 1) // 2, (rows + 7) // 8, g - 1
    and_tree = [msb_cost(pairs, bits, network)]
    while terms > 1:
        and_tree.append((1, 3 * g * (terms // 2) * packed))
        terms -= terms // 2
    and_tree.append(bit_to_arith_cost(rows, 64, network, rows=g))
    size = _count_table_size(g)
    count = [
        less_than_zero_cost(pairs, bits, network),
        pa.truncate_many_cost([(rows * g, 1, 1, size.bit_length() - 1)]),
    ]
    return {"and_tree": and_tree, "count": count}


@functools.cache
def _all_pairs_variant(rows: int, g: int, bits: int, network: NetworkProfile | None) -> str:
    """The faster on ``network``; without one, the AND tree (fewer bytes). Cached: a pure
    function of public facts, asked on every call."""
    variants = _all_pairs_variants(rows, g, bits, network)
    return cheapest(network, {name: total_cost(costs) for name, costs in variants.items()}, "and_tree")


# One level of all pairs while it needs at most this many comparisons.
ALL_PAIRS_BUDGET = 32768


def _grouped_max(ctx: PartyContext, x: Pair) -> Pair:
    """Max over the last dim by all-pairs comparisons: of the whole row when that takes at most
    ALL_PAIRS_BUDGET comparisons (10 + ceil(log2(n-1)) rounds: 16 for n = 48), else within
    groups of 8, then of the winners (13 rounds per level of ceil(log8 n)); the tree needs a
    comparison and a round per level of log2 n, or 3 rounds a level by the zero test."""
    if _max_path(tuple(x[0].shape), False, ctx.compare_bits, ctx.network) == "all_pairs":
        return _all_pairs_max(ctx, x)
    while x[0].shape[-1] > GROUP:
        width = x[0].shape[-1]
        pad = (-width) % GROUP
        if pad:
            filler = torch.full((*x[0].shape[:-1], pad), _PAD, dtype=torch.int64, device=ctx.device)
            x = pa.add_public(
                ctx,
                (torch.cat([x[0], torch.zeros_like(filler)], -1), torch.cat([x[1], torch.zeros_like(filler)], -1)),
                torch.cat([torch.zeros_like(x[0]), filler], -1),
            )
        grouped = tuple(s.reshape(*s.shape[:-1], -1, GROUP) for s in x)
        x = _all_pairs_max(ctx, grouped)
    return _all_pairs_max(ctx, x)


def max_last_dim(ctx: PartyContext, x: Pair, with_index: bool) -> tuple[Pair, Pair | None]:
    """Max (and optionally its index, as an integer) over the last dim: the tournament of
    ``_tournament``, or for small tensors without an index, grouped all-pairs comparisons
    (fewer rounds, more bytes)."""
    if _max_path(tuple(x[0].shape), with_index, ctx.compare_bits, ctx.network) != "tournament":
        return _grouped_max(ctx, x), None
    value, index, _ = _tournament(ctx, x, with_index)
    return value, index


@functools.cache
def _max_path(shape: tuple[int, ...], with_index: bool, bits: int, network: NetworkProfile | None) -> str:
    """How ``max_last_dim`` runs on ``shape``: "tournament", or without an index "all_pairs"
    (the whole row in one batch) or "grouped" (groups of ``GROUP``), whichever is faster on
    ``network``; without one, all pairs (or groups beyond ALL_PAIRS_BUDGET comparisons) for
    tensors up to SMALL_ELEMENTS elements. Cached: a pure function of public facts."""
    width, numel = shape[-1], math.prod(shape)
    if with_index or width <= 2:
        return "tournament"
    one_batch = numel // width * width * (width - 1) // 2 <= ALL_PAIRS_BUDGET
    fallback = "tournament" if numel > SMALL_ELEMENTS else "all_pairs" if one_batch else "grouped"
    if network is None:
        return fallback
    return cheapest(network, {path: _max_path_cost(shape, path, bits, network) for path in _MAX_PATHS}, fallback)


_MAX_PATHS = ("tournament", "all_pairs", "grouped")


def _max_path_cost(shape: tuple[int, ...], path: str, bits: int, network: NetworkProfile | None) -> Cost:
    """Exact (rounds, bytes of all parties) of ``max_last_dim`` without an index by ``path``."""
    width = shape[-1]
    rows = math.prod(shape) // width
    if path == "tournament":
        return total_cost(_tournament_cost(rows, width, 1, bits, network))
    if path == "all_pairs":
        return total_cost(_all_pairs_max_cost(rows, width, bits, network))
    costs = []
    while width > GROUP:
        width = -(-width // GROUP)
        costs += _all_pairs_max_cost(rows * width, GROUP, bits, network)
    return total_cost(costs + _all_pairs_max_cost(rows, width, bits, network))


def argmax_onehot_last_dim(ctx: PartyContext, x: Pair) -> tuple[Pair, Pair]:
    """Secret argmax over the last dim as an index and as a one-hot vector (both integers).

    Position j survives level k iff the level's bit for its group g = j >> k agrees with g's
    parity (or g had no partner), so one-hot = prod_k s_k with s_k = b or 1 - b, linear in
    the level's bits; a product tree of exact products over the full width adds
    ceil(log2 levels) rounds."""
    n = x[0].shape[-1]
    _, index, level_bits = _tournament(ctx, x, with_index=True, with_bits=True)
    positions = torch.arange(n, dtype=torch.int64, device=ctx.device)
    selectors: list[Pair] = []
    for level, bits in enumerate(level_bits):
        half = bits[0].shape[-1]
        group = positions >> level
        paired = group < 2 * half
        odd = (group & 1).bool() & paired
        bit = tuple(s[..., (group // 2).clamp(max=half - 1)] for s in bits)
        sign = torch.where(odd, 1, -1) * paired.long()  # s = b (odd), 1 - b (even), 1 (no partner)
        selectors.append(pa.add_public(ctx, (bit[0] * sign, bit[1] * sign), (~odd).long()))
    if not selectors:
        zero = torch.zeros_like(x[0])
        return (zero[..., 0], zero[..., 0]), pa.add_public(
            ctx, (zero, zero), torch.ones(n, dtype=torch.int64, device=ctx.device)
        )
    while len(selectors) > 1:
        half = len(selectors) // 2
        left = tuple(torch.stack([selectors[i][j] for i in range(half)]) for j in range(2))
        right = tuple(torch.stack([selectors[half + i][j] for i in range(half)]) for j in range(2))
        products = mul(ctx, left, right)
        selectors = [(products[0][i], products[1][i]) for i in range(half)] + selectors[2 * half :]
    return index, selectors[0]


def _tournament_cost(
    rows: int, width: int, tracked: int, bits: int, network: NetworkProfile | None, with_bits: bool = False
) -> list[Cost]:
    """Per level of ``_tournament`` on [rows, width], moving ``tracked`` values (1, or 2 with
    the index), keeping each level's bits with ``with_bits`` (``_level_plan``)."""
    plan = _level_plan(rows, width, tracked, with_bits, bits, network)
    return _plan_costs([pairs for pairs, _ in plan], [v for _, v in plan], tracked, with_bits, bits, network)


def _all_pairs_max_cost(rows: int, g: int, bits: int, network: NetworkProfile | None) -> list[Cost]:
    if g == 1:
        return []
    variant = _all_pairs_variants(rows, g, bits, network)[_all_pairs_variant(rows, g, bits, network)]
    return [*variant, (1, 24 * g * rows)]


def max_last_dim_cost(
    shape: tuple[int, ...], with_index: bool, bits: int, network: NetworkProfile | None = None
) -> Cost:
    """Exact (rounds, bytes of all parties) of ``max_last_dim`` on a tensor of ``shape``
    (``bits``: the context's ``compare_bits``), on parties whose context declares ``network``."""
    if with_index:
        width = shape[-1]
        return total_cost(_tournament_cost(math.prod(shape) // width, width, 2, bits, network))
    return _max_path_cost(shape, _max_path(shape, False, bits, network), bits, network)


def argmax_cost(shape: tuple[int, ...], bits: int, network: NetworkProfile | None = None) -> Cost:
    """Exact (rounds, bytes of all parties) of ``argmax_onehot_last_dim`` on ``shape``."""
    width = shape[-1]
    rows = math.prod(shape) // width
    costs = _tournament_cost(rows, width, 2, bits, network, with_bits=True)
    selectors = len(costs)
    while selectors > 1:
        costs.append((1, 24 * (selectors // 2) * rows * width))
        selectors -= selectors // 2
    return total_cost(costs)
