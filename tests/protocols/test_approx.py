"""Fixed-point approximations against float64 over their stated input ranges.

Stated bounds (f = 18), each with its measured value in docs/protocols.md:
exp on [-14, 0] <= 1e-3; reciprocal on [1, 1000] <= 2e-5; rsqrt on [0.01, 100] relative
<= 1e-3; GeLU (both forms) <= 5e-3 everywhere; SiLU <= 3e-3; sigmoid <= 1e-3; tanh <= 2e-3;
softmax <= 2e-3; LayerNorm/RMSNorm <= 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch

import securetorch as puma
from securetorch.comm.profile import PRESETS, cheapest
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.session.context import current

from ..conftest import seeded

F = torch.nn.functional


def secret(value: torch.Tensor, owner: int = 0) -> puma.SharedTensor:
    return puma.share(value if puma.rank() == owner else None, owner=owner, dtype=torch.float64)


CASES = {
    # name: (secure op, plaintext op, inputs, bound, relative?)
    "exp": (torch.exp, torch.exp, torch.cat([torch.linspace(-14, 0, 4001), torch.tensor([-14.0, -1e-6, 0.0])]), 1e-5, False),
    "reciprocal": (torch.reciprocal, torch.reciprocal, torch.cat([torch.logspace(0, 3, 4001), torch.tensor([1.0, 999.99, 1000.0, 2.0, 512.0])]), 2e-5, False),
    "rsqrt": (torch.rsqrt, torch.rsqrt, torch.cat([torch.logspace(-2, 2, 4001), torch.tensor([0.01, 100.0, 0.25, 1.0])]), 1e-3, True),
    "sqrt": (torch.sqrt, torch.sqrt, torch.logspace(-2, 3, 2001), 1e-3, True),
    "gelu": (F.gelu, F.gelu, torch.cat([torch.linspace(-8, 8, 4001), torch.tensor([-4.0, 4.0, -300.0, 300.0, 0.0])]), 5e-3, False),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), torch.cat([torch.linspace(-8, 8, 4001), torch.tensor([-500.0, 500.0])]), 5e-3, False),
    "silu": (F.silu, F.silu, torch.cat([torch.linspace(-16, 16, 4001), torch.tensor([-8.0, 8.0, -1000.0, 1000.0])]), 3e-3, False),
    "sigmoid": (torch.sigmoid, torch.sigmoid, torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([-1e4, 1e4, 0.0])]), 1e-3, False),
    "tanh": (torch.tanh, torch.tanh, torch.cat([torch.linspace(-10, 10, 4001), torch.tensor([-4.0, 4.0, -1e3, 1e3])]), 2e-3, False),
}  # fmt: skip


def _apply(name: str, x: torch.Tensor) -> torch.Tensor:
    return CASES[name][0](secret(x)).reveal()


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_matches_float64_over_its_range(sim, name) -> None:
    _, plain, inputs, bound, relative = CASES[name]
    x = inputs.double()
    got = sim.run(_apply, name, x)[0]
    want = plain(x)
    err = (got - want).abs()
    if relative:
        err = err / want.abs()
    assert float(err.max()) <= bound, (name, float(err.max()), float(x[err.argmax()]))


@pytest.mark.parametrize("n", [40, 300, 5000])
def test_reciprocal_and_rsqrt_on_both_normalisation_paths(sim, n) -> None:
    """Small tensors find the highest bit by thresholds, large ones by A2B + prefix AND; the
    smallest (up to ``LOOKUP_ELEMENTS`` without a network) read the normalised value's
    function from dealt tables, the others evaluate a polynomial."""
    assert (n <= ap.LOOKUP_ELEMENTS) == (n == 40)
    x = torch.logspace(-2, 3, n, dtype=torch.float64)

    def fn(v):
        s = secret(v)
        return torch.reciprocal(s).reveal(), torch.rsqrt(s).reveal()

    recip, rs = sim.run(fn, x)[0]
    # within 2e-5 plus what encoding x (to 2^-19) does to 1/x: 2^-19 / x^2 (x down to 0.01)
    assert bool(((recip - 1 / x).abs() <= 2e-5 + 1.5 * 2.0**-19 / x**2).all())
    # within 2e-5 relative, plus what encoding x does to x^-1/2 (2^-20 / x relative) and
    # the output's own rounding (2^-18 absolute)
    assert bool(((rs - x.rsqrt()).abs() <= x.rsqrt() * (2e-5 + 1.5 * 2.0**-20 / x) + 2.0**-17).all())


def test_division_by_a_secret_and_powers(sim) -> None:
    g = seeded(1)
    a = torch.randn(50, generator=g, dtype=torch.float64) * 10
    b = torch.rand(50, generator=g, dtype=torch.float64) * 50 + 1

    def fn(a, b):
        x, y = secret(a), secret(b, owner=1)
        return {
            "div": (x / y).reveal(),
            "rdiv": (3.0 / y).reveal(),
            "pow2": (x**2).reveal(),
            "pow3": torch.pow(x, 3).reveal(),
            "pow_half": y.pow(0.5).reveal(),
            "pow_neg_half": (y**-0.5).reveal(),
            "pow_neg_one": (y**-1).reveal(),
        }

    got = sim.run(fn, a, b)[0]
    want = {
        "div": a / b,
        "rdiv": 3.0 / b,
        "pow2": a**2,
        "pow3": a**3,
        "pow_half": b.sqrt(),
        "pow_neg_half": b.rsqrt(),
        "pow_neg_one": 1 / b,
    }
    for name, expected in want.items():
        rel = float(((got[name] - expected).abs() / expected.abs().clamp(min=1)).max())
        assert rel <= 1e-3, (name, rel)


def softmax_case(x, mask):
    s = secret(x)
    return {
        "last": F.softmax(s, dim=-1).reveal(),
        "dim1": torch.softmax(s, 1).reveal(),
        "method_dtype": s.softmax(-1, dtype=torch.float32).reveal(),
        "masked": F.softmax(s + mask, dim=-1).reveal(),
    }


def test_softmax_with_dims_dtype_and_hf_masks(sim) -> None:
    g = seeded(2)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 16 - 8
    causal = torch.full((16, 16), torch.finfo(torch.float32).min, dtype=torch.float64).triu(1)
    padding = torch.zeros(16, dtype=torch.float64)
    padding[-3:] = -math.inf
    mask = causal + padding
    got = sim.run(softmax_case, x, mask)[0]
    assert float((got["last"] - torch.softmax(x, -1)).abs().max()) <= 2e-3
    assert float((got["dim1"] - torch.softmax(x, 1)).abs().max()) <= 2e-3
    assert got["method_dtype"].dtype == torch.float32
    want = torch.softmax(x + mask, -1)
    assert float((got["masked"] - want).abs().max()) <= 2e-3
    assert bool((got["masked"][..., mask.isinf() | (mask < -1e30)] == 0).all())  # masked out exactly
    assert float((got["masked"].sum(-1) - 1).abs().max()) <= 2e-3


def test_softmax_rows_with_large_spread(sim) -> None:
    """Logits far below the row max (clipped at -14) and a wide range of values."""
    x = torch.tensor([[0.0, -14.5, -100.0, 5.0, 5.0], [1000.0, 990.0, 999.0, -1000.0, 0.0]], dtype=torch.float64)
    got = sim.run(lambda v: F.softmax(secret(v), -1).reveal(), x)[0]
    assert float((got - torch.softmax(x, -1)).abs().max()) <= 2e-3


def _long_rows() -> dict[str, tuple[torch.Tensor, float]]:
    g = seeded(5)
    peaked = torch.randn(8, 128, generator=g, dtype=torch.float64) * 3
    spiky = torch.randn(4, 2048, generator=g, dtype=torch.float64) * 2
    spiky[:, :3] += 10  # three keys far above 2045 others, which still hold a third of the mass
    return {"peaked": (peaked, 5e-5), "spiky": (spiky, 5e-4)}


@pytest.mark.parametrize("name", ["peaked", "spiky"])
def test_softmax_on_long_rows_keeps_its_row_sums(sim, name) -> None:
    """exp's error must not add up over a row: with (1 + y + y^2/2)^32, whose errors all lie
    above e^x, these rows erred by 2.8e-3 and 9.8e-3."""
    x, bound = _long_rows()[name]
    got = sim.run(lambda v: F.softmax(secret(v), -1).reveal(), x)[0]
    assert float((got - torch.softmax(x, -1)).abs().max()) <= bound


@pytest.mark.parametrize("frac_bits", [20, 22, 24])
def test_exp_at_more_fractional_bits(frac_bits) -> None:
    """More fractional bits leave fewer for q's coefficients (the cubic and quartic terms'
    products must stay below 2^62) and shrink the range at the top; exp stays as accurate on
    [-32, (62 - 2(f + 5)) ln 2]."""
    top = (62 - 2 * (frac_bits + ap.EXP_SQUARINGS)) * math.log(2)
    x = torch.linspace(-32, top, 2001, dtype=torch.float64)
    with puma.Simulator(frac_bits=frac_bits, compare_bits=frac_bits + 26) as sim:
        got = sim.run(lambda v: torch.exp(secret(v)).reveal(), x)[0]
    want = x.exp()
    assert float((got - want)[x <= 0].abs().max()) <= 1e-4
    assert float(((got - want) / want)[x > -8].abs().max()) <= 3e-2


def test_exp_refuses_a_setting_too_fine_for_its_coefficients() -> None:
    with pytest.raises(ValueError, match="frac_bits <= 24"):
        ap.exp_cost(10, frac_bits=25)


def norms(x, w, b):
    s, ws, bs = secret(x), secret(w, 1), secret(b, 2)
    return {
        "secret_affine": F.layer_norm(s, (x.shape[-1],), ws, bs, 1e-5).reveal(),
        "public_affine": F.layer_norm(s, (x.shape[-1],), w, b, 1e-12).reveal(),
        "no_affine": F.layer_norm(s, (x.shape[-1],)).reveal(),
        "two_dims": F.layer_norm(s, tuple(x.shape[-2:])).reveal(),
        "rms": F.rms_norm(s, (x.shape[-1],), ws, 1e-6).reveal(),
        "module": torch.nn.LayerNorm(x.shape[-1], dtype=torch.float64)(s).reveal(),
    }


def plain_norms(x, w, b):
    """``norms`` in float64."""
    return {
        "secret_affine": F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
        "public_affine": F.layer_norm(x, (x.shape[-1],), w, b, 1e-12),
        "no_affine": F.layer_norm(x, (x.shape[-1],)),
        "two_dims": F.layer_norm(x, tuple(x.shape[-2:])),
        "rms": F.rms_norm(x, (x.shape[-1],), w, 1e-6),
        "module": F.layer_norm(x, (x.shape[-1],)),
    }


def test_layer_norm_and_rms_norm(sim) -> None:
    g = seeded(3)
    x = torch.randn(4, 6, 96, generator=g, dtype=torch.float64) * 5 + 2
    w = torch.randn(96, generator=g, dtype=torch.float64)
    b = torch.randn(96, generator=g, dtype=torch.float64)
    got = sim.run(norms, x, w, b)[0]
    for name, expected in plain_norms(x, w, b).items():
        assert float((got[name] - expected).abs().max()) <= 1e-3, name


def _norm_costs(x: torch.Tensor, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    ctx = current()
    shares = secret(x).shares
    weight = secret(w, 1).shares
    before = puma.stats()
    ap.layer_norm_last_dims(ctx, shares, 1, weight, None, 1e-5)
    spent = puma.stats() - before
    return norms(x, w, torch.zeros_like(w)), (spent.rounds, spent.bytes_sent)


# l + f = 62: the exact sum of squares (one resharing); 66: above rsqrt's 62 bits, so the
# squares are truncated first
@pytest.mark.parametrize("compare_bits", [DEFAULT_COMPARE_BITS, 48])
def test_layer_norm_on_both_ways_to_its_sum_of_squares(compare_bits) -> None:
    g = seeded(5)
    x = torch.randn(3, 4, 96, generator=g, dtype=torch.float64) * 5 + 2
    x[0, 0] = torch.linspace(-400.0, 400.0, 96, dtype=torch.float64)  # sum of squares 2^22.3 (range: 2^23)
    x[0, 1] = 3 + torch.randn(96, generator=g, dtype=torch.float64) * 0.1  # a small variance
    w = torch.randn(96, generator=g, dtype=torch.float64)
    with puma.Simulator(compare_bits=compare_bits) as sim:
        results = sim.run(_norm_costs, x, w)
    got, _ = results[0]
    for name, expected in plain_norms(x, w, torch.zeros_like(w)).items():
        assert float((got[name] - expected).abs().max()) <= 1e-3, name
    rounds = {cost[0] for _, cost in results}
    measured = (rounds.pop(), sum(cost[1] for _, cost in results))
    assert not rounds
    assert measured == ap.layer_norm_cost(12, 96, True, False, DEFAULT_FRAC_BITS, compare_bits)


def test_hf_style_rmsnorm_code_runs_on_shares(sim) -> None:
    """LLaMA's RMSNorm forward (pow, mean, rsqrt, casts) runs unmodified."""
    x = torch.randn(2, 5, 32, generator=seeded(4), dtype=torch.float64)

    def llama_rmsnorm(hidden_states, eps=1e-6):
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return hidden_states * torch.rsqrt(variance + eps)

    got = sim.run(lambda v: llama_rmsnorm(secret(v)).reveal(), x)[0]
    assert float((got.double() - llama_rmsnorm(x).double()).abs().max()) <= 1e-3


