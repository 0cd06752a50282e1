"""Comparisons, bit decomposition, bit injection, select, ReLU, max/argmax."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securetorch as puma
from securetorch.comm.profile import PRESETS
from securetorch.comm.stats import total
from securetorch.errors import ProtocolError
from securetorch.prg import AesPrg
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.protocols.boolean import (
    pack_bits,
    pack_uint,
    random_bits,
    reshare_bits,
    reveal_bits,
    unpack_bits,
    xor_public,
)
from securetorch.session.context import current

from ..conftest import chi_square_critical, seeded

U = 2.0**-18
F = torch.nn.functional
HYP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def secret(value: torch.Tensor, owner: int = 0) -> puma.SharedTensor:
    return puma.share(value if puma.rank() == owner else None, owner=owner, dtype=torch.float64)


def comparisons(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = secret(a, 0), secret(b, 1)
    out = {
        "lt": x < y,
        "gt": x > y,
        "le": x <= y,
        "ge": x >= y,
        "lt_public": x < b,
        "gt_scalar": x > 0.25,
        "torch_lt": torch.lt(x, y),
        "relu": F.relu(x),
        "abs": torch.abs(x),
        "where": torch.where(x < y, x, y),
        "where_public_cond": torch.where(b > 0, x, 2.0),
        "maximum": torch.maximum(x, y),
        "minimum": torch.minimum(x, y),
        "clamp": torch.clamp(x, -1.0, 2.0),
    }
    return {k: v.reveal() for k, v in out.items()}


@HYP
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple), seed=st.integers(0, 2**31))
def test_comparisons_and_selection_match_plaintext(sim, shape, seed) -> None:
    g = seeded(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 100
    b = torch.randn(shape, generator=g, dtype=torch.float64) * 100
    b.view(-1)[0] = a.view(-1)[0]  # a tie: x < y is false, x <= y true
    got = sim.run(comparisons, a, b)[0]
    want = {
        "lt": a < b,
        "gt": a > b,
        "le": a <= b,
        "ge": a >= b,
        "lt_public": a < b,
        "gt_scalar": a > 0.25,
        "torch_lt": a < b,
        "relu": F.relu(a),
        "abs": a.abs(),
        "where": torch.where(a < b, a, b),
        "where_public_cond": torch.where(b > 0, a, torch.tensor(2.0, dtype=torch.float64)),
        "maximum": torch.maximum(a, b),
        "minimum": torch.minimum(a, b),
        "clamp": a.clamp(-1, 2),
    }
    for name, expected in want.items():
        if expected.dtype == torch.bool:
            assert got[name].dtype == torch.bool and torch.equal(got[name], expected), name
        else:
            assert float((got[name] - expected).abs().max()) <= U, name


def test_compare_bits_boundary() -> None:
    """Exact up to |x| < 2^(l-1-f) reals; at 2^(l-1-f) the sign wraps (documented limit)."""
    bits = 30  # reals below 2^11 = 2048
    edge = 2.0 ** (bits - 1 - 18)
    inside = torch.tensor([edge - U, -edge, -edge + U, U, -U, 0.0], dtype=torch.float64)
    with puma.Simulator(compare_bits=bits) as c:
        got = c.run(lambda v: (secret(v) < 0).reveal(), torch.cat([inside, torch.tensor([edge])]))[0]
    assert torch.equal(got[:-1], inside < 0)
    assert bool(got[-1])  # +2^(l-1-f) reads as negative: outside the range


def test_msb_and_bit_injection_exact_costs(sim) -> None:
    """Comparison (MSB) by the bit circuit (beyond ``ZERO_TEST_ELEMENTS`` on loopback) and B2A of
    its bit: exact rounds and bytes on 3000 elements."""
    n = 3000
    assert n > pc.ZERO_TEST_ELEMENTS
    values = torch.linspace(-3000, 3000, n, dtype=torch.float64)

    results = sim.run(lambda v: _msb_job(v, n), values)
    opened, arith = results[0][0], results[0][1]
    assert torch.equal(opened, (values < 0).long())
    assert torch.equal(arith, (values < 0).long())
    msb_cost = total([r[2] for r in results])
    inject_cost = total([r[3] for r in results])
    rounds, nbytes = pc.msb_cost(n, 44)
    # 43 carry-save + 42 generate + 76 tree AND-planes of 375 bytes, three parties
    assert (msb_cost.rounds, msb_cost.bytes_sent) == (rounds, nbytes) == (8, 3 * 161 * 375)
    assert (inject_cost.rounds, inject_cost.bytes_sent) == pc.bit_to_arith_cost(n) == (1, 48 * n)


def _msb_job(v, n):
    ctx = current()
    x = secret(v)
    before = puma.stats()
    bits = pc.msb(ctx, x.shares, ctx.compare_bits)
    mid = puma.stats()
    arith = pc.bit_to_arith(ctx, bits, (n,))
    after = puma.stats()
    opened = unpack_bits(reveal_bits(ctx, bits), n)
    return opened, puma.SharedTensor(arith, torch.int64), mid - before, after - mid


@pytest.mark.parametrize("rows", [1, 4])
def test_bit_injection_of_many_bits_by_the_dealer_protocol(sim, rows) -> None:
    """From 2^17 bits on, B2A takes the dealer-assisted product: exact values for every
    dealer, 2 rounds, 24 B per bit plus the packed bits of e (each row padded to bytes)."""
    n = (1 << 17) // rows + 3  # not a multiple of 8: the padding of each row shows

    def fn(bits):
        ctx = current()
        shared = pc.bit_to_arith(ctx, _share_bits(ctx, bits), tuple(bits.shape))  # warm-up: dealer 0
        outs = []
        for _ in range(3):
            planes = _share_bits(ctx, bits)
            before = puma.stats()
            arith = pc.bit_to_arith(ctx, planes, tuple(bits.shape))
            outs.append((puma.SharedTensor(arith, torch.int64), puma.stats() - before))
        return puma.SharedTensor(shared, torch.int64), outs

    bits = torch.randint(0, 2, (rows, n), generator=seeded(rows))
    results = sim.run(fn, bits)
    assert torch.equal(results[0][0], bits)
    for k in range(3):
        assert torch.equal(results[0][1][k][0], bits)
        cost = total([r[1][k][1] for r in results])
        assert (cost.rounds, cost.bytes_sent) == (2, 24 * rows * n + rows * ((n + 7) // 8))
    if rows == 1:
        assert pc.bit_to_arith_cost(n) == (2, 24 * n + (n + 7) // 8)


def _share_bits(ctx, bits):
    """Packed XOR shares of public bits (all in b_0): enough to drive a B2A."""
    zeros = torch.zeros(bits.shape[0], (bits.shape[1] + 7) // 8, dtype=torch.uint8)
    return xor_public(ctx, (zeros, zeros.clone()), pack_bits(bits))


def _random_bits_sharing(ctx, bits):
    """Packed XOR shares of public bits [rows, cols], packed over the flattened bits and
    re-randomised (every share uniform): one resharing round."""
    packed = pack_bits(bits.reshape(-1))
    return reshare_bits(ctx, packed if ctx.rank == 0 else torch.zeros_like(packed))


def _per_dealer(bits, protocol):
    """``protocol(ctx, planes)`` once per dealer, each on a fresh sharing of ``bits``: its
    opened result and its cost."""
    ctx = current()
    out = []
    for _ in range(3):
        planes = _random_bits_sharing(ctx, bits)
        before = puma.stats()
        result = protocol(ctx, planes)
        cost = puma.stats() - before
        out.append((puma.SharedTensor(result, torch.int64).reveal(), cost))
    return out


@pytest.mark.parametrize("n", [1000, (1 << 17) + 5])
def test_bit_injection_into_a_small_ring(sim, n) -> None:
    """With ``ring_bits`` m < 64 the shares are exact modulo 2^m and each ring value crosses
    the wire in m bits, in both protocols (OT below 2^17 bits, the dealer's product from
    there on, each party dealing once): 6 values per bit, or 3 values and the bit of e."""
    m = 17
    bits = torch.randint(0, 2, (n,), generator=seeded(n))
    results = sim.run(_per_dealer, bits, lambda ctx, planes: pc.bit_to_arith(ctx, planes, (n,), ring_bits=m))
    for k in range(3):
        assert torch.equal(results[0][k][0] & ((1 << m) - 1), bits)
        cost = total([r[k][1] for r in results])
        assert (cost.rounds, cost.bytes_sent) == pc.bit_to_arith_cost(n, m)
    expected = {1000: (1, 6 * 2125), (1 << 17) + 5: (2, 3 * 278539 + 16385)}[n]  # ceil(17 n / 8) bytes per value set
    assert pc.bit_to_arith_cost(n, m) == expected
    with pytest.raises(ValueError, match="ring_bits"):
        pc.bit_to_arith(None, (torch.zeros(1), torch.zeros(1)), (8,), ring_bits=65)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1000), (5, 203), (3, 1)])
def test_bit_sums_count_each_row_with_exact_cost(sim, rows, cols) -> None:
    """``bit_sum``: per-row counts, right modulo 2^m for every dealer; 2 rounds, the packed e
    and m bits per bit, then 24 bytes per row."""
    m = 12
    bits = torch.randint(0, 2, (rows, cols), generator=seeded(rows * cols))
    bits[0] = 1  # a full row: the largest count
    results = sim.run(_per_dealer, bits, lambda ctx, planes: pc.bit_sum(ctx, planes, (rows, cols), m))
    n = rows * cols
    for k in range(3):
        assert torch.equal(results[0][k][0] & ((1 << m) - 1), bits.sum(-1))
        cost = total([r[k][1] for r in results])
        assert (cost.rounds, cost.bytes_sent) == pc.bit_sum_cost(rows, cols, m)
        assert cost.bytes_sent == (n + 7) // 8 + (n * m + 7) // 8 + 24 * rows


def test_bit_decomposition_exact_costs_and_values(sim) -> None:
    n = 500
    values = torch.arange(n, dtype=torch.float64) * 37.25 - 4000.0

    def fn(v):
        ctx = current()
        x = secret(v)
        before = puma.stats()
        planes = ap.bit_decompose(ctx, x.shares, ctx.compare_bits)
        cost = puma.stats() - before
        return unpack_bits(reveal_bits(ctx, planes), n), cost

    results = sim.run(fn, values)
    bits = results[0][0]
    ring = puma.ring.encode(values, 18) & ((1 << 44) - 1)
    expected = torch.stack([(ring >> j) & 1 for j in range(44)])
    assert torch.equal(bits, expected)
    cost = total([r[1] for r in results])
    # 43 carry-save + 43 generate + 2 x 108 Sklansky AND-planes of 63 bytes, three parties
    assert (cost.rounds, cost.bytes_sent) == ap.bit_decompose_cost(n, 44) == (8, 3 * 302 * 63)


def test_a2b_then_b2a_round_trip_with_exact_cost(sim) -> None:
    """A2B (bit decomposition) then word B2A gives back x mod 2^l: 1 round, 48 B per bit
    (44 x 64 bits: below 2^17, the three-party OT)."""
    n, bits = 64, 44
    values = torch.linspace(-500, 500, n, dtype=torch.float64)

    def fn(v):
        ctx = current()
        x = secret(v)
        planes = ap.bit_decompose(ctx, x.shares, bits)
        before = puma.stats()
        word = pc.bits_to_arith_word(ctx, planes, n)
        return puma.SharedTensor(word, torch.int64), puma.stats() - before

    results = sim.run(fn, values)
    ring = puma.ring.encode(values, 18) & ((1 << bits) - 1)
    assert torch.equal(results[0][0], ring)
    cost = total([r[1] for r in results])
    assert (cost.rounds, cost.bytes_sent) == pc.bit_to_arith_cost(bits * n) == (1, 48 * bits * n)


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_max_argmax_along_dims_with_ties(sim, dim) -> None:
    a = torch.tensor(
        [[3.0, 7.5, 7.5, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0], [-5.0, -2.0, -9.0, -2.0, -3.0]], dtype=torch.float64
    )

    def fn(a, dim):
        x = secret(a)
        if dim is None:
            return x.max(), x.argmax(), x.min(), torch.argmin(x)
        values, index = torch.max(x, dim=dim)
        lows, low_index = x.min(dim, keepdim=True)
        return values, index, lows, low_index, torch.amax(x, dim), torch.argmax(x, dim, keepdim=True)

    got = sim.run(fn, a, dim)[0]
    if dim is None:
        want = (a.max(), a.argmax(), a.min(), a.argmin())
    else:
        values, index = torch.max(a, dim=dim)
        lows, low_index = a.min(dim, keepdim=True)
        want = (values, index, lows, low_index, torch.amax(a, dim), torch.argmax(a, dim, keepdim=True))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.equal(g, w) if not w.is_floating_point() else float((g - w).abs().max()) <= U


def test_argmax_over_a_vocabulary(sim) -> None:
    g = seeded(5)
    logits = torch.randn(2, 1000, generator=g, dtype=torch.float64) * 4
    logits[1, 417] = logits[1, 913] = logits[1].max() + 1  # tie: the first index wins
    got = sim.run(lambda v: secret(v).argmax(-1), logits)[0]
    assert torch.equal(got, logits.argmax(-1))


def _max_job(v: torch.Tensor) -> tuple[puma.SharedTensor, puma.CommStats]:
    """The row max of a secret v and what it cost."""
    ctx = current()
    x = secret(v)
    before = puma.stats()
    value, _ = pc.max_last_dim(ctx, x.shares, with_index=False)
    return puma.SharedTensor(value, torch.float64), puma.stats() - before


@pytest.mark.parametrize(("shape", "rounds"), [((12, 1, 5), 7), ((12, 1, 8), 8), ((12, 1, 48), 16), ((4, 100), 17)])
def test_all_pairs_max_for_small_tensors(sim, shape, rounds) -> None:
    """Small tensors compare all pairs of a row in one batch: msb (on loopback 3 rounds by
    the zero test up to ``ZERO_TEST_ELEMENTS`` pairs, else 8 by the bit circuit) +
    ceil(log2(n-1)) + 2 rounds; ties and masked logits give the exact max."""
    g = seeded(sum(shape))
    values = torch.randn(shape, generator=g, dtype=torch.float64) * 10
    values.view(-1, shape[-1])[0, :2] = 50.0
    values.view(-1, shape[-1])[-1, -1] = -(2.0**20)  # a masked logit

    results = sim.run(_max_job, values)
    assert float((results[0][0] - values.amax(-1)).abs().max()) <= U
    assert results[0][1].rounds == rounds


@pytest.mark.parametrize(
    ("shape", "path"),
    [((12, 1, 33), "all_pairs"), ((3, 2, 9), "all_pairs"), ((2, 300), "all_pairs"), ((12, 1, 200), "grouped")],
)
def test_all_pairs_max_by_counted_wins_on_a_slow_link(shape, path) -> None:
    """Where rounds are dear (wan), the max takes all pairs or groups of 8 even for tensors
    the loopback rules send to the tournament, and each candidate's wins are counted from
    integer comparisons and [count = g - 1] read from dealt tables: [x < 0] + 3 rounds a
    level, the exact max with ties and masked logits (on loopback: the AND tree)."""
    wan, width = PRESETS["wan"], shape[-1]
    assert pc._max_path(shape, False, 44, wan) == path
    assert pc._all_pairs_variant(12, 33, 44, wan) == "count" and pc._all_pairs_variant(12, 33, 44, None) == "and_tree"
    values = torch.randn(shape, generator=seeded(sum(shape)), dtype=torch.float64) * 10
    values.view(-1, width)[0, :2] = 50.0  # a tie
    values.view(-1, width)[-1, -1] = -(2.0**20)  # a masked logit

    with puma.Simulator(network=wan, play_network=False) as sim:
        results = sim.run(_max_job, values)
    assert float((results[0][0] - values.amax(-1)).abs().max()) <= U
    measured = (results[0][1].rounds, sum(r[1].bytes_sent for r in results))
    assert measured == pc.max_last_dim_cost(shape, False, 44, wan)


def test_grouped_max_beyond_the_all_pairs_budget(sim) -> None:
    """Rows too long for one all-pairs batch go through groups of 8 (with padding)."""
    values = torch.randn(3, 300, generator=seeded(9), dtype=torch.float64) * 10
    values[1, 299] = 99.0

    def fn(v):
        ctx = current()
        value, _ = pc.max_last_dim(ctx, secret(v).shares, with_index=False)
        return puma.SharedTensor(value, torch.float64)

    assert float((sim.run(fn, values)[0] - values.amax(-1)).abs().max()) <= U


def _sign_job(values: torch.Tensor, bits: int, variant: str, ring_bits: int | None) -> list:
    """The sign of shared ``values`` by ``variant`` (tables1..3 or zero_test), once with
    every party as dealer: (opened result, cost) per run."""
    ctx = current()
    x = pa.share_from_party(ctx, values if ctx.rank == 0 else None, 0)
    outs = []
    for _ in range(3):  # every party deals once
        before = puma.stats()
        if variant == "zero_test":
            out = pc._zero_test_sign(ctx, x, bits, ring_bits)
        else:
            out = pc._dealt_sign(ctx, x, bits, pc._TABLE_PLANS[variant](bits, ring_bits), ring_bits)
        cost = puma.stats() - before
        if ring_bits is None:
            opened = unpack_bits(reveal_bits(ctx, out), values.numel())
        else:
            opened = pa.reveal(ctx, out) & ((1 << ring_bits) - 1)
        outs.append((opened, cost))
    return outs


def _sign_inputs(bits: int, seed: int) -> torch.Tensor:
    """Ring values for a sign test on l = ``bits``: random over the ring and within
    +-2^(l-1), 0, +-1, the edges +-2^(l-1), the ring's extremes and a value whose low l - 1
    bits are all ones."""
    g = torch.Generator().manual_seed(seed)
    edge = 1 << (bits - 1)
    edges = [0, 1, -1, edge - 1, -edge, edge, 2**63 - 1, -(2**63), edge - 1 + (5 << bits)]
    return torch.cat([
        torch.randint(-(2**63), 2**63 - 1, (500,), generator=g, dtype=torch.int64),
        torch.randint(-min(edge, 2**62), min(edge, 2**62), (500,), generator=g, dtype=torch.int64),
        torch.tensor([(v + 2**63) % 2**64 - 2**63 for v in edges], dtype=torch.int64),
    ])  # fmt: skip


@pytest.mark.parametrize("bits", [44, 13, 64])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_dealt_sign_is_the_top_bit_exactly_at_its_cost(sim, bits, depth) -> None:
    """The sign from dealt tables: the top bit of x mod 2^l for any ring value (random,
    0, +-1, the edges +-2^(l-1)), as packed bits and as integers (full ring and a small
    one), for every dealer, at exactly ``TablePlan.cost``'s rounds and bytes."""
    values = _sign_inputs(bits, bits * 10 + depth)
    want = (values >> (bits - 1)) & 1
    for ring_bits in (None, 64, 20):
        results = sim.run(_sign_job, values, bits, f"tables{depth}", ring_bits)
        plan_cost = pc._TABLE_PLANS[f"tables{depth}"](bits, ring_bits).cost(values.numel(), bits, ring_bits)
        for k in range(3):
            assert torch.equal(results[0][k][0], want), (ring_bits, k)
            cost = total([r[k][1] for r in results])
            assert (cost.rounds, cost.bytes_sent) == plan_cost
        assert plan_cost[0] == depth + 2


