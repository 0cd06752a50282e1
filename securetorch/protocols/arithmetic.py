"""Arithmetic protocols on replicated secret shares over Z_2^64 (ABY3, semi-honest, 3 parties).

A secret x = x_0 + x_1 + x_2 (mod 2^64) is held as pairs: party P_i holds
``(x_i, x_{i+1})`` (indices mod 3). Functions here take this party's pair and return pairs;
``ctx`` supplies the rank, the PRG streams and the links. Costs are per element of the
output: rounds, and bytes sent by all parties together (8 bytes per ring element).

Sources: Mohassel & Rindal, "ABY3" (CCS 2018) §2-§5; Dalskov, Escudero & Keller, "Secure
Evaluation of Quantized Neural Networks" (PoPETs 2020) §5.1 for the wrap handling of
truncation.

Share tensors are never modified in place: a returned pair may alias (views of) its inputs.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from securetorch.comm.profile import NetworkProfile, chained_costs, cheapest, runs, total_cost
from securetorch.protocols.boolean import pack_bits, pack_uint, random_bits, unpack_bits, unpack_uint
from securetorch.ring import logical_shift_right, ring_matmul, ring_matmul_sum
from securetorch.session.context import PartyContext

Pair = tuple[torch.Tensor, torch.Tensor]

# Truncation is exact (up to one unit in the last place) for |x| < 2^62 in the ring.
TRUNCATION_HEADROOM_BITS = 62
MAX_TRUNCATION_BITS = 62  # truncations shift by 1..62 bits
# From this many elements on, protocols with a bandwidth-optimal variant take it: one more
# round, fewer bytes (truncation: 14.5 B per element less at f = 18; bit injection: 23.9 B
# per bit less). 2^17 elements save >= 1.9 MB, more than a round costs on networks up to
# ~3 ms RTT at 5 Gbps, and products of up to 128 x 768 (a BERT-base layer at 128 tokens)
# stay at 2 rounds.
BYTES_BOUND_ELEMENTS = 1 << 17


# --------------------------------------------------------------------------- sharing


def zero_share(ctx: PartyContext, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """alpha_i = F(k_i) - F(k_{i+1}): three additive shares of zero. Local, no communication."""
    return ctx.prg_prev.int64(shape) - ctx.prg_next.int64(shape)


def share_from_party(ctx: PartyContext, value: torch.Tensor | None, owner: int) -> Pair:
    """Secret-share ``value`` (a ring tensor known to ``owner`` only; others pass None).

    x_o and x_{o+1} come from the owner's two PRG streams (so their holders draw them
    locally); x_{o+2} = x - x_o - x_{o+1} is sent to both other parties, shape included.
    Cost: 1 round, 16 bytes per element.
    """
    nxt, prv = (owner + 1) % 3, (owner + 2) % 3
    if ctx.rank == owner:
        if value is None:
            raise ValueError(f"party {owner} owns the value and must pass it")
        x_own = ctx.prg_prev.int64(value.shape)
        x_next = ctx.prg_next.int64(value.shape)
        x_last = value - x_own - x_next
        ctx.net.exchange({nxt: [x_last], prv: [x_last]}, [])
        return x_own, x_next
    if value is not None:
        raise ValueError(f"only the owner (party {owner}) passes the value; party {ctx.rank} must pass None")
    x_last = ctx.net.exchange({}, [owner])[owner][0]
    if ctx.rank == nxt:  # holds (x_{o+1}, x_{o+2})
        return ctx.prg_prev.int64(x_last.shape), x_last
    return x_last, ctx.prg_next.int64(x_last.shape)  # P_{o+2} holds (x_{o+2}, x_o)


def public_shares(ctx: PartyContext, value: torch.Tensor) -> Pair:
    """A public ring tensor as a (trivial) sharing: x_0 = value, x_1 = x_2 = 0. Local."""
    zero = torch.zeros_like(value)
    return (value if ctx.rank == 0 else zero, value if ctx.rank == 2 else zero)


def reveal(ctx: PartyContext, x: Pair, to: int | None = None) -> torch.Tensor | None:
    """Open x to every party (``to=None``: 1 round, 24 bytes per element) or to party ``to``
    (1 round, 8 bytes per element); the others get None."""
    first, second = x
    if to is None:
        got = ctx.net.exchange({ctx.next_rank: [first]}, [ctx.prev_rank])
        return first + second + got[ctx.prev_rank][0]
    sender = (to + 2) % 3  # holds (x_{to+2}, x_to): its first share is what P_to lacks
    if ctx.rank == sender:
        ctx.net.exchange({to: [first]}, [])
        return None
    if ctx.rank == to:
        return first + second + ctx.net.exchange({}, [sender])[sender][0]
    ctx.net.exchange({}, [])
    return None


def reshare(ctx: PartyContext, z: torch.Tensor) -> Pair:
    """3-out-of-3 additive shares z_i (sum z) to replicated shares of z.

    z_i is re-randomised with a zero-sharing, then P_i sends it to P_{i-1}.
    Cost: 1 round, 24 bytes per element (ABY3 §2.2).
    """
    z = z + zero_share(ctx, z.shape)
    got = ctx.net.exchange({ctx.prev_rank: [z]}, [ctx.next_rank])
    return z, got[ctx.next_rank][0]


# --------------------------------------------------------------------------- linear, local


def add(x: Pair, y: Pair) -> Pair:
    return x[0] + y[0], x[1] + y[1]


def sub(x: Pair, y: Pair) -> Pair:
    return x[0] - y[0], x[1] - y[1]


def neg(x: Pair) -> Pair:
    return -x[0], -x[1]


def add_public(ctx: PartyContext, x: Pair, p: torch.Tensor | int) -> Pair:
    """x + p for a public ring tensor or integer p (added to share x_0, held by P_0 and P_2)."""
    first, second = x
    if isinstance(p, torch.Tensor):
        shape = torch.broadcast_shapes(first.shape, p.shape)
        first, second = first.expand(shape), second.expand(shape)
    if ctx.rank == 0:
        first = first + p
    elif ctx.rank == 2:
        second = second + p
    return first, second


def mul_public(x: Pair, p: torch.Tensor | int) -> Pair:
    """x * p for a public ring tensor or integer p (|p| < 2^63); exact in the ring (no
    truncation)."""
    return x[0] * p, x[1] * p


def matmul_public(x: Pair | torch.Tensor, y: Pair | torch.Tensor) -> Pair:
    """Ring product with one public operand (exactly one of x, y is a pair)."""
    if isinstance(x, tuple):
        return ring_matmul(x[0], y), ring_matmul(x[1], y)
    return ring_matmul(x, y[0]), ring_matmul(x, y[1])


# --------------------------------------------------------------------------- products


def mul_local(x: Pair, y: Pair) -> torch.Tensor:
    """z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i, computed as (x_i + x_{i+1})(y_i + y_{i+1}) - x_{i+1} y_{i+1}.

    The three z_i add up to x*y (ABY3 §3.1). Local.
    """
    return (x[0] + x[1]) * (y[0] + y[1]) - x[1] * y[1]


def matmul_local(x: Pair, y: Pair) -> torch.Tensor:
    """Matrix version of ``mul_local``: two exact ring matmuls per party,
    (x_i + x_{i+1}) y_i + x_i y_{i+1} or x_i (y_i + y_{i+1}) + x_{i+1} y_i, summing the smaller
    operand's shares (a weight matrix is never copied); for one row times weights, both
    products in one pass of the row kernel (``ring.ring_matmul_sum``)."""
    if x[0].numel() <= y[0].numel():
        return ring_matmul_sum([(x[0] + x[1], y[0]), (x[0], y[1])])
    return ring_matmul_sum([(x[0], y[0] + y[1]), (x[1], y[0])])


def mul(ctx: PartyContext, x: Pair, y: Pair) -> Pair:
    """x * y in the ring (integers, no truncation). 1 round, 24 bytes per element."""
    return reshare(ctx, mul_local(x, y))


def matmul(ctx: PartyContext, x: Pair, y: Pair) -> Pair:
    """x @ y in the ring (no truncation). 1 round, 24 bytes per output element."""
    return reshare(ctx, matmul_local(x, y))


# --------------------------------------------------------------------------- truncation


@dataclass(frozen=True)
class Owed:
    """A fixed-point value whose truncation is still to run: this party's 3-out-of-3 share
    ``additive`` of z (a local product, possibly plus other terms at its scale); the value is
    floor(z / 2^bits), by ``truncate_additive`` or inside a protocol that merges it with
    truncations of its own (``approx.settle_with_row_means``)."""

    additive: torch.Tensor
    bits: int


def truncate_additive(ctx: PartyContext, z: torch.Tensor, bits: int) -> Pair:
    """Replicated shares of floor(z / 2^bits) (or one more) from 3-out-of-3 shares z_i of z.

    Requires |z| < 2^62 as a signed ring element; then the result is always within one unit
    in the last place (no failure probability). Two exact protocols: the 2-round one
    (``_truncate_masked_open``, 41 B per element at d = 18) and the 3-round one
    (``_truncate_wrap_bits``, 26.5 B per element at d = 18; also less local work), the one
    faster on the context's network (``comm.profile.cheapest``); without a network, the
    2-round one below ``BYTES_BOUND_ELEMENTS`` elements and the 3-round one from there on.
    ``truncation_cost`` gives the exact rounds and bytes.
    """
    if not 0 < bits <= MAX_TRUNCATION_BITS:
        raise ValueError("truncation by 1..62 bits")
    z = z.contiguous()  # the results' layout is then the same on every party
    if _truncation_variant(z.numel(), bits, ctx.network) == "masked_open":
        return _truncate_masked_open(ctx, z, bits)
    return _truncate_wrap_bits(ctx, z, bits)


def _truncate_masked_open(ctx: PartyContext, z: torch.Tensor, bits: int) -> Pair:
    """Round-optimal truncation: 2 rounds, 32 + bits/2 bytes per element (41 at bits = 18);
    ``truncate_many``'s protocol for one part."""
    return truncate_many(ctx, [(z, bits, None)])[0][0]