def test_exp_by_lookup_over_the_softmax_range(sim) -> None:
    """``exp_lookup`` on [-15.96, 0] (x's bits down to 2^-6 read dealt tables, one linear
    correction): relative error 6.2e-5 of the fit, plus the output's rounding; 4 rounds."""
    x = torch.cat([torch.linspace(-15.96, 0, 4001, dtype=torch.float64), torch.tensor([-(2.0**-18), 0.0])])

    def fn(v):
        ctx = current()
        s = secret(v)
        before = puma.stats()
        out = ap.exp_lookup(ctx, s.shares)
        cost = puma.stats() - before
        return puma.SharedTensor(out, torch.float64).reveal(), cost

    results = sim.run(fn, x)
    got, want = results[0][0], x.exp()
    assert bool(((got - want).abs() <= want * 7e-5 + 2.0**-17).all())
    assert (results[0][1].rounds, sum(r[1].bytes_sent for r in results)) == ap.exp_lookup_cost(x.numel())


@pytest.mark.parametrize("shape", [(12, 1, 33), (2, 16, 16)])
def test_softmax_with_the_wan_choices_matches_float64(shape) -> None:
    """Under wan the softmax takes the round-saving variants (the max by counted wins, exp by
    lookup beside its clip, the reciprocal by lookup with the exponentials folded in): the
    same error bound as on loopback, at the cost its function gives."""
    wan = PRESETS["wan"]
    n = math.prod(shape)
    assert ap._softmax_exp_variant(n, 18, wan) == "lookup"
    scores = torch.randn(shape, generator=seeded(21), dtype=torch.float64) * 6
    scores[..., 0] = -(2.0**20)  # a masked position

    def fn(v):
        x = secret(v)
        before = puma.stats()
        out = torch.softmax(x, -1)
        _ = out.shares  # the whole softmax: its owed division runs here
        cost = puma.stats() - before
        return out.reveal(), cost

    with puma.Simulator(network=wan, play_network=False) as sim:
        results = sim.run(fn, scores)
    assert float((results[0][0] - torch.softmax(scores, -1)).abs().max()) <= 1e-3
    assert (results[0][1].rounds, sum(r[1].bytes_sent for r in results)) == ap.softmax_cost(shape, network=wan)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_by_its_even_form_where_rounds_are_dear(approximate) -> None:
    """Under wan GeLU takes its even form (x/2 + a polynomial in x^2 beside the comparisons
    [x > 4], [x < -4]): 3 rounds fewer, the same error bound as the tail form, exact on huge
    inputs, at its cost function's cost. On loopback: the even form for small tensors, the
    tail form (less local work) for large ones."""
    wan = PRESETS["wan"]
    name = "gelu_tanh" if approximate == "tanh" else "gelu"
    assert ap._gelu_variant(name, 3072, 18, 44, wan) == "even" and ap._gelu_variant(name, 3072, 18, 44, None) == "even"
    assert ap._gelu_variant(name, 32 * 3072, 18, 44, None) == "tail"
    variants = ap._gelu_variants(name, 3072, 18, 44, wan)
    assert (
        variants["even"][0] + 3 == variants["tail"][0]
        and ap.activation_cost(name, 3072, network=wan) == variants["even"]
    )
    x = torch.cat([torch.linspace(-8, 8, 3001, dtype=torch.float64), torch.tensor([-3e4, -1e3, 1e3, 3e4, 0.0])])

    def fn(v):
        s = secret(v)
        before = puma.stats()
        out = torch.nn.functional.gelu(s, approximate=approximate)
        cost = puma.stats() - before
        return out.reveal(), cost

    with puma.Simulator(network=wan, play_network=False) as sim:
        results = sim.run(fn, x)
    assert float((results[0][0] - torch.nn.functional.gelu(x, approximate=approximate)).abs().max()) <= 2e-4
    measured = (results[0][1].rounds, sum(r[1].bytes_sent for r in results))
    assert measured == ap.activation_cost(name, x.numel(), network=wan)