def test_the_network_picks_tables_or_the_circuit_for_a_comparison() -> None:
    """Without a network, the zero test up to ``ZERO_TEST_ELEMENTS`` elements; on a network, the
    least projected time: tables for rounds on wan, the circuit's fewer bytes for large
    tensors on lan; deeper tables where bytes matter more than a round."""
    wan, lan = PRESETS["wan"], PRESETS["lan"]
    assert pc.less_than_zero_cost(1000, 44) == pc._zero_test_cost(1000, 44, 64)
    assert pc.msb_cost(3000, 44) == pc._msb_prefix_cost(3000, 44)
    assert pc.less_than_zero_cost(20_000, 44, wan)[0] < 9
    circuit, inject = pc._msb_prefix_cost(200_000, 44), pc.bit_to_arith_cost(200_000, 64, lan)
    assert pc.less_than_zero_cost(200_000, 44, lan) == (circuit[0] + inject[0], circuit[1] + inject[1])
    picks = {pc._sign_variant(n, 44, 64, PRESETS[name]) for n in (1, 10_000, 40_000) for name in PRESETS}
    assert {"circuit", "tables2", "tables3"} <= picks


@pytest.mark.parametrize("n", [1, 13])
def test_dealt_sign_on_a_few_elements(sim, n) -> None:
    """One element, and a count that is no multiple of 4 or 8 (padded symbols and bits)."""
    values = torch.randint(-(2**43), 2**43, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.int64)
    for ring_bits in (None, 64):
        results = sim.run(_sign_job, values, 44, "tables2", ring_bits)
        for k in range(3):
            assert torch.equal(results[0][k][0], (values < 0).long()), (ring_bits, k)
            cost = total([r[k][1] for r in results])
            assert (cost.rounds, cost.bytes_sent) == pc._TABLE_PLANS["tables2"](44, ring_bits).cost(n, 44, ring_bits)


