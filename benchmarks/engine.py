"""Engine benchmark (issue #2): secure matmul and elementwise mul, the ring matmul kernels, and
the row kernel on a decoded token's products.

    python -m benchmarks.engine

Seconds are measured inside the parties around the operation alone (inputs already
shared; the slowest party counts); bytes are sent by all parties together; the error is
the max abs difference to float64. The ring matmul is timed against a float64 matmul of the
same shape in the same process, on the same torch thread count; the row kernel against
torch's int64 ``mv`` (the native kernel's single-row path) and a float64 ``mv`` of one party's
two products of the same shapes.
"""

from __future__ import annotations

import time

import torch

import securetorch as puma
from benchmarks.common import emit, measured, summarise
from securetorch import ring


def _secure_op(kind: str, a: torch.Tensor, b: torch.Tensor):
    x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    y = puma.share(b if puma.rank() == 1 else None, owner=1, dtype=torch.float64)
    out, seconds, cost = measured(lambda: x @ y if kind == "matmul" else x * y)
    return out.reveal(), seconds, cost


def _best_of(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ring_matmul_rows(threads: int = 1) -> list[dict]:
    torch.set_num_threads(threads)
    a = ring._spread(128 * 768).reshape(128, 768)
    b = ring._spread(768 * 768).reshape(768, 768) * 3
    af, bf = a.double(), b.double()
    t_float = _best_of(lambda: af @ bf)
    rows = []
    for kernel in ("native", "limbs"):
        exact = torch.equal(ring.ring_matmul(a, b, kernel), ring.native_matmul(a, b)) if kernel != "native" else True
        t = _best_of(lambda k=kernel: ring.ring_matmul(a, b, k))
        rows.append(
            {
                "op": f"ring matmul [128,768]x[768,768] ({kernel})",
                "seconds": round(t, 5),
                "float64_matmul_seconds": round(t_float, 5),
                "ratio_to_float64": round(t / t_float, 2),
                "exact": exact,
                "torch_threads": threads,
            }
        )
    rows.append({"op": "ring matmul kernel chosen by auto", "kernel": ring.resolve_kernel("auto")})
    return rows


ROW_PRODUCTS = (
    ("GPT-2 MLP up-projection [1,768]x[768,3072], stored [in, out]", 768, 3072, "rows"),
    ("GPT-2 LM head [1,768]x[768,50257], the tied [vocab, 768] table", 768, 50257, "transposed"),
)


def row_kernel_rows() -> list[dict]:
    """One party's share of a decoded token's product with secret weights, ``matmul_local``'s
    (x_i + x_{i+1}) W_i + x_i W_{i+1}: the row kernel (one pass over both matrices) against
    torch's int64 ``mv`` twice and a float64 ``mv`` twice, single-threaded."""
    torch.set_num_threads(1)
    out = []
    for name, k, n, layout in ROW_PRODUCTS:
        shape = (k, n) if layout == "rows" else (n, k)
        w0, w1 = (ring._spread(k * n).reshape(shape) * m for m in (3, 5))
        if layout == "transposed":
            w0, w1 = w0.t(), w1.t()
        x0, x1 = ring._spread(k).reshape(1, k) * 7, ring._spread(k).reshape(1, k) * 11
        terms = [(x0 + x1, w0), (x0, w1)]
        f0, f1, fx = w0.double(), w1.double(), x0.double()
        exact = torch.equal(ring.row_matmul_sum(terms), ring.native_matmul(*terms[0]) + ring.native_matmul(*terms[1]))
        t_row = _best_of(lambda terms=terms: ring.row_matmul_sum(terms))
        t_mv = _best_of(lambda terms=terms: ring.native_matmul(*terms[0]) + ring.native_matmul(*terms[1]))
        t_float = _best_of(lambda f0=f0, f1=f1, fx=fx: fx @ f0 + fx @ f1)
        out.append({
            "op": f"one row times a weight pair: {name}",
            "row_kernel_seconds": round(t_row, 5),
            "torch_mv_seconds": round(t_mv, 5),
            "float64_mv_seconds": round(t_float, 5),
            "speedup_over_torch_mv": round(t_mv / t_row, 2),
            "exact": exact,
        })  # fmt: skip
    return out


def rows() -> list[dict]:
    gen = torch.Generator().manual_seed(0)  # benchmark inputs only
    out = []
    with puma.LocalCluster() as cluster:
        for kind, shape_a, shape_b in (("matmul", (128, 768), (768, 768)), ("mul", (128, 3072), (128, 3072))):
            a = torch.randn(*shape_a, generator=gen, dtype=torch.float64)
            b = torch.randn(*shape_b, generator=gen, dtype=torch.float64)
            results = cluster.run(_secure_op, kind, a, b)
            ref = a @ b if kind == "matmul" else a * b
            row = {"op": f"secure {kind} {list(shape_a)} x {list(shape_b)}", **summarise(results)}
            row["max_abs_error"] = float((results[0][0] - ref).abs().max())
            out.append(row)
    out.extend(ring_matmul_rows())
    out.extend(row_kernel_rows())
    return out


def main() -> None:
    emit("engine", rows())


if __name__ == "__main__":
    main()
