"""Arithmetic on SharedTensors against float64 plaintext, with stated error bounds.

Bounds (f = 18, u = 2^-18): encoding one input costs at most u/2; a fixed-point product
adds one truncation (at most u) to the propagated encoding errors:
|err(x*y)| <= (|x| + |y|) u/2 + 2u, and for matmul the encoding errors add over the inner
dimension k: |err| <= k * max|x| max... estimated as (sum_k |x||y| rel) -- we use the
explicit bound k * (max|x| + max|y|) * u/2 + 2u.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securetorch as puma
from securetorch.comm.stats import total
from securetorch.protocols import arithmetic as pa

from ..conftest import seeded

U = 2.0**-18
F = torch.nn.functional
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def share_both(a: torch.Tensor, b: torch.Tensor) -> tuple[puma.SharedTensor, puma.SharedTensor]:
    """a owned by party 0, b by party 1 (non-owners pass None)."""
    x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    y = puma.share(b if puma.rank() == 1 else None, owner=1, dtype=torch.float64)
    return x, y


def binary_ops(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = share_both(a, b)
    out = {
        "add": x + y,
        "sub": x - y,
        "mul": x * y,
        "neg": -x,
        "add_public": x + b,
        "radd_public": 2.5 + x,
        "rsub_public": 1.0 - x,
        "mul_public_tensor": x * b,
        "mul_public_float": x * 0.1234,
        "mul_public_int": x * 3,
        "div_public": x / 7.0,
        "torch_add_alpha": torch.add(x, y, alpha=2),
        "torch_sub": torch.sub(x, y),
        "torch_mul": torch.mul(x, y),
    }
    return {k: v.reveal() for k, v in out.items()}


def expected_binary(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "add": a + b,
        "sub": a - b,
        "mul": a * b,
        "neg": -a,
        "add_public": a + b,
        "radd_public": 2.5 + a,
        "rsub_public": 1.0 - a,
        "mul_public_tensor": a * b,
        "mul_public_float": a * 0.1234,
        "mul_public_int": a * 3,
        "div_public": a / 7.0,
        "torch_add_alpha": a + 2 * b,
        "torch_sub": a - b,
        "torch_mul": a * b,
    }


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@HYP
@given(shape=shapes, scale=st.sampled_from([1e-3, 1.0, 30.0, 1000.0]), seed=st.integers(0, 2**31))
def test_elementwise_ops_match_float64(sim, shape, scale, seed) -> None:
    g = seeded(seed)
    a = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
    b = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
    got = sim.run(binary_ops, a, b)[0]
    want = expected_binary(a, b)
    bound = (a.abs() + b.abs()) * U / 2 * 4 + 4 * U  # factors cover alpha/int scaling of encodings
    for name, value in got.items():
        err = (value.double() - want[name]).abs()
        assert bool((err <= bound).all()), (name, float(err.max()), float(bound.min()))


def test_edge_values(sim) -> None:
    """Products up to real magnitude 2^20, exact zeros, tiny and negative values."""
    a = torch.tensor(
        [0.0, -0.0, 2.0**-18, -(2.0**-18), 1024.0, -1024.0, 1023.99, -1000.0, 1.0, -1.0], dtype=torch.float64
    )
    b = torch.tensor([0.0, 5.0, 1.0, -1.0, 1024.0, 1024.0, -1024.0, -1000.0, 2.0**-18, 0.5], dtype=torch.float64)
    got = sim.run(lambda a, b: (lambda x, y: (x * y).reveal())(*share_both(a, b)), a, b)[0]
    err = (got.double() - a * b).abs()
    assert bool((err <= (a.abs() + b.abs()) * U / 2 + 2 * U).all()), err


@pytest.mark.parametrize("pad", [0, pa.BYTES_BOUND_ELEMENTS], ids=["masked_open", "wrap_bits"])
def test_truncation_protocol_range(sim, pad) -> None:
    """Ring-level truncation: floor(z / 2^d) or one more, for |z| up to 2^62, for both
    protocols (a tensor of 2^17 elements or more takes the 3-round one)."""
    from securetorch.session.context import current

    edges = torch.tensor(
        [0, 1, -1, 2**18, -(2**18), 2**62 - 1, -(2**62), 2**55 + 12345, -(2**55) - 999, 7], dtype=torch.int64
    )
    z = torch.cat([edges, torch.randint(-(2**62), 2**62, (pad,), generator=seeded(11))])

    def fn(z: torch.Tensor) -> list[torch.Tensor]:
        ctx = current()
        x = pa.share_from_party(ctx, z if ctx.rank == 2 else None, owner=2)
        return [pa.reveal(ctx, pa.truncate(ctx, x, bits)) for bits in (1, 18, 31, 36, 62)]

    for _ in range(3):  # rotate the dealer role through all parties
        outs = sim.run(fn, z)[0]
        for bits, out in zip((1, 18, 31, 36, 62), outs, strict=True):
            diff = out - (z >> bits)  # z >> bits: floor division by 2^bits
            assert bool(((diff == 0) | (diff == 1)).all()), (bits, diff)


def test_wrap_truncation_is_unbiased(sim) -> None:
    """The 3-round truncation adds 1 - carry: its mean error is below 1% of a unit."""
    from securetorch.session.context import current

    z = torch.randint(-(2**40), 2**40, (pa.BYTES_BOUND_ELEMENTS,), generator=seeded(12))

    def fn(z: torch.Tensor) -> torch.Tensor:
        ctx = current()
        x = pa.share_from_party(ctx, z if ctx.rank == 0 else None, owner=0)
        return pa.reveal(ctx, pa.truncate(ctx, x, 18))

    err = sim.run(fn, z)[0].double() - z.double() / 2**18
    assert abs(float(err.mean())) < 0.01
    assert float(err.abs().max()) < 1


@pytest.mark.parametrize(("n", "rounds", "nbytes"), [(2**17 - 1, 2, 5_373_912), (2**17, 3, 3_473_408)])
def test_truncation_protocol_by_size(sim, n, rounds, nbytes) -> None:
    """Below 2^17 elements a fixed-point product takes 2 rounds and 32 + 18/2 B per element;
    from 2^17 on, 3 rounds and 24 + 20/8 B per element (f = 18)."""

    def fn():
        x = puma.share(torch.full((n,), 1.5) if puma.rank() == 0 else None, owner=0)
        before = puma.stats()
        y = x * x
        return puma.stats() - before, y.reveal()

    results = sim.run(fn)
    cost = total([r[0] for r in results])
    assert (cost.rounds, cost.bytes_sent) == (rounds, nbytes) == pa.truncation_cost(n, 18)
    assert float((results[0][1] - 2.25).abs().max()) <= U


def matmul_family(a, b, c, bias):
    x, w = share_both(a, b)
    cs = puma.share(c if puma.rank() == 2 else None, owner=2, dtype=torch.float64)
    bs = puma.share(bias if puma.rank() == 2 else None, owner=2, dtype=torch.float64)
    out = {
        "matmul": x @ w,
        "torch_matmul": torch.matmul(x, w),
        "public_right": x @ b,
        "public_left": a @ w,
        "mm": torch.mm(x, w),
        "addmm": torch.addmm(bs, x, w),
        "addmm_scaled": torch.addmm(bs, x, w, beta=0.5, alpha=2.0),
        "linear": F.linear(x, w.t(), bs),
        "linear_public_weight": F.linear(x, b.t()),
        "bmm": torch.bmm(cs, cs.transpose(1, 2)),
        "baddbmm": torch.baddbmm(cs[:, :, :2], cs, cs.transpose(1, 2)[:, :, :2]),
        "batched_matmul": cs @ w[: c.shape[-1]],
    }
    return {k: v.reveal() for k, v in out.items()}


@HYP
@given(m=st.integers(1, 6), k=st.integers(1, 40), n=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_matmul_family_matches_float64(sim, m, k, n, seed) -> None:
    g = seeded(seed)
    a = torch.randn(m, k, generator=g, dtype=torch.float64) * 3
    b = torch.randn(k, n, generator=g, dtype=torch.float64) * 3
    c = torch.randn(2, 3, min(k, 4), generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    got = sim.run(matmul_family, a, b, c, bias)[0]
    want = {
        "matmul": a @ b,
        "torch_matmul": a @ b,
        "public_right": a @ b,
        "public_left": a @ b,
        "mm": a @ b,
        "addmm": bias + a @ b,
        "addmm_scaled": 0.5 * bias + 2 * (a @ b),
        "linear": a @ b + bias,
        "linear_public_weight": a @ b,
        "bmm": c @ c.transpose(1, 2),
        "baddbmm": c[:, :, :2] + c @ c.transpose(1, 2)[:, :, :2],
        "batched_matmul": c @ b[: c.shape[-1]],
    }
    bound = k * (a.abs().max() + b.abs().max() + 2 * c.abs().max()) * U + 8 * U
    for name, value in got.items():
        err = float((value.double() - want[name]).abs().max())
        assert err <= bound, (name, err, bound)


def test_matmul_acceptance_error_rounds_bytes(sim) -> None:
    """Issue #2: [128,768] x [768,768], N(0,1): error <= 4e-4, <= 2 rounds, <= 5.1 MB.

    The product is one resharing-free truncation: 32 + 18/2 bytes per output element."""
    g = seeded(7)
    a = torch.randn(128, 768, generator=g, dtype=torch.float64)
    b = torch.randn(768, 768, generator=g, dtype=torch.float64)

    def fn(a, b):
        x, w = share_both(a, b)
        before = puma.stats()
        y = x @ w
        _ = y.shares  # a product's truncation runs when its shares are first read
        cost = puma.stats() - before
        return y.reveal(), cost

    results = sim.run(fn, a, b)
    err = float((results[0][0].double() - a @ b).abs().max())
    cost = total([r[1] for r in results])
    assert err <= 4e-4
    assert cost.rounds == 2
    assert cost.bytes_sent == pa.truncation_bytes(128 * 768, 18) == 4_030_464 <= 5.1e6


@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 3, 4)])
def test_exact_costs_of_sharing_and_products(sim, shape) -> None:
    """Bytes (all parties) and rounds are exact: share 16 B/1, reveal 24 B/1, reveal-to-one
    8 B/1, ring mul 24 B/1, fixed-point mul and matmul: one truncation (2 rounds)."""
    from securetorch.session.context import current

    n = torch.Size(shape).numel()

    def fn(shape):
        ctx = current()
        costs = {}

        def measure(name, op):
            before = puma.stats()
            result = op()
            costs[name] = puma.stats() - before
            return result

        t = torch.ones(shape)
        x = measure("share", lambda: puma.share(t if puma.rank() == 0 else None, owner=0))
        measure("reveal", lambda: x.reveal())
        measure("reveal_to", lambda: x.reveal(to=1))
        measure("mul", lambda: x * x)
        measure("ring_mul", lambda: pa.mul(ctx, x.shares, x.shares))
        measure("matmul", lambda: (x.reshape(n, 1) @ x.reshape(1, n)).shares)  # its truncation runs at the read
        measure("public", lambda: x + t - 2 * x + x * 3)
        return costs

    results = sim.run(fn, shape)
    summed = {k: total([r[k] for r in results]) for k in results[0]}
    expected = {
        "share": (16 * n, 1),
        "reveal": (24 * n, 1),
        "reveal_to": (8 * n, 1),
        "mul": (pa.truncation_bytes(n, 18), 2),
        "ring_mul": (24 * n, 1),
        "matmul": (pa.truncation_bytes(n * n, 18), 2),
        "public": (0, 0),
    }
    for name, (nbytes, rounds) in expected.items():
        assert (summed[name].bytes_sent, summed[name].rounds) == (nbytes, rounds), name
        assert summed[name].bytes_received == nbytes, name


def test_sum_mean_and_division(sim) -> None:
    g = seeded(3)
    a = torch.randn(4, 6, 8, generator=g, dtype=torch.float64) * 10

    def fn(a):
        x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
        return {
            "sum": x.sum(),
            "sum_dim": torch.sum(x, dim=1),
            "sum_keep": x.sum(-1, keepdim=True),
            "mean": x.mean(),
            "mean_dim": torch.mean(x, dim=(0, 2)),
            "mean_768": torch.cat([x.reshape(-1)] * 4).mean(),
            "div_tensor": x / (torch.arange(8, dtype=torch.float64) + 1),
            "div_int": x / 3,
        }

    got = sim.run(fn, a)[0]
    want = {
        "sum": a.sum(),
        "sum_dim": a.sum(1),
        "sum_keep": a.sum(-1, keepdim=True),
        "mean": a.mean(),
        "mean_dim": a.mean(dim=(0, 2)),
        "mean_768": a.mean(),
        "div_tensor": a / (torch.arange(8, dtype=torch.float64) + 1),
        "div_int": a / 3,
    }
    for name in want:
        err = float((got[name].double() - want[name]).abs().max())
        assert err <= 192 * U, (name, err)  # sums add up to 192 encoding errors


def test_in_place_ops(sim) -> None:
    a = torch.tensor([1.5, -2.0, 3.25], dtype=torch.float64)

    def fn(a):
        x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
        y = x
        y += 1
        y *= 2
        y -= x / 4
        y /= 2
        assert y is x
        return x

    got = sim.run(fn, a)[0]
    ref = (a + 1) * 2
    ref = (ref - ref / 4) / 2
    assert float((got.double() - ref).abs().max()) <= 8 * U


def test_float_results_keep_logical_dtype(sim) -> None:
    def fn():
        x = puma.share(torch.ones(2, 3) if puma.rank() == 0 else None, owner=0)
        return [
            x.dtype,
            x.double().dtype,
            x.to(torch.float16).dtype,
            x.type(torch.float64).dtype,
            x.float().dtype,
            x.dim(),
            tuple(x.shape),
            isinstance(x, torch.Tensor),
        ]

    assert sim.run(fn)[0] == [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.float64,
        torch.float32,
        2,
        (2, 3),
        True,
    ]


@pytest.mark.parametrize("index_bits", [1, 8, 10])
def test_truncations_with_dealt_lookups(sim, index_bits) -> None:
    """``truncate_many``: several truncations in the same 2 rounds, each exact (floor or one
    more) for |z| < 2^62, and its lookups exactly tables[:, y mod 2^k] of the truncation's
    own result y, for every dealer; the counters equal ``truncate_many_cost``."""
    from securetorch.session.context import current

    edges = torch.tensor([0, 1, -1, 2**18, -(2**18), 2**62 - 1, -(2**62), 2**55 + 12345, -(2**55) - 999, 7])
    z = torch.cat([edges, torch.randint(-(2**62), 2**62, (500,), generator=seeded(13))])
    tables = torch.randint(-(2**63), 2**63 - 1, (3, 1 << index_bits), generator=seeded(14))
    parts = [(18, tables), (5, None), (min(62, 64 - index_bits), tables[:2])]  # k <= 64 - bits

    def fn(z: torch.Tensor):
        ctx = current()
        x = pa.share_from_party(ctx, z if ctx.rank == 1 else None, owner=1)
        before = puma.stats()
        outs = pa.truncate_many(ctx, [(x[0], bits, t) for bits, t in parts])
        cost = puma.stats() - before
        return [(pa.reveal(ctx, y), None if t is None else pa.reveal(ctx, t)) for y, t in outs], cost

    for _ in range(3):  # rotate the dealer role through all parties
        results = sim.run(fn, z)
        for (bits, t), (y, looked_up) in zip(parts, results[0][0], strict=True):
            diff = y - (z >> bits)
            assert bool(((diff == 0) | (diff == 1)).all()), bits
            if t is not None:
                assert torch.equal(looked_up, t[:, y & ((1 << index_bits) - 1)])
        cost = total([r[1] for r in results])
        n = z.numel()
        sizes = [(n, bits, 0 if t is None else t.shape[0], 0 if t is None else index_bits) for bits, t in parts]
        assert (cost.rounds, cost.bytes_sent) == pa.truncate_many_cost(sizes)


def test_lookups_refuse_tables_wider_than_the_truncated_value(sim) -> None:
    from securetorch.session.context import current

    def fn():
        ctx = current()
        z = torch.zeros(4, dtype=torch.int64)
        with pytest.raises(ValueError, match="2\\^k entries"):
            pa.truncate_many(ctx, [(z, 60, torch.zeros(1, 32, dtype=torch.int64))])
        with pytest.raises(ValueError, match="2\\^k entries"):
            pa.truncate_many(ctx, [(z, 18, torch.zeros(1, 24, dtype=torch.int64))])

    sim.run(fn)


def _chain_job(v: torch.Tensor, small: int, beside: bool) -> tuple:
    """x^2, x^3, x^4 of the first ``small`` elements and x^4 by a chain of truncations whose
    third step is small enough for the 2-round truncation (so the chain has two runs of the
    3-round one), alone or beside a comparison (``session.parallel``)."""
    from securetorch.protocols import comparison as pc
    from securetorch.session.context import current
    from securetorch.session.parallel import parallel

    ctx = current()
    x = puma.share(v if ctx.rank == 0 else None, owner=0, dtype=torch.float64).shares
    n = (v.numel(),)
    head = (x[0][:small], x[1][:small])
    steps: list[pa.Step] = [
        (n, 18, lambda _: pa.mul_local(x, x)),
        (n, 18, lambda outs: pa.mul_local(outs[0], x)),
        ((small,), 18, lambda outs: pa.mul_local((outs[1][0][:small], outs[1][1][:small]), head)),
        (n, 18, lambda outs: pa.mul_local(outs[1], x)),
    ]
    before = puma.stats()
    if beside:
        outs, sign = parallel(ctx, [lambda: pa.truncate_chain(ctx, steps), lambda: pc.less_than_zero(ctx, x)])
    else:
        outs, sign = pa.truncate_chain(ctx, steps), None
    cost = puma.stats() - before
    revealed = [puma.SharedTensor(o, torch.float64).reveal() for o in outs]
    return revealed, None if sign is None else pa.reveal(ctx, sign), cost


@pytest.mark.parametrize("beside", [False, True], ids=["alone", "beside_a_comparison"])
def test_a_chain_of_truncations_lets_each_last_round_ride_in_the_next(sim, beside) -> None:
    """In a run of 3-round truncations each step's last round (A -> B) rides in the next
    step's first: the chain [3-round, 3-round, 2-round, 3-round] takes 2 + 3 + 2 + 3 rounds
    at the bytes of the four truncations, for every dealer, with each product within its
    bound (also when a comparison runs beside it and shares the PRG streams' order)."""
    from securetorch.protocols import comparison as pc

    n, small = pa.BYTES_BOUND_ELEMENTS, 1000
    v = torch.linspace(-1.5, 1.5, n, dtype=torch.float64)
    parts = [(n, 18), (n, 18), (small, 18), (n, 18)]
    assert pa.truncate_chain_cost(parts) == (10, sum(pa.truncation_cost(m, d)[1] for m, d in parts))
    for _ in range(3):  # every party as the runs' dealer
        results = sim.run(_chain_job, v, small, beside)
        (square, cube, fourth_head, fourth), sign, _ = results[0]
        for got, want in ((square, v**2), (cube, v**3), (fourth_head, v[:small] ** 4), (fourth, v**4)):
            assert float((got - want).abs().max()) <= 12 * U
        rounds = {r[2].rounds for r in results}
        nbytes = sum(r[2].bytes_sent for r in results)
        if beside:
            assert torch.equal(sign, (v < 0).long())
            ltz = pc.less_than_zero_cost(n, 44)
            assert rounds == {max(10, ltz[0])} and nbytes == pa.truncate_chain_cost(parts)[1] + ltz[1]
        else:
            assert (rounds, nbytes) == ({10}, pa.truncate_chain_cost(parts)[1])


def _planned_chain_job(v: torch.Tensor) -> tuple:
    """x^2, then x^3 and x^4 in one batch, then x^4 again from x^3: a chain whose middle step
    is twice the others' size."""
    from securetorch.session.context import current

    ctx = current()
    x = puma.share(v if ctx.rank == 0 else None, owner=0, dtype=torch.float64).shares
    n = tuple(v.shape)

    def batch(outs: list) -> torch.Tensor:
        stacked = (torch.stack([outs[0][0], outs[0][0]]), torch.stack([outs[0][1], outs[0][1]]))
        return pa.mul_local(stacked, (torch.stack([x[0], outs[0][0]]), torch.stack([x[1], outs[0][1]])))

    steps: list[pa.Step] = [
        (n, 18, lambda _: pa.mul_local(x, x)),
        ((2, *n), 18, batch),
        (n, 18, lambda outs: pa.mul_local((outs[1][0][0], outs[1][1][0]), x)),
    ]
    before = puma.stats()
    outs = pa.truncate_chain(ctx, steps)
    cost = puma.stats() - before
    return [puma.SharedTensor(o, torch.float64).reveal() for o in outs], cost


def test_a_chain_takes_the_truncations_fastest_together() -> None:
    """Each step's own choice is not the chain's best: under wan 98304 elements alone take
    the 2-round truncation and 196608 the 3-round one (2 + 3 + 2 rounds), but all three
    3-round ones in one run take as many rounds (2 + 2 + 3) at fewer bytes. The chain takes
    those, computes x^2, x^3 and x^4 within their bounds, and costs exactly that."""
    from securetorch.comm.profile import PRESETS

    wan, n = PRESETS["wan"], 98304
    parts = ((n, 18), (2 * n, 18), (n, 18))
    own = tuple(pa._truncation_variant(m, d, wan) for m, d in parts)
    assert own == ("masked_open", "wrap_bits", "masked_open")
    assert pa._chain_plan(parts, wan) == ("wrap_bits",) * 3
    cost = pa.truncate_chain_cost(parts, wan)
    assert cost[0] == pa._chain_cost(parts, own)[0] == 7 and cost[1] < pa._chain_cost(parts, own)[1]
    v = torch.linspace(-1.5, 1.5, n, dtype=torch.float64)
    with puma.Simulator(network=wan, play_network=False) as sim:
        results = sim.run(_planned_chain_job, v)
    square, (cube, fourth_by_squares), fourth = results[0][0]
    for got, want, bound in ((square, v**2, 3), (cube, v**3, 7), (fourth_by_squares, v**4, 12), (fourth, v**4, 12)):
        assert float((got - want).abs().max()) <= bound * U
    assert ({r[1].rounds for r in results}, sum(r[1].bytes_sent for r in results)) == ({7}, cost[1])