@pytest.mark.parametrize("bits", [44, 13, 64, 4])
def test_zero_test_sign_is_the_top_bit_exactly_at_its_cost(sim, bits) -> None:
    """The sign by a masked zero test: the top bit of x mod 2^l for any ring value (edges
    included, and c's low bits all ones whichever way the test runs), as packed bits (3
    rounds) and as integers (4), for every dealer, at exactly ``_zero_test_cost``."""
    values = _sign_inputs(bits, bits)
    want = (values >> (bits - 1)) & 1
    for ring_bits in (None, 64, 20):
        results = sim.run(_sign_job, values, bits, "zero_test", ring_bits)
        for k in range(3):
            assert torch.equal(results[0][k][0], want), (ring_bits, k)
            cost = total([r[k][1] for r in results])
            assert (cost.rounds, cost.bytes_sent) == pc._zero_test_cost(values.numel(), bits, ring_bits)
        assert cost.rounds == (3 if ring_bits is None else 4)


@pytest.mark.parametrize("n", [1, 13])
def test_zero_test_sign_on_a_few_elements(sim, n) -> None:
    values = torch.randint(-(2**43), 2**43, (n,), generator=seeded(n), dtype=torch.int64)
    results = sim.run(_sign_job, values, 44, "zero_test", 64)
    assert all(torch.equal(results[0][k][0], (values < 0).long()) for k in range(3))