def truncate_many(
    ctx: PartyContext, parts: Sequence[tuple[torch.Tensor, int, torch.Tensor | None]]
) -> list[tuple[Pair, Pair | None]]:
    """Several exact truncations in the same 2 rounds, each optionally with dealt lookups:
    for each part (z, bits, tables), replicated shares of y = floor(z / 2^bits) (or one more;
    3-out-of-3 shares z_i of z with |z| < 2^62) and, when ``tables`` (m x 2^k public ring
    values, k <= 64 - bits) is given, replicated shares of tables[:, y mod 2^k] (shape
    (m, *z.shape)): any function of y's low k bits, at no round of its own.

    The truncation (one rotating dealer D for all parts, A = D+1, B = D+2): D deals the mask
    r = 2^bits u + l, u = a + b (a from the D-A key, b from the D-B key, l private to D); A and
    B learn c = z + 2^62 + r, uniform to each. With the carry into bit 63 handled as in
    Dalskov, Escudero & Keller (PoPETs 2020, §5.1) (z + 2^62 lies in [0, 2^63)):

        floor(z / 2^bits) + e = (c >>> bits) - 2^(62-bits) - u + 2^(64-bits) W,

    e in {0, 1} a borrow of the low bits, W = (u >>> (64-bits)) + (1 - c_63) r_63 (mod 2^bits).
    D deals additive shares of W for both values of c_63; A and B pick by c_63 and open W to
    each other (uniform to them, being the top bits of u). The result is the sharing
    (y_D, y_A, y_B) = (-b, -a, (c >>> bits) - 2^(62-bits) + 2^(64-bits) W).

    The lookups, a one-time truth table per element (Ishai, Kushilevitz, Meldgaard, Orlandi
    and Paskin-Cherniavsky, TCC 2013) on the index the truncation already opens: mod 2^k the
    identity reads y = j - u with j = ((c >>> bits) - 2^(62-bits)) mod 2^k, known to A and B.
    So D deals the table rotated by u, T_A + T_B = tables[:, (j - u) mod 2^k] for every j,
    T_A from the D-A key and T_B sent to B (uniform, masked entry by entry); A and B read
    their shares t_A, t_B at j. They reshare t = t_A + t_B as (rho_D, rho_A, x_B), rho_D from
    the D-B key and rho_A from the D-A key: A and B swap t_A - rho_A and t_B - rho_D, and
    x_B = t - rho_A - rho_D.

    Round 1: A -> B z_A, B -> A z_B, D -> A and D -> B z_D + 2^62 + r, D -> B the two W
    shares and T_B. Round 2: A <-> B their shares of W, packed to ``bits`` bits, and their
    masked table shares. D receives nothing. Bytes: ``truncate_many_cost``.
    """
    dealer = ctx.next_dealer()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    parts = [(z.contiguous() + zero_share(ctx, z.shape), bits, tables) for z, bits, tables in parts]
    for _, bits, tables in parts:
        if not 0 < bits <= MAX_TRUNCATION_BITS:
            raise ValueError("truncation by 1..62 bits")
        if tables is not None and not 0 < _index_bits(tables) <= 64 - bits:
            raise ValueError("lookup tables need 2^k entries, 0 < k <= 64 - bits")
    if ctx.rank == dealer:
        return _truncate_many_dealer(ctx, parts, rank_a, rank_b)
    other = rank_b if ctx.rank == rank_a else rank_a
    with_d = ctx.prg_with(dealer)
    drawn = []  # per part: -u's share, A's two W options, A's table shares and rho
    for z, bits, tables in parts:
        u_part = with_d.int64(z.shape)
        options = table_a = rho = None
        if ctx.rank == rank_a:
            options = (with_d.uniform_bits(z.shape, bits), with_d.uniform_bits(z.shape, bits))
            if tables is not None:
                table_a = with_d.int64((tables.shape[0], z.numel(), tables.shape[1]))
        if tables is not None:
            rho = with_d.int64((tables.shape[0], *z.shape))
        drawn.append((u_part, options, table_a, rho))
    got = ctx.net.exchange({other: [z for z, _, _ in parts]}, [dealer, other])
    from_dealer = iter(got[dealer])
    sends, opened = [], []
    for (z, bits, tables), (_, options, table_a, rho), their_z in zip(parts, drawn, got[other], strict=True):
        masked = next(from_dealer)
        if ctx.rank == rank_b:
            options = tuple(unpack_uint(next(from_dealer), bits, (2, *z.shape)))
        c = z + their_z + masked
        my_w = torch.where(logical_shift_right(c, 63).bool(), options[1], options[0])
        sends.append(pack_uint(my_w, bits))
        high = logical_shift_right(c, bits) - (1 << (TRUNCATION_HEADROOM_BITS - bits))
        shown = None  # this party's read share of the lookups, less its mask
        if tables is not None:
            if ctx.rank == rank_b:
                table_a = next(from_dealer).view(tables.shape[0], z.numel(), tables.shape[1])
            index = (high.reshape(1, -1, 1) & (tables.shape[1] - 1)).expand(tables.shape[0], -1, 1)
            shown = table_a.gather(2, index).view(rho.shape) - rho
            sends.append(shown)
        opened.append((my_w, high, shown))
    got = iter(ctx.net.exchange({other: sends}, [other])[other])
    out = []
    for (z, bits, _), (u_part, _, _, rho), (my_w, high, shown) in zip(parts, drawn, opened, strict=True):
        w = (my_w + unpack_uint(next(got), bits, z.shape)) & ((1 << bits) - 1)
        y_b = high + w * (1 << (64 - bits))
        looked_up = None
        if shown is not None:
            x_b = shown + next(got)
            looked_up = (rho, x_b) if ctx.rank == rank_a else (x_b, rho)
        out.append(((-u_part, y_b) if ctx.rank == rank_a else (y_b, -u_part), looked_up))
    return out


