"""Exact bytes and rounds of the op workloads of REFERENCE.md §4 (the rows of
``benchmarks/nonlinear.py``), so that a protocol change that costs more fails CI.

The costs do not depend on the values, only on the shapes; the error bounds of issue #3 are
checked on the same inputs. Changing a number here must come with a reason in the commit.
"""

from __future__ import annotations

import math

import pytest
import torch

import securetorch as puma
from benchmarks.nonlinear import secure_op, workloads
from securetorch.comm.profile import PRESETS, NetworkProfile, total_cost
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.session.context import current

# op: (bytes of all parties, rounds, max error bound of issue #3 (rsqrt: relative))
EXPECTED = {
    "gelu": (139_001_856, 31, 1e-3),
    "softmax": (92_423_232, 106, 1e-3),
    "layernorm": (9_759_040, 28, 1e-3),
    "exp": (64_929_792, 13, 1e-3),
    "reciprocal": (229_834_752, 32, 2e-5),
    "rsqrt": (74_477_568, 36, 1e-3),
}


def _run(name: str, x: torch.Tensor, params: tuple) -> tuple[torch.Tensor | None, puma.CommStats]:
    op = secure_op(name, x, params)
    before = puma.stats()
    out = op()
    _ = out.shares  # the whole op: a softmax's owed division runs here
    cost = puma.stats() - before
    return out.reveal(), cost


@pytest.mark.parametrize("name", list(EXPECTED))
def test_op_workload_costs_exactly_this(sim, name) -> None:
    x, params, reference, relative = workloads(torch.Generator().manual_seed(0))[name]
    results = sim.run(_run, name, x, params)
    expected_bytes, expected_rounds, bound = EXPECTED[name]
    assert sum(cost.bytes_sent for _, cost in results) == expected_bytes
    assert {cost.rounds for _, cost in results} == {expected_rounds}
    want = reference(x, *params)
    err = (results[0][0] - want).abs()
    if relative:
        err = err / want.abs()
    assert float(err.max()) <= bound


# Every composite's cost function against the counters, on shapes that take each path:
# small tensors (dealt tables, thresholds, batched signs), mid-sized ones (the bit circuit
# with small-tensor paths) and large ones (A2B normalisers, sequential signs, grouped max).
_FB, _CB = DEFAULT_FRAC_BITS, DEFAULT_COMPARE_BITS
COMPOSITES = {
    "exp": (lambda c, x: ap.exp(c, x), lambda shape, net: ap.exp_cost(math.prod(shape), _FB, net)),
    "gelu": (
        lambda c, x: ap.gelu(c, x),
        lambda shape, net: ap.activation_cost("gelu", math.prod(shape), _FB, _CB, net),
    ),
    "silu": (
        lambda c, x: ap.silu(c, x),
        lambda shape, net: ap.activation_cost("silu", math.prod(shape), _FB, _CB, net),
    ),
    "tanh": (
        lambda c, x: ap.tanh(c, x),
        lambda shape, net: ap.activation_cost("tanh", math.prod(shape), _FB, _CB, net),
    ),
    "reciprocal": (
        lambda c, x: ap.reciprocal(c, x),
        lambda shape, net: ap.reciprocal_cost(math.prod(shape), _FB, _CB, net),
    ),
    "rsqrt": (lambda c, x: ap.rsqrt(c, x), lambda shape, net: ap.rsqrt_cost(math.prod(shape), network=net)),
    "softmax": (
        lambda c, x: ap.softmax_last_dim(c, x, pc.max_last_dim(c, x, with_index=False)[0]),
        lambda shape, net: ap.softmax_cost(shape, _FB, _CB, net),
    ),
    "softmax_times_value": (
        lambda c, x: _softmax_times_value(c, x),
        lambda shape, net: _softmax_times_value_cost(shape, net),
    ),
    "softmax_times_value_beside": (
        lambda c, x: _softmax_times_value(c, x, ap.divide_rows_beside),
        lambda shape, net: _softmax_times_value_cost(shape, net, beside=True),
    ),
    "layernorm": (
        lambda c, x: ap.layer_norm_last_dims(c, x, 1, (x[0][0], x[1][0]), None, 1e-5),
        lambda shape, net: ap.layer_norm_cost(math.prod(shape[:-1]), shape[-1], True, False, _FB, _CB, net),
    ),
    "rmsnorm": (
        lambda c, x: ap.layer_norm_last_dims(c, x, 1, None, None, 1e-5, rms=True),
        lambda shape, net: ap.layer_norm_cost(math.prod(shape[:-1]), shape[-1], False, True, _FB, _CB, net),
    ),
    "max": (
        lambda c, x: pc.max_last_dim(c, x, with_index=False),
        lambda shape, net: pc.max_last_dim_cost(shape, False, _CB, net),
    ),
    "max_with_index": (
        lambda c, x: pc.max_last_dim(c, x, with_index=True),
        lambda shape, net: pc.max_last_dim_cost(shape, True, _CB, net),
    ),
    "argmax": (lambda c, x: pc.argmax_onehot_last_dim(c, x), lambda shape, net: pc.argmax_cost(shape, _CB, net)),
}