@pytest.mark.parametrize("n", [1, 7, 300])
def test_zero_test_loops_match_torch(n) -> None:
    """The zero test's compiled CPU loops give, byte for byte, what its torch path gives on
    other devices: A's and B's packed terms (rows whose t overflows included) and D's zero
    test of their sums; B unpacks the dealer's shares as packed; a packed reply of the wrong
    size is refused."""
    low = 43
    p = pc._zero_test_prime(low)
    stream = AesPrg(bytes(range(16)), n)
    c_low = stream.int64((n,)) & ((1 << low) - 1)
    beta = random_bits(stream, n)
    c_low[0], beta[0] = (1 << low) - 1, 1  # t = 2^L: d is one zero
    r_share = pc._draw_below(stream, (n, low), p)
    masks = pc._FieldMasks(
        pc._draw_below(stream, (n, low), p - 1), pc._draw_below(stream, (n, low), p), pc._draw_below(stream, (n,), low)
    )
    terms = {}
    for is_a in (True, False):
        terms[is_a] = pc._tested_terms(c_low, beta, r_share, masks, low, p, is_a)
        assert torch.equal(terms[is_a], pc._tested_terms_torch(c_low, beta, r_share, masks, low, p, is_a))
    zero = pc._zero_rows(terms[True], terms[False], n, low, p)
    assert torch.equal(zero, pc._zero_rows_torch(terms[True], terms[False], n, low, p))
    assert zero[0] == 1  # the overflowing row's zero, whatever the masks
    # sums that hit 0 and p, and a row without a zero
    width = p.bit_length()
    a = torch.randint(0, p, (n, low), generator=seeded(n))
    b = (p - a) % p
    b[:, 1:] = (b[:, 1:] + 1) % p
    b[-1, 0] = (b[-1, 0] + 1) % p
    packed_a, packed_b = pack_uint(a, width), pack_uint(b, width)
    zero = pc._zero_rows(packed_a, packed_b, n, low, p)
    assert torch.equal(zero, pc._zero_rows_torch(packed_a, packed_b, n, low, p))
    assert zero[-1] == 0 and bool((zero[:-1] == 1).all())
    assert torch.equal(pc._unpack_field(packed_a, n, low, p), a.int())
    with pytest.raises(ProtocolError, match="packed"):
        pc._zero_rows(packed_a[:-1], packed_b, n, low, p)
    with pytest.raises(ProtocolError, match="packed"):
        pc._unpack_field(torch.cat([packed_a, packed_a[:1]]), n, low, p)