def _index_bits(tables: torch.Tensor) -> int:
    """k for lookup tables of 2^k entries per row (0 if the row length is not a power of 2)."""
    size = tables.shape[-1]
    return size.bit_length() - 1 if tables.dim() == 2 and size & (size - 1) == 0 else 0


def _truncate_many_dealer(
    ctx: PartyContext, parts: list[tuple[torch.Tensor, int, torch.Tensor | None]], rank_a: int, rank_b: int
) -> list[tuple[Pair, Pair | None]]:
    """The dealer D's side of ``truncate_many``: masks, W shares and rotated tables."""
    with_a, with_b = ctx.prg_with(rank_a), ctx.prg_with(rank_b)
    to_a, to_b, out = [], [], []
    for z, bits, tables in parts:
        mask = (1 << bits) - 1
        a = with_a.int64(z.shape)
        b = with_b.int64(z.shape)
        w0_a = with_a.uniform_bits(z.shape, bits)
        w1_a = with_a.uniform_bits(z.shape, bits)
        low = ctx.prg_private.uniform_bits(z.shape, bits)
        u = a + b
        top = logical_shift_right(u, 64 - bits)
        r63 = logical_shift_right(u, 63 - bits) & 1
        w0_b = (top + r63 - w0_a) & mask  # share of W when c_63 = 0
        w1_b = (top - w1_a) & mask  # share of W when c_63 = 1
        masked = z + (1 << TRUNCATION_HEADROOM_BITS) + u * (1 << bits) + low
        to_a.append(masked)
        to_b += [masked, pack_uint(torch.stack([w0_b, w1_b]), bits)]
        looked_up = None
        if tables is not None:
            rows, size = tables.shape
            table_a = with_a.int64((rows, z.numel(), size))
            rho_a = with_a.int64((rows, *z.shape))
            rho_d = with_b.int64((rows, *z.shape))
            # entry j of element e: tables[:, (j - u_e) mod 2^k]
            rotated = (torch.arange(size, device=u.device).unsqueeze(0) - u.reshape(-1, 1)) & (size - 1)
            to_b.append(tables[:, rotated] - table_a)
            looked_up = (rho_d, rho_a)
        out.append(((-b, -a), looked_up))
    ctx.net.exchange({rank_a: to_a, rank_b: to_b}, [])
    ctx.net.exchange({}, [])
    return out


