"""The protocols on a party device (``Simulator(device=...)``): every tensor a protocol makes
lands on the party's device, and gives what the default run gives, at the same bytes and
rounds.

On this CPU-only machine the parties compute on ``"cpu"`` while torch's factories, called
in a party's thread without a device, make ``"meta"`` tensors: mixing one with the party's
tensors fails (or leaves a result with no data), so the run fails at the first factory that
forgets the device, in the protocols and in the tensor layer's handlers alike. On a machine
with an accelerator, ``pytest --securetorch-device cuda tests/protocols`` runs the protocol
suite there.
"""

from __future__ import annotations

import pytest
import torch

import securetorch as puma
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import sampling
from securetorch.protocols.checks import check_one_hot
from securetorch.ring import DEFAULT_FRAC_BITS
from securetorch.session.context import current

from ..conftest import factories_default_to_meta
from .test_workload_costs import COMPOSITES, SCALED, SHAPES

# the workloads' composites, and sampling (secret and seeded uniforms, top-k and top-p)
CASES = {
    **{(name, shape): COMPOSITES[name][0] for name in COMPOSITES for shape in SHAPES[name]},
    ("sample", (2, 40)): lambda c, x: sampling.sample(c, x, sampling.SamplingSettings(0.7, 5, 0.9)),
    ("sample_seeded", (3, 9)): lambda c, x: sampling.sample(c, x, sampling.SamplingSettings(top_p=0.8, seed=3)),
    ("check_one_hot", (2, 7)): lambda c, x: check_one_hot(c, pa.share_from_party(c, _one_hot(c, x), 0)),
}


def _one_hot(ctx, x):
    """Party 0's one-hot rows of x's shape (the others pass None)."""
    rows, vocab = x[0].shape
    return torch.eye(vocab, dtype=torch.int64, device=ctx.device)[:rows] if ctx.rank == 0 else None


def _open(ctx, out):
    """Every pair in a protocol's output, opened (an owed truncation settled first)."""
    if out is None:  # (max without an index)
        return []
    if isinstance(out, pa.Owed):
        out = pa.truncate_additive(ctx, out.additive, out.bits)
    if isinstance(out, tuple) and len(out) == 2 and all(isinstance(s, torch.Tensor) for s in out):
        return [pa.reveal(ctx, out)]
    return [value for part in out for value in _open(ctx, part)]


def _case(name: str, shape: tuple[int, ...]):
    ctx = current()
    g = torch.Generator().manual_seed(len(shape))
    value = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 + 0.5) * 2**ctx.frac_bits
    x = pa.share_from_party(ctx, value.round().long().to(ctx.device) if ctx.rank == 0 else None, 0)
    before = puma.stats()
    opened = _open(ctx, CASES[(name, shape)](ctx, x))
    assert all(t.device == ctx.device for t in opened)
    return [t.cpu() for t in opened], puma.stats() - before


@pytest.mark.parametrize("network", [None, "wan", "lan"])
def test_every_composite_makes_its_tensors_on_the_party_device(network, monkeypatch) -> None:
    profile = None if network is None else SCALED[network]
    with puma.Simulator(network=profile) as sim:
        reference = {case: sim.run(_case, *case)[0] for case in CASES}
    with puma.Simulator(network=profile, device="cpu") as sim, factories_default_to_meta(monkeypatch):
        for case in CASES:
            (want, want_cost), (got, got_cost) = reference[case], sim.run(_case, *case)[0]
            assert (got_cost.rounds, got_cost.bytes_sent) == (want_cost.rounds, want_cost.bytes_sent), case
            if case[0] == "sample":  # a secret uniform: any token, as its index and its one-hot
                index, onehot = got
                assert torch.equal(onehot.argmax(-1), index) and torch.equal(onehot.sum(-1), torch.ones_like(index))
                continue
            # equal up to the last bits a truncation may round either way
            for a, b in zip(got, want, strict=True):
                assert int((a - b).abs().max()) <= 1 << (DEFAULT_FRAC_BITS - 10), case


def test_an_unknown_or_absent_device_is_refused_before_any_party_starts() -> None:
    with pytest.raises(ValueError, match="not available here"):
        puma.Simulator(device="no-such-device")
    with pytest.raises(ValueError, match="holds no data"):
        puma.Simulator(device="meta")
    with pytest.raises(ValueError, match="not available here"):
        puma.LocalCluster(device="cuda:7" if not torch.cuda.is_available() else "no-such-device")


def _block(x, w, bias, public, mask):
    """A small attention-like block written as plain torch code on shared tensors."""
    h = torch.nn.functional.linear(torch.nn.functional.linear(x, w, bias), public)
    h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(h, (h.shape[-1],)))
    scores = torch.where(mask, torch.softmax(h @ h.transpose(0, 1) * 0.25, -1), 0.0)
    assert h.device == current().device  # a SharedTensor poses on its shares' device
    return torch.relu(scores - 0.1).sum(-1), torch.max(h, -1).values


def test_torch_code_on_shared_tensors_makes_its_tensors_on_the_party_device(monkeypatch) -> None:
    """The tensor layer's handlers on parties given a device, with the factories' default on
    meta: as the default run and the plaintext."""
    g = torch.Generator().manual_seed(7)
    x, w, bias = torch.randn(6, 16, generator=g), torch.randn(8, 16, generator=g) / 4, torch.randn(8, generator=g)
    public, mask = torch.randn(8, 8, generator=g) / 3, torch.rand(6, 6, generator=g) > 0.3
    args = (puma.private(x), puma.private(w), bias, public, mask)
    with puma.Simulator() as sim:
        want = sim.run(_block, *args)[0]
        want_cost = sim.stats()[0]
    with puma.Simulator(device="cpu") as sim, factories_default_to_meta(monkeypatch):
        got = sim.run(_block, *args)[0]
        got_cost = sim.stats()[0]
    assert (got_cost.rounds, got_cost.bytes_sent) == (want_cost.rounds, want_cost.bytes_sent)
    h = torch.nn.functional.linear(torch.nn.functional.linear(x, w, bias), public)
    h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(h, (8,)))
    scores = torch.where(mask, torch.softmax(h @ h.T * 0.25, -1), 0.0)
    for secure, plain in zip(got, (torch.relu(scores - 0.1).sum(-1), h.max(-1).values), strict=True):
        assert float((secure - plain).abs().max()) < 2e-3
    for a, b in zip(got, want, strict=True):
        assert float((a - b).abs().max()) < 1e-4