def test_draws_below_a_bound_are_exact_and_in_step() -> None:
    """``_draw_below``: integers in [0, q), each value about equally often, the same on two
    holders of a key, for a q that refuses some 31-bit draws and a power of two that refuses
    none."""
    for q in (47, 16):
        one, two = (pc._draw_below(AesPrg(bytes(16)), (600, 50), q) for _ in range(2))
        assert torch.equal(one, two) and one.dtype == torch.int32
        counts = torch.bincount(one.reshape(-1).long(), minlength=q).double()
        assert counts.numel() == q
        expected = one.numel() / q
        assert float(((counts - expected) ** 2 / expected).sum()) < chi_square_critical(q - 1, z=4.753)


def _tournament_job(v: torch.Tensor) -> tuple:
    ctx = current()
    x = secret(v).shares
    before = puma.stats()
    index, onehot = pc.argmax_onehot_last_dim(ctx, x)
    argmax = puma.stats() - before
    value, at = pc.max_last_dim(ctx, x, with_index=True)
    at_cost = puma.stats() - before - argmax
    return (
        pa.reveal(ctx, index),
        pa.reveal(ctx, onehot),
        puma.SharedTensor(value, torch.float64),
        pa.reveal(ctx, at),
        argmax,
        at_cost,
    )


@pytest.mark.parametrize("network", ["wan", "lan", None])
def test_tournament_levels_with_the_select_inside_the_zero_test(network) -> None:
    """On wan the levels of the max and argmax tree run by the zero test with the select
    inside, each level's replicating round in the next one's first (3 rounds a level, 1 at
    the end); on lan too, although each level alone (at 4 rounds) would take a comparison
    and a product round: the plan weighs the tree as a whole. On loopback too, up to
    ``ZERO_TEST_ELEMENTS`` comparisons a level (where a comparison alone takes the zero
    test), a comparison and a product round beyond. All give plaintext's max, first index
    of a tie and one-hot, at exactly their costs."""
    profile = PRESETS.get(network or "")
    shape = (3, 100)
    assert pc._level_variant(3 * 50, 2, True, 44, profile) == ("select" if network == "lan" else "zero_test")
    assert pc._level_variant(pc.ZERO_TEST_ELEMENTS + 1, 2, True, 44, None) == "select"
    planned = {v for _, v in pc._level_plan(3, 100, 2, True, 44, profile)}
    assert planned == {"zero_test"}
    values = torch.randn(shape, generator=seeded(3), dtype=torch.float64) * 8
    values[1, 17] = values[1, 90] = values[1].max() + 1  # a tie: the first index wins
    values[2, -1] = -(2.0**20)  # a masked logit
    with puma.Simulator(network=profile, play_network=False) as sim:
        results = sim.run(_tournament_job, values)
    index, onehot, value, at, argmax, at_cost = results[0]
    assert torch.equal(index, values.argmax(-1)) and torch.equal(at, values.argmax(-1))
    assert torch.equal(onehot, F.one_hot(values.argmax(-1), shape[-1]))
    assert float((value - values.amax(-1)).abs().max()) <= U
    assert (argmax.rounds, sum(r[4].bytes_sent for r in results)) == pc.argmax_cost(shape, 44, profile)
    assert (at_cost.rounds, sum(r[5].bytes_sent for r in results)) == pc.max_last_dim_cost(shape, True, 44, profile)
    assert at_cost.rounds == 3 * 7 + 1


def test_the_zero_test_where_rounds_outweigh_its_local_work() -> None:
    """The policy takes the zero test where its rounds save more than its local work costs:
    on wan for a few thousand comparisons and for the first level of a 12 x 128 x 128
    softmax's max; not on lan, and not for that level under puma, whose 1 ms rounds are
    cheaper than the test's work on 98304 comparisons."""
    wan, lan, puma_profile = PRESETS["wan"], PRESETS["lan"], PRESETS["puma"]
    assert pc._sign_variant(3072, 44, 64, wan) == "zero_test"
    assert pc._level_variant(98304, 1, False, 44, wan) == "zero_test"
    assert pc._sign_variant(3072, 44, 64, lan) != "zero_test"
    assert pc._level_variant(98304, 1, False, 44, puma_profile) == "select"
    assert pc._level_variant(98304, 1, False, 44, lan) == "select"