def truncate_many_cost(parts: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``truncate_many`` on parts (n elements, bits,
    table rows m, index bits k): the truncations' bytes, 8 m n 2^k for D's table shares and
    16 m n for the reshared lookups."""
    nbytes = 0
    for n, bits, rows, index_bits in parts:
        nbytes += _truncation_variants(n, bits)["masked_open"][1] + 8 * rows * n * ((1 << index_bits) + 2)
    return 2, nbytes


def _truncate_wrap_bits(ctx: PartyContext, z: torch.Tensor, bits: int) -> Pair:
    """Bandwidth-optimal truncation: 3 rounds, 24 + (bits + 2)/8 bytes per element.

    D = the rotating dealer, A = D+1, B = D+2. D sends z_D + rho to B (rho from the D-A key,
    which A subtracts), so A and B hold two-party shares y_A + y_B = y = z + 2^62 + ... with
    y_A = z_A - rho + 2^62 and y_B = z_B + z_D + rho. As y = z + 2^62 lies in [0, 2^63) for
    |z| < 2^62, the carry out of y_A + y_B (unsigned) is W = a_A or a_B, the OR of the two
    shares' top bits (both top bits set, or exactly one set while y's is clear). Then

        (y_A >>> d) + (y_B >>> d) - 2^(64-d) W - 2^(62-d) + 1 = floor(z / 2^d) + 1 - carry,

    carry in {0, 1} being that of the low d bits (mean of the result: z/2^d, unbiased).
    W = a_A + a_B - a_A a_B (mod 2^d) comes from a dealer-assisted product of two private
    bits: D deals r_A (key D-A), r_B (key D-B) and additive shares h_A + h_B = r_A r_B
    (mod 2^d), h_A from the D-A key and h_B sent to B; A and B swap e = a_A xor r_A and
    d = a_B xor r_B, and with a = e + (1 - 2e) r_A, b = d + (1 - 2d) r_B,

        a b = e d + e (1 - 2d) r_B + d (1 - 2e) r_A + (1 - 2e)(1 - 2d)(h_A + h_B).

    The two-party shares of the result are then reshared with x_A from the D-A key and
    x_D from the D-B key: A and B swap t_A - x_A and t_B - x_D, and x_B = t_A + t_B - x_A - x_D.

    Round 1: D -> B z_D + rho and h_B (packed to d bits); A -> B e (packed bits).
    Round 2: B -> A d and t_B - x_D. Round 3: A -> B t_A - x_A. D receives nothing. In a
    run of them (``truncate_chain``), round 3 rides in the next one's round 1.
    Sources: SecureML-style two-party local truncation (Mohassel & Zhang, S&P 2017, §4.1)
    made exact by the top-bit wrap rule (Huang et al., "Cheetah", USENIX Security 2022, §4;
    Rathee et al., "SiRNN", S&P 2021, §3).
    """
    outputs: list[Pair] = []
    _wrap_bits_run(ctx, [(tuple(z.shape), bits, lambda _: z)], outputs)
    return outputs[0]


def _wrap_bits_run(ctx: PartyContext, steps: Sequence[Step], outputs: list[Pair]) -> None:
    """``_truncate_wrap_bits`` on each step of a chain with one dealer, appending the results
    to ``outputs`` (each z is a function of the outputs before it). A step's round 3 (A -> B
    only) rides in the next step's round 1, in which only D and A send and after which
    alone B needs its result: A and D have theirs after round 2 (D's are its masks)."""
    dealer = ctx.next_dealer()
    rank_a, rank_b = (dealer + 1) % 3, (dealer + 2) % 3
    late: list[torch.Tensor] = []  # A: its last step's masked share, on its way to B
    for shape, bits, z_of in steps:
        n = math.prod(shape)
        if ctx.rank == dealer:
            with_a, with_b = ctx.prg_with(rank_a), ctx.prg_with(rank_b)
            rho = with_a.int64(shape)
            r_a = random_bits(with_a, n)
            h_a = with_a.uniform_bits((n,), bits)
            r_b = random_bits(with_b, n)
            x_a = with_a.int64(shape)
            x_d = with_b.int64(shape)
            h_b = pack_uint((r_a * r_b - h_a) & ((1 << bits) - 1), bits)
            ctx.net.exchange({rank_b: [_step_input(z_of, outputs, shape) + rho, h_b]}, [])
            ctx.net.exchange({}, [])
            outputs.append((x_d, x_a))
        elif ctx.rank == rank_a:
            with_d = ctx.prg_with(dealer)
            rho = with_d.int64(shape)
            r_a = random_bits(with_d, n)
            h_a = with_d.uniform_bits((n,), bits)
            x_a = with_d.int64(shape)
            y = (_step_input(z_of, outputs, shape) - rho + (1 << TRUNCATION_HEADROOM_BITS)).reshape(-1)
            a = logical_shift_right(y, 63)
            e = a ^ r_a
            ctx.net.exchange({rank_b: [pack_bits(e), *late]}, [])
            got = ctx.net.exchange({}, [rank_b])[rank_b]
            d = unpack_bits(got[0], n)
            se, sd = 1 - 2 * e, 1 - 2 * d
            w = a - d * se * r_a - se * sd * h_a - e * d
            offset = (1 << (TRUNCATION_HEADROOM_BITS - bits)) - 1  # 2^(62-d) - 1
            masked = (logical_shift_right(y, bits) - offset - (w << (64 - bits))).reshape(shape) - x_a
            outputs.append((x_a, masked + got[1]))
            late = [masked]
        else:
            with_d = ctx.prg_with(dealer)
            r_b = random_bits(with_d, n)
            x_d = with_d.int64(shape)
            got = ctx.net.exchange({}, [dealer, rank_a])
            if len(got[rank_a]) > 1:  # the last step's result, completed by A's share
                outputs[-1] = (outputs[-1][0] + got[rank_a][1], outputs[-1][1])
            y = (_step_input(z_of, outputs, shape) + got[dealer][0]).reshape(-1)
            h_b = unpack_uint(got[dealer][1], bits, (n,))
            e = unpack_bits(got[rank_a][0], n)
            b = logical_shift_right(y, 63)
            d = b ^ r_b
            se, sd = 1 - 2 * e, 1 - 2 * d
            w = b - e * sd * r_b - se * sd * h_b
            t = (logical_shift_right(y, bits) - (w << (64 - bits))).reshape(shape)
            ctx.net.exchange({rank_a: [pack_bits(d), t - x_d]}, [])
            outputs.append((t - x_d, x_d))  # completed by A's share in the next round
    if ctx.rank == rank_a:
        ctx.net.exchange({rank_b: late}, [])
    elif ctx.rank == rank_b:
        from_a = ctx.net.exchange({}, [rank_a])[rank_a][0]
        outputs[-1] = (outputs[-1][0] + from_a, outputs[-1][1])
    else:
        ctx.net.exchange({}, [])


# A truncation in a chain: (the shape of z, the bits to drop, z as a local function of the
# results of the steps before it: 3-out-of-3 shares). The function must stay local (no
# round, no PRG draw): B calls it after the step's first round, A and D before it.
Step = tuple[tuple[int, ...], int, Callable[[list[Pair]], torch.Tensor]]


def _step_input(
    z_of: Callable[[list[Pair]], torch.Tensor], outputs: list[Pair], shape: tuple[int, ...]
) -> torch.Tensor:
    """A chain step's z, of the shape the step declared (its parties drew for that shape)."""
    z = z_of(outputs)
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"a chain step declared shape {tuple(shape)} but made {tuple(z.shape)}")
    return z


