"""Sampling inside MPC (``protocols.sampling``): over many rows of the same secret logits, the
drawn tokens follow HF's distribution (softmax of logits / T, with HF's top-k and top-p
warpers) by a chi-square test at p = 0.01 (seeded draws: the test's outcome is reproducible,
never a coin flip of CI); unseeded, secret draws pass the same test at p = 1e-6; every draw
is a one-hot whose index is its position; tokens outside the kept set never come; the costs
do not depend on the values."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from securetorch.comm.stats import total
from securetorch.protocols import approx as ap
from securetorch.protocols import comparison as pc
from securetorch.protocols.sampling import (
    SamplingSettings,
    sample,
    top_k_mask,
    top_k_mask_cost,
    top_p_mask,
    top_p_mask_cost,
)
from securetorch.session.context import current

from ..conftest import chi_square_critical, seeded

LOGITS = torch.tensor([2.0, 1.5, 0.3, -0.5, 1.0, -2.0, 0.0, 1.2, -0.2, 0.7])
ROWS = 3000


def _draw(logits: torch.Tensor, settings: SamplingSettings):
    x = puma.share(logits if puma.rank() == 0 else None, owner=0)
    before = puma.stats()
    index, onehot = sample(current(), x.shares, settings)
    cost = puma.stats() - before
    return puma.SharedTensor(index, torch.int64).reveal(), puma.SharedTensor(onehot, torch.int64).reveal(), cost


def hf_distribution(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    scores = (logits / settings.temperature).unsqueeze(0)
    if settings.top_k is not None:
        scores = hf.TopKLogitsWarper(settings.top_k)(None, scores)
    if settings.top_p is not None:
        scores = hf.TopPLogitsWarper(settings.top_p)(None, scores)
    return torch.softmax(scores.double(), dim=-1)[0]


CASES = {
    "t=1.0": SamplingSettings(1.0, seed=1),
    "t=0.7": SamplingSettings(0.7, seed=2),
    "t=1.0, top-k 3": SamplingSettings(1.0, top_k=3, seed=3),
    "t=0.7, top-k 4": SamplingSettings(0.7, top_k=4, seed=4),
    "t=1.0, top-p 0.8": SamplingSettings(1.0, top_p=0.8, seed=5),
    "t=0.7, top-k 5, top-p 0.9": SamplingSettings(0.7, top_k=5, top_p=0.9, seed=6),
    "secret draws, t=0.8, top-k 5": SamplingSettings(0.8, top_k=5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_tokens_follow_hf_distribution(sim, case) -> None:
    settings = CASES[case]
    results = sim.run(_draw, LOGITS.repeat(ROWS, 1), settings)
    index, onehot, _ = results[0]
    assert all(torch.equal(r[0], index) for r in results)
    assert bool(((onehot == 0) | (onehot == 1)).all()) and bool((onehot.sum(-1) == 1).all())
    assert torch.equal(onehot.argmax(-1), index)
    want = hf_distribution(LOGITS, settings)
    counts = torch.bincount(index, minlength=LOGITS.numel()).double()
    assert float(counts[want == 0].sum()) == 0  # nothing outside the kept set
    expected = want[want > 0] * ROWS
    stat = float(((counts[want > 0] - expected) ** 2 / expected).sum())
    z = 2.326 if settings.seed is not None else 4.753  # p = 0.01; p = 1e-6 for draws no one can repeat
    assert stat < chi_square_critical(int((want > 0).sum()) - 1, z)


def test_a_seed_repeats_the_draws_and_secret_draws_differ(sim) -> None:
    logits = LOGITS.repeat(200, 1)
    seeded = [sim.run(_draw, logits, SamplingSettings(seed=9))[0][0] for _ in range(2)]
    secret = [sim.run(_draw, logits, SamplingSettings())[0][0] for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    assert not torch.equal(secret[0], secret[1])  # 200 draws alike by chance: below 1e-60


def test_the_costs_are_exact_and_grow_with_what_is_asked(sim) -> None:
    costs = {}
    for name, settings in [("plain", SamplingSettings()), ("top_k", SamplingSettings(top_k=3)),
                           ("top_p", SamplingSettings(top_p=0.8))]:  # fmt: skip
        results = sim.run(_draw, LOGITS.repeat(4, 1), settings)
        assert len({r[2].rounds for r in results}) == 1
        costs[name] = (sum(r[2].bytes_sent for r in results), results[0][2].rounds)
    again = sim.run(_draw, torch.randn(4, 10), SamplingSettings())  # shapes decide the cost, not values
    assert (sum(r[2].bytes_sent for r in again), again[0][2].rounds) == costs["plain"]
    assert costs["plain"][1] < costs["top_k"][1] and costs["plain"][1] < costs["top_p"][1]


F = 18


def _masks(y: torch.Tensor, q: torch.Tensor, k: int, p: float):
    ctx = current()
    ys = puma.share(y if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    qs = puma.share(q if puma.rank() == 1 else None, owner=1, dtype=torch.float64)
    before = puma.stats()
    kept_k = top_k_mask(ctx, ys.shares, k)
    middle = puma.stats()
    kept_p = top_p_mask(ctx, qs.shares, p)
    after = puma.stats()
    reveal = [puma.SharedTensor(m, torch.int64).reveal() for m in (kept_k, kept_p)]
    return reveal[0], reveal[1], middle - before, after - middle


def reference_top_k(y: torch.Tensor, k: int) -> torch.Tensor:
    """y_j >= t for the largest multiple t of 2^-8 in [-2^6, 0] with #{y_j >= t} >= k, on
    the fixed-point values (logits more than 2^6 below the max are never kept)."""
    yi = puma.ring.encode(y, F)
    step, low = 1 << (F - 8), -(1 << (F + 6))
    kth = yi.sort(-1, descending=True).values[:, k - 1 : k]
    t = torch.clamp(torch.div(kth - low, step, rounding_mode="floor") * step + low, min=low)
    return (yi >= t).long()


def reference_top_p(q: torch.Tensor, p: float) -> torch.Tensor:
    """q_j >= t for the largest multiple t of 2^-14 in [0, 1] whose kept mass reaches p."""
    qi = puma.ring.encode(q, F)
    step, need = 1 << (F - 14), round(p * (1 << F))
    ordered = qi.sort(-1, descending=True).values
    reach = (ordered.clamp(min=0).cumsum(-1) >= need).long().argmax(-1, keepdim=True)  # first index reaching p
    value = ordered.gather(-1, reach)
    t = torch.clamp(torch.div(value, step, rounding_mode="floor") * step, min=0, max=1 << F)
    reached = ordered.clamp(min=0).sum(-1, keepdim=True) >= need
    return (qi >= torch.where(reached, t, torch.zeros_like(t))).long()


@pytest.mark.parametrize(("k", "p"), [(1, 0.5), (5, 0.9), (37, 0.999), (300, 1e-4)])
def test_top_k_and_top_p_keep_what_their_thresholds_define(sim, k, p) -> None:
    """The kept sets equal the plaintext definition exactly, on rows with ties at the k-th
    logit, logits far below the max (never kept), a certain token, exact threshold values and
    a probability an approximation rounded below 0; the costs equal the cost functions."""
    vocab = 300
    g = seeded(k)
    y = torch.randn(5, vocab, generator=g, dtype=torch.float64) * 4
    y[1, :40] = 30.0  # 40 ties at the top
    y[2, 10:] = -100.0  # far below: only 10 candidates
    y[3] = torch.round(y[3] * 256) / 256  # values on the threshold grid
    y[4, ::3] = -(2.0**14)
    y = y - y.max(-1, keepdim=True).values
    q = torch.softmax(torch.randn(5, vocab, generator=g, dtype=torch.float64) * 3, -1)
    q[1] = 0.0
    q[1, 7] = 1.0  # a certain token
    q[2] = torch.round(q[2] * 2**14) / 2**14  # probabilities on the threshold grid
    q[3, 0] = -(2.0**-F)  # rounded below zero: never kept
    q[4] = 1.0 / vocab  # all tied
    results = sim.run(_masks, y, q, k, p)
    kept_k, kept_p = results[0][:2]
    assert torch.equal(kept_k, reference_top_k(y, k))
    assert torch.equal(kept_p, reference_top_p(q, p))
    assert int(kept_p[3, 0]) == 0
    assert bool((kept_k.sum(-1) >= torch.clamp((y > -64).sum(-1), max=k)).all())
    for index, fn in ((2, lambda: top_k_mask_cost(5, vocab, F, 44)), (3, lambda: top_p_mask_cost(5, vocab, F))):
        measured = total([r[index] for r in results])
        assert (measured.rounds, measured.bytes_sent) == fn()


def test_a_top_k_threshold_bit_costs_a_few_bits_per_logit() -> None:
    """At GPT-2's vocabulary each of the 15 threshold bits of a top-k moves (m + 10)/8 bytes
    per logit (two ANDs, e and a count share of m = 17 bits) beyond the one bit decomposition
    and injection, plus a comparison per row; rounds: the decomposition, 15 levels of an
    AND, a bit count, a comparison of the count and an AND, and the injection."""
    vocab = 50257
    rounds, nbytes = top_k_mask_cost(1, vocab, F, 44)
    fixed = ap.bit_decompose_cost(vocab, 44)[1] + pc.bit_to_arith_cost(vocab)[1]
    assert abs((nbytes - fixed) / (15 * vocab) - 27 / 8) < 0.01
    assert rounds == 8 + 15 * (1 + 2 + pc.msb_cost(1, 17)[0] + 1) + 1


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 0}, {"temperature": 100}, {"top_k": 0}, {"top_k": 2.5}, {"top_p": 0}, {"top_p": 1.5}],
)
def test_settings_out_of_range_are_refused(settings) -> None:
    with pytest.raises(ValueError, match="must"):
        SamplingSettings(**settings)
