"""Convolutions on secrets (``F.conv2d``, ``F.conv1d``): patches share-wise, one product with
the kernel. Against float64 over strides, padding (numbers and 'same'), dilation and groups,
with a secret or public input; the cost is exactly one truncated product of the output's size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import securetorch as puma
from securetorch.protocols.arithmetic import truncation_cost

CASES = {
    "vit_patches": ((2, 3, 16, 16), (8, 3, 4, 4), {"stride": 4}),
    "strided_padded_dilated_groups": ((1, 4, 9, 7), (6, 2, 3, 3), {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1), "groups": 2}),
    "same": ((1, 3, 8, 8), (5, 3, 3, 3), {"padding": "same"}),
    "depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    "conv1d": ((2, 4, 10), (6, 4, 3), {"stride": 2, "padding": 1}),
    "conv1d_tuples_dilated": ((1, 2, 12), (3, 2, 3), {"stride": (2,), "padding": (2,), "dilation": (2,)}),
    "same_even_kernel_dilated": ((1, 2, 7, 6), (3, 2, 2, 4), {"padding": "same", "dilation": (2, 1)}),
    "unbatched": ((3, 8, 8), (4, 3, 2, 2), {"stride": 2}),
    "unbatched_conv1d": ((4, 9), (2, 4, 3), {}),
}  # fmt: skip


def _conv(x, w, b, kwargs, secret_input: bool):
    xs = puma.share(x if puma.rank() == 0 else None, owner=0) if secret_input else x
    ws = puma.share(w if puma.rank() == 1 else None, owner=1)
    bs = puma.share(b if puma.rank() == 1 else None, owner=1)
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    before = puma.stats()
    out = conv(xs, ws, bs, **kwargs)
    assert out.shares is not None  # the product's truncation is owed until its shares are read
    cost = puma.stats() - before
    return out.reveal(), cost


@pytest.mark.parametrize("secret_input", [True, False], ids=["secret_input", "public_input"])
@pytest.mark.parametrize("case", list(CASES))
def test_convolution_matches_float64_and_costs_one_product(sim, case, secret_input) -> None:
    x_shape, w_shape, kwargs = CASES[case]
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(x_shape, generator=g) * 2, torch.randn(w_shape, generator=g) * 0.3, torch.randn(w_shape[0])
    results = sim.run(_conv, x, w, b, kwargs, secret_input)
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    want = conv(x.double(), w.double(), b.double(), **kwargs)
    got = results[0][0]
    assert got.shape == want.shape
    k = w[0].numel()  # terms per output: each within 2^-18 of its product, one truncation of the sum
    assert float((got - want).abs().max()) <= 2.0**-18 * (k * (x.abs().max() + w.abs().max()) + 2)
    rounds, nbytes = truncation_cost(want.numel(), 18)
    assert sum(c.bytes_sent for _, c in results) == nbytes
    assert {c.rounds for _, c in results} == {rounds}