def truncate_chain(ctx: PartyContext, steps: Sequence[Step]) -> list[Pair]:
    """Truncations in sequence, each of a z that is a local function of the results before
    it (as ``truncate_additive`` takes it: 3-out-of-3 shares, |z| < 2^62): their results.

    A run of steps by ``_truncate_wrap_bits`` shares one dealer, and each step's last round
    rides in the next one's first (``_wrap_bits_run``): 2 rounds a step and 1 at the end of
    the run, the bytes unchanged. So a chain of squarings or of a polynomial's powers takes
    2 rounds a product at the byte-optimal truncation's bytes. Which truncation each step
    takes is chosen for the chain as a whole (``_chain_plan``); ``truncate_chain_cost`` is
    the exact cost."""
    for _, bits, _ in steps:
        if not 0 < bits <= MAX_TRUNCATION_BITS:
            raise ValueError("truncation by 1..62 bits")
    outputs: list[Pair] = []
    plan = _chain_plan(tuple((math.prod(shape), bits) for shape, bits, _ in steps), ctx.network)
    for run in runs(plan, "wrap_bits"):
        if plan[run.start] == "wrap_bits":
            _wrap_bits_run(ctx, steps[run.start : run.stop], outputs)
        else:
            shape, bits, z_of = steps[run.start]
            outputs.append(_truncate_masked_open(ctx, _step_input(z_of, outputs, shape), bits))
    return outputs