def test_the_policy_divides_a_softmax_after_its_product_with_v_where_that_is_faster() -> None:
    """BERT-base at 128 tokens (V owed, rows of 128 keys, 64 wide): dividing after the
    product saves rounds and bytes on every profile, and beside it (the reciprocal's factors
    apart) two more rounds for more bytes, which wan takes. A decode step (V read from the
    cache, rows of 33 keys): after costs the same rounds as first and more bytes; beside
    saves rounds for a few bytes more. The choice is the least time, and both orders after
    the product give the same result."""
    for network in (None, *PRESETS.values()):
        v = pa.truncation_cost(128 * 768, 18, network)
        bert = ap._division_variants(1536, 128, 12 * 128 * 64, v, 18, 44, network)
        assert bert["after"][0] < bert["first"][0] and bert["after"][1] < bert["first"][1]
        assert bert["beside"][0] < bert["after"][0] and bert["beside"][1] > bert["after"][1]
        decode = ap._division_variants(12, 33, 12 * 64, (0, 0), 18, 44, network)
        assert decode["after"][0] == decode["first"][0] and decode["after"][1] > decode["first"][1]
        assert decode["beside"][0] < decode["first"][0]
        for variants, shape in ((bert, (1536, 128, 12 * 128 * 64, v)), (decode, (12, 33, 12 * 64, (0, 0)))):
            fastest = cheapest(network, variants, min(variants, key=lambda name: variants[name]))
            assert ap.division_order(*shape, 18, 44, network) == fastest
    wan = PRESETS["wan"]
    assert ap.division_order(1536, 128, 12 * 128 * 64, pa.truncation_cost(128 * 768, 18, wan), 18, 44, wan) == "beside"
    lan = PRESETS["lan"]
    assert ap.division_order(1536, 128, 12 * 128 * 64, pa.truncation_cost(128 * 768, 18, lan), 18, 44, lan) == "after"


