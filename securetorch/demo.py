"""``securetorch demo``: a secure two-layer MLP on three local parties, against plaintext.

The driver holds the weights (the model owner) and the input (the data owner); the parties
see only shares. The hidden activation is x * x (a secure product) until the nonlinear suite
lands; the demo prints the error against float64 plaintext and the exact cost.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from securetorch.comm.stats import total
from securetorch.runtime.cluster import LocalCluster, private


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """The model: ordinary torch code, run on plaintext or on SharedTensors alike."""
    h = F.linear(x, w1, b1)
    return F.linear(h * h, w2, b2)


def run_demo(batch: int = 32, features: int = 64, hidden: int = 256, classes: int = 10) -> dict[str, float]:
    torch.manual_seed(0)  # the plaintext demo model and data (the protocols use AES-CTR)
    first, second = torch.nn.Linear(features, hidden).double(), torch.nn.Linear(hidden, classes).double()
    x = torch.nn.init.normal_(torch.empty(batch, features, dtype=torch.float64))
    params = [p.detach() for p in (first.weight, first.bias, second.weight, second.bias)]
    print(f"securetorch demo: MLP {features} -> {hidden} -> {classes}, batch {batch}, three local parties")
    started = time.perf_counter()
    with LocalCluster() as cluster:
        print(f"  parties up in {time.perf_counter() - started:.2f} s")
        cluster.reset_stats()
        t0 = time.perf_counter()
        secure = cluster.run(mlp, private(x), *(private(p) for p in params))[0]
        elapsed = time.perf_counter() - t0
        cost = total(cluster.stats())
    plain = mlp(x, *params)
    err = float((secure.double() - plain).abs().max())
    print(f"  max |secure - plaintext| = {err:.2e}   (outputs up to {float(plain.abs().max()):.2f})")
    print(f"  time {elapsed:.3f} s   rounds {cost.rounds}   bytes sent by the parties {cost.bytes_sent:,}")
    print(f"  predicted classes agree: {bool((secure.argmax(1) == plain.argmax(1)).all())}")
    return {"max_abs_error": err, "seconds": elapsed, "rounds": cost.rounds, "bytes": cost.bytes_sent}