def _chain_cost(parts: Sequence[tuple[int, int]], plan: Sequence[str]) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of a chain whose steps take ``plan``'s truncations."""
    steps = [_truncation_variants(n, bits)[variant] for (n, bits), variant in zip(parts, plan, strict=True)]
    return total_cost(chained_costs(steps, plan, "wrap_bits"))


# Chains up to this many steps weigh every assignment of the two truncations (2^steps).
CHAIN_PLAN_STEPS = 8


@functools.cache
def _chain_plan(parts: tuple[tuple[int, int], ...], network: NetworkProfile | None) -> tuple[str, ...]:
    """The truncation of each step of a chain of (elements, bits) steps: on a network, the
    assignment with the least projected time (every one for chains of up to
    CHAIN_PLAN_STEPS steps, else each step's own choice, all byte-optimal or all
    round-optimal): a byte-optimal step inside a run costs the round-optimal one's rounds at
    fewer bytes. Without a network, each step's own choice (``_truncation_variant``)."""
    own = tuple(_truncation_variant(n, bits, network) for n, bits in parts)
    if network is None:
        return own
    if len(parts) <= CHAIN_PLAN_STEPS:
        plans = list(itertools.product(("masked_open", "wrap_bits"), repeat=len(parts)))
    else:
        plans = [("masked_open",) * len(parts), ("wrap_bits",) * len(parts)]
    options = {",".join(plan): _chain_cost(parts, plan) for plan in [own, *plans]}
    return tuple(cheapest(network, options, ",".join(own)).split(","))