def _softmax_times_value(ctx, x, divide=ap.divide_rows_after):
    """softmax(x) @ x^T with the division after the product (``ap.divide_rows_after``, or
    ``divide``)."""
    e, total = ap.softmax_numerators(ctx, x, pc.max_last_dim(ctx, x, with_index=False)[0])
    value = (x[0].mT, x[1].mT)
    return divide(ctx, total, lambda: pa.truncate_additive(ctx, pa.matmul_local(e, value), _FB))


def _softmax_times_value_cost(shape, network, beside=False):
    rows = math.prod(shape[:-1])
    product = pa.truncation_cost(rows * shape[-2], _FB, network)  # e @ x^T: rows x shape[-2]
    division = (
        ap.divide_rows_beside_cost(rows, rows * shape[-2], product, _FB, _CB, network)
        if beside
        else ap.divide_rows_after_cost(rows, product, _FB, _CB, network)
    )
    return total_cost([ap.softmax_numerators_cost(shape, _FB, _CB, network), division])


SHAPES = {
    "exp": [(768,), (3, 5000)],
    "gelu": [(768,), (3072,), (5000,)],
    "silu": [(300,), (5000,)],
    "tanh": [(300,), (5000,)],
    "reciprocal": [(12,), (100,), (5000,)],
    "rsqrt": [(1,), (30,), (5000,)],
    # the normalisers' multiplier rides in their first truncation up to FOLD_ELEMENTS (no profile)
    "softmax": [(12, 1, 33), (12, 16, 16), (2, 64, 128), (2, 80, 128)],
    "softmax_times_value": [(12, 1, 33), (12, 16, 16), (2, 64, 128)],
    "softmax_times_value_beside": [(12, 1, 33), (12, 16, 16), (2, 64, 128)],
    "layernorm": [(1, 768), (8, 768), (130, 64), (150, 128), (128, 768)],  # wan: M G beside rsqrt at 128 x 768
    "rmsnorm": [(1, 2048), (200, 32)],
    "max": [(12, 1, 9), (4, 100), (3, 300), (2, 5000)],
    "max_with_index": [(1, 1000)],
    "argmax": [(1, 50257), (3, 7)],
}
# the same choices as wan and lan (rounds x RTT against bytes / bandwidth), played quickly
SCALED = {name: NetworkProfile(p.bandwidth_bps * 1e4, p.rtt_s / 1e4, name) for name, p in PRESETS.items()}


def _composite(name: str, shape: tuple[int, ...]):
    ctx = current()
    g = torch.Generator().manual_seed(len(shape))
    value = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 + 0.5) * 2**ctx.frac_bits
    x = pa.share_from_party(ctx, value.round().long() if ctx.rank == 0 else None, 0)
    before = puma.stats()
    COMPOSITES[name][0](ctx, x)
    return puma.stats() - before


@pytest.mark.parametrize("network", [None, "wan", "lan"])
@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_cost_functions_equal_the_counters(name, network) -> None:
    profile = None if network is None else SCALED[network]
    with puma.Simulator(network=profile) as sim:
        for shape in SHAPES[name]:
            costs = sim.run(_composite, name, shape)
            assert len({c.rounds for c in costs}) == 1
            measured = (costs[0].rounds, sum(c.bytes_sent for c in costs))
            assert measured == COMPOSITES[name][1](shape, profile), (name, shape)
