"""Nonlinear op benchmark (issue #3): the op workloads of REFERENCE.md §4.

    python -m benchmarks.nonlinear

Same shapes and distributions as the SPU/CrypTen measurements (seed 0): GeLU on [128,3072]
x ~ N(0, 3^2); softmax over the last dim of [12,128,128] x ~ U(-8, 8); LayerNorm over
[128,768] x ~ N(0, 5^2) (secret weight and bias ~ N(0,1)); exp on [128,3072] ~ U(-14, 0);
reciprocal on [128,3072] ~ U(1, 1000); rsqrt on [128,768] ~ U(0.01, 100).
Seconds: median inside the parties (slowest party); bytes: all parties; error: max abs vs
float64 (rsqrt: relative).
"""

from __future__ import annotations

import torch

import securetorch as puma
from benchmarks.common import emit, measured, summarise

F = torch.nn.functional

# SPU 0.9.5 with PUMA's settings, measured on this machine kind: seconds, bytes, rounds, error.
SPU = {
    "gelu": (4.25, 362e6, 56, 1.8e-2),
    "softmax": (1.88, 136e6, 159, 1.8e-2),
    "layernorm": (0.32, 15.6e6, 76, 2.5e-3),
    "exp": (0.51, 113e6, 16, 8.6e-3),
    "reciprocal": (4.02, 525e6, 54, 2.6e-5),
    "rsqrt": (1.23, 152e6, 49, 1.5e-3),
}


def workloads(gen: torch.Generator) -> dict:
    def u(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    def n(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * std

    return {
        "gelu": (n((128, 3072), 3.0), (), lambda x: F.gelu(x), False),
        "softmax": (u((12, 128, 128), -8, 8), (), lambda x: F.softmax(x, -1), False),
        "layernorm": (n((128, 768), 5.0), (n((768,), 1.0), n((768,), 1.0)), lambda x, w, b: F.layer_norm(x, (768,), w, b), False),
        "exp": (u((128, 3072), -14, 0), (), torch.exp, False),
        "reciprocal": (u((128, 3072), 1, 1000), (), torch.reciprocal, False),
        "rsqrt": (u((128, 768), 0.01, 100), (), torch.rsqrt, True),
    }  # fmt: skip


def secure_op(name: str, x: torch.Tensor, params: tuple):
    """Inside a party: share the workload's input (party 0) and parameters (party 1) and
    return the op to run on them."""
    s = puma.share(x if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    ps = [puma.share(p if puma.rank() == 1 else None, owner=1, dtype=torch.float64) for p in params]
    ops = {
        "gelu": lambda: F.gelu(s),
        "softmax": lambda: F.softmax(s, -1),
        "layernorm": lambda: F.layer_norm(s, (768,), *ps),
        "exp": lambda: torch.exp(s),
        "reciprocal": lambda: torch.reciprocal(s),
        "rsqrt": lambda: torch.rsqrt(s),
    }
    return ops[name]


def _secure(name: str, x: torch.Tensor, params: tuple, repeat: int):
    op = secure_op(name, x, params)
    out, seconds, cost = measured(op, repeat)
    return out.reveal(), seconds, cost


def rows(repeat: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(0)  # benchmark inputs only
    out = []
    with puma.LocalCluster() as cluster:
        for name, (x, params, reference, relative) in workloads(gen).items():
            results = cluster.run(_secure, name, x, params, repeat)
            want = reference(x, *params)
            err = (results[0][0] - want).abs()
            if relative:
                err = err / want.abs()
            row = {"op": name, "shape": list(x.shape), **summarise(results), "max_error": float(err.max())}
            spu_s, spu_b, spu_r, spu_e = SPU[name]
            row["spu"] = {"seconds": spu_s, "bytes": spu_b, "rounds": spu_r, "max_error": spu_e}
            row["ratio_to_spu"] = {
                "seconds": round(row["seconds"] / spu_s, 3),
                "bytes": round(row["bytes"] / spu_b, 3),
                "rounds": round(row["rounds"] / spu_r, 3),
            }
            out.append(row)
    return out


def main() -> None:
    emit("nonlinear", rows())


if __name__ == "__main__":
    main()