def _both_orders(scores: torch.Tensor, value: torch.Tensor) -> list[torch.Tensor]:
    ctx = current()
    s, v = secret(scores).shares, secret(value).shares
    out = []
    for divide in (ap.divide_rows_after, ap.divide_rows_beside):
        e, total = ap.softmax_numerators(ctx, s, pc.max_last_dim(ctx, s, with_index=False)[0])
        owed = divide(ctx, total, lambda e=e: pa.truncate_additive(ctx, pa.matmul_local(e, v), ctx.frac_bits))
        out.append(puma.SharedTensor.owing(owed.additive, owed.bits, torch.float64).reveal())
    return out


def test_dividing_after_and_beside_the_product_agree(sim) -> None:
    g = seeded(8)
    scores = torch.randn(3, 4, 9, generator=g, dtype=torch.float64) * 5
    value = torch.randn(3, 9, 5, generator=g, dtype=torch.float64) * 50
    after, beside = sim.run(_both_orders, scores, value)[0]
    want = torch.softmax(scores, -1) @ value
    bound = 2e-3 * float(value.abs().max())  # the probabilities' error, times V
    assert float((after - want).abs().max()) <= bound
    assert float((beside - want).abs().max()) <= bound
    assert float((beside - after).abs().max()) <= bound


def _by_lookup(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
    ctx = current()
    shares = secret(x).shares
    out = {}
    for name in ("gelu", "gelu_tanh", "silu", "sigmoid", "tanh"):
        before = puma.stats()
        y = ap.activation_by_lookup(ctx, shares, name)
        spent = puma.stats() - before
        out[name] = (puma.SharedTensor(y, torch.float64).reveal(), (spent.rounds, spent.bytes_sent))
    return out


def test_activations_by_lookup_match_float64_and_their_cost() -> None:
    """The lookup form over [-T, T) and beyond, at the range's edges (where the truncation
    may read one entry up) and far out, within 2e-4; beyond T, as the tail forms, sigmoid
    leaves 1 by 3.4e-4 and SiLU leaves x by 2.7e-3."""
    g = seeded(9)
    edges = torch.tensor([-8.0, -8.0 + 2**-18, -7.99, 7.98, 8.0 - 2**-7, 8.0 - 2**-18, 8.0, 8.01, -1e4, 1e4, 0.0])
    x = torch.cat([torch.linspace(-9, 9, 700, dtype=torch.float64), torch.randn(300, generator=g) * 3, edges]).double()
    with puma.Simulator(network="wan", play_network=False) as sim:
        results = sim.run(_by_lookup, x)
    f = torch.nn.functional
    want = {
        "gelu": f.gelu(x),
        "gelu_tanh": f.gelu(x, approximate="tanh"),
        "silu": f.silu(x),
        "sigmoid": torch.sigmoid(x),
        "tanh": torch.tanh(x),
    }
    for name, expected in want.items():
        got, _ = results[0][name]
        bound = {"silu": 3e-3, "sigmoid": 4e-4}.get(name, 2e-4)
        assert float((got - expected).abs().max()) <= bound, name
        rounds = {r[name][1][0] for r in results}
        assert len(rounds) == 1
        measured = (rounds.pop(), sum(r[name][1][1] for r in results))
        assert measured == ap.activation_lookup_cost(
            name, x.numel(), DEFAULT_FRAC_BITS, DEFAULT_COMPARE_BITS, PRESETS["wan"]
        )