def truncate_chain_cost(parts: Sequence[tuple[int, int]], network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``truncate_chain`` on steps of (elements, bits)."""
    return _chain_cost(parts, _chain_plan(tuple(parts), network))


def _truncation_variants(n: int, bits: int) -> dict[str, tuple[int, int]]:
    """Exact (rounds, bytes of all parties) of each truncation protocol on n elements."""
    return {
        "masked_open": (2, 32 * n + (2 * n * bits + 7) // 8 + 2 * ((n * bits + 7) // 8)),
        "wrap_bits": (3, 24 * n + (n * bits + 7) // 8 + 2 * ((n + 7) // 8)),
    }


def _truncation_variant(n: int, bits: int, network: NetworkProfile | None) -> str:
    """The truncation protocol for n elements: the faster on ``network``; without one, the
    round-optimal one below ``BYTES_BOUND_ELEMENTS`` and the byte-optimal one from there on."""
    fallback = "masked_open" if n < BYTES_BOUND_ELEMENTS else "wrap_bits"
    return cheapest(network, _truncation_variants(n, bits), fallback)


def truncation_cost(n: int, bits: int, network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``truncate_additive`` on n elements, on
    parties whose context declares ``network``."""
    return _truncation_variants(n, bits)[_truncation_variant(n, bits, network)]


def truncation_bytes(n: int, bits: int, network: NetworkProfile | None = None) -> int:
    """Exact bytes (all parties) that ``truncate_additive`` sends for n elements."""
    return truncation_cost(n, bits, network)[1]


def _together_variants(
    parts: tuple[tuple[int, int], ...], network: NetworkProfile | None
) -> dict[str, tuple[int, int]]:
    """Exact (rounds, bytes of all parties) of ``truncate_together`` on parts (n elements,
    bits): in one ``truncate_many`` call, or one after the other by the policy's protocol."""
    return {
        "together": truncate_many_cost([(n, bits, 0, 0) for n, bits in parts]),
        "apart": total_cost(truncation_cost(n, bits, network) for n, bits in parts),
    }


@functools.cache
def _together_variant(parts: tuple[tuple[int, int], ...], network: NetworkProfile | None) -> str:
    """The faster of ``_together_variants``; without a network, together where every part
    alone would take the 2-round protocol (then it saves rounds at no bytes)."""
    fallback = "together" if all(_truncation_variant(n, b, None) == "masked_open" for n, b in parts) else "apart"
    return cheapest(network, _together_variants(parts, network), fallback)


def truncate_together(ctx: PartyContext, parts: Sequence[Owed]) -> list[Pair]:
    """The truncations of several owed values (``Owed``) that an op needs at once: in one
    ``truncate_many`` call (2 rounds for all) or each by ``truncate_additive``, whichever
    ``_together_variant`` picks (``truncate_together_cost``)."""
    key = tuple((p.additive.numel(), p.bits) for p in parts)
    if _together_variant(key, ctx.network) == "together":
        return [y for y, _ in truncate_many(ctx, [(p.additive, p.bits, None) for p in parts])]
    return [truncate_additive(ctx, p.additive, p.bits) for p in parts]


def truncate_together_cost(parts: Sequence[tuple[int, int]], network: NetworkProfile | None = None) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``truncate_together`` on parts (n, bits)."""
    key = tuple(parts)
    return _together_variants(key, network)[_together_variant(key, network)]


def truncate(ctx: PartyContext, x: Pair, bits: int) -> Pair:
    """floor(x / 2^bits) or one more, for a shared x with |x| < 2^62 (``truncate_additive``)."""
    return truncate_additive(ctx, x[0], bits)


def mul_fixed(ctx: PartyContext, x: Pair, y: Pair, frac_bits: int) -> Pair:
    """Fixed-point x * y: local cross terms, then truncation fused with the resharing.

    2 rounds and 41 bytes per element at f = 18, or from 2^17 elements 3 rounds and 26.5
    bytes (ABY3's mul + SPU's truncation: 3 rounds, 52 bytes)."""
    return truncate_additive(ctx, mul_local(x, y), frac_bits)
