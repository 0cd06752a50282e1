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
from securetorch.protocols.sampling import SamplingSettings, sample
from securetorch.session.context import current

from ..conftest import chi_square_critical

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


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 0}, {"temperature": 100}, {"top_k": 0}, {"top_k": 2.5}, {"top_p": 0}, {"top_p": 1.5}],
)
def test_settings_out_of_range_are_refused(settings) -> None:
    with pytest.raises(ValueError, match="must"):
        SamplingSettings(**settings)
