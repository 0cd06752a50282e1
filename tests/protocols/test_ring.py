"""Ring Z_2^64 kernels: wrap-around, fixed-point encoding, exact ring matmul."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securetorch import ring

from ..conftest import seeded

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def full_range(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=seeded(seed), dtype=torch.int64)


def python_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: Python integers, reduced mod 2^64 to signed."""
    rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
    al, bl = a.tolist(), b.tolist()
    out = []
    for i in range(rows):
        row = []
        for j in range(cols):
            v = sum(al[i][k] * bl[k][j] for k in range(inner)) % 2**64
            row.append(v - 2**64 if v >= 2**63 else v)
        out.append(row)
    return torch.tensor(out, dtype=torch.int64)


def test_int64_arithmetic_wraps_mod_2_64() -> None:
    big = torch.tensor([2**62, -(2**63), 2**63 - 1])
    assert torch.equal(big * 4, torch.tensor([0, 0, -4]))
    assert torch.equal(big + big, torch.tensor([-(2**63), 0, -2]))


@given(st.floats(min_value=-(2.0**40), max_value=2.0**40, allow_nan=False))
def test_encode_decode_round_trip(x: float) -> None:
    enc = ring.encode(torch.tensor([x], dtype=torch.float64), 18)
    assert enc.dtype == torch.int64
    assert abs(ring.decode(enc, 18).item() - x) <= 2.0**-19


def test_encode_rejects_out_of_range_and_nonfinite() -> None:
    with pytest.raises(ValueError, match="fixed-point range"):
        ring.encode(torch.tensor([2.0**46]), 18)
    with pytest.raises(ValueError, match="finite"):
        ring.encode(torch.tensor([float("nan")]), 18)


@given(INT64, st.integers(min_value=1, max_value=63))
def test_logical_shift_right(x: int, bits: int) -> None:
    got = ring.logical_shift_right(torch.tensor([x]), bits).item()
    assert got == (x % 2**64) >> bits


@pytest.mark.parametrize("kernel", ["native", "limbs"])
def test_ring_matmul_matches_python_integers(kernel: str) -> None:
    a, b = full_range((7, 33), 1), full_range((33, 5), 2)
    assert torch.equal(ring.ring_matmul(a, b, kernel), python_matmul(a, b))


@pytest.mark.parametrize("inner", [1, 1023, 1024, 1025, 2049, 5000])
def test_limb_matmul_exact_for_long_inner_dimensions(inner: int) -> None:
    a, b = full_range((3, inner), inner), full_range((inner, 4), inner + 1)
    assert torch.equal(ring.limb_matmul(a, b), python_matmul(a, b))


def test_limb_matmul_extreme_values() -> None:
    # Every limb at its bound: the worst case for the float64 partial sums.
    extremes = torch.tensor([-(2**63), 2**63 - 1, 2**62 + 2**43 + 2**21, -(2**21) - 2**43 - 2**62], dtype=torch.int64)
    a = extremes.repeat(1024 * 2 // 4).reshape(2, 1024)
    b = extremes.flip(0).repeat(1024 * 3 // 4).reshape(1024, 3)
    assert torch.equal(ring.limb_matmul(a, b), python_matmul(a, b))


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((128, 768), (768, 768)), ((2, 3, 16, 8), (2, 3, 8, 5)), ((4, 16, 8), (8, 5)), ((8,), (8, 3)), ((4, 8), (8,))],
)
def test_limb_matmul_equals_native_bit_for_bit(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> None:
    a, b = full_range(shape_a, 3), full_range(shape_b, 4)
    assert torch.equal(ring.limb_matmul(a, b), ring.native_matmul(a, b))


def test_auto_kernel_resolves_to_a_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ring.resolve_kernel("auto") in ("native", "limbs")
    monkeypatch.setenv("SECURETORCH_MATMUL_KERNEL", "limbs")
    assert ring.resolve_kernel() == "limbs"
    with pytest.raises(ValueError, match="unknown ring matmul kernel"):
        ring.resolve_kernel("fast")  # type: ignore[arg-type]


def test_calibration_keeps_the_faster_kernel_though_one_timing_was_descheduled() -> None:
    """A kernel three times faster than the other wins, even when one of its timed runs is
    ten times slower (its process descheduled while the cluster's parties all start)."""
    calls = {"fast": 0}

    def fast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["fast"] += 1
        time.sleep(0.02 if calls["fast"] == 2 else 0.002)  # its first timed run: preempted
        return a @ b

    def slow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        time.sleep(0.006)
        return a @ b

    a, b = full_range((2, 3), 1), full_range((3, 2), 2)
    assert ring.fastest_kernel({"fast": fast, "slow": slow}, a, b) == "fast"
    assert ring.fastest_kernel({"slow": slow, "fast": fast}, a, b) == "fast"


EXTREMES = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 1, 2**62, -(2**62) - 1], dtype=torch.int64)


def stored(b: torch.Tensor, layout: str) -> torch.Tensor:
    """b as used, stored row-major ("rows") or as the transpose of a row-major tensor
    ("transposed": an [out, in] weight)."""
    return b.contiguous() if layout == "rows" else b.t().contiguous().t()


@pytest.mark.parametrize("layout", ["rows", "transposed"])
@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize(
    ("row_shape", "n"), [((37,), 5), ((1, 37), 1), ((1, 1, 37), 9), ((1, 16), 8), ((1,), 3), ((1, 0), 4)]
)
def test_row_kernel_matches_python_integers(layout: str, terms: int, row_shape: tuple[int, ...], n: int) -> None:
    """The compiled row kernel: one row times one or two matrices in either stored layout,
    full-range values with the extremes in both operands, exact mod 2^64 and shaped as
    torch.matmul's result; the loops' blocks of rows with a tail (k = 37; n = 5, 9), without
    one (k = 16, n = 8) and a tail alone (k = 1; n = 1, 3)."""
    k = row_shape[-1]
    pairs = []
    for t in range(terms):
        a = full_range(row_shape, 10 + t)
        b = full_range((k, n), 20 + t)
        a.view(-1)[: min(k, len(EXTREMES))] = EXTREMES[:k]
        b.view(-1)[: min(k * n, len(EXTREMES))] = EXTREMES.flip(0)[: k * n]
        pairs.append((a, stored(b, layout)))
    assert ring.is_row_product(pairs)
    expected = sum(python_matmul(a.reshape(1, k), b) for a, b in pairs).reshape(*row_shape[:-1], n)
    got = ring.row_matmul_sum(pairs)
    assert got.shape == torch.matmul(*pairs[0]).shape
    assert torch.equal(got, expected)
    assert torch.equal(ring.ring_matmul_sum(pairs), expected)  # auto takes the row kernel
    for kernel in ("native", "limbs"):
        assert torch.equal(ring.ring_matmul_sum(pairs, kernel), expected)


def test_row_kernel_reads_a_strided_row() -> None:
    a = full_range((3, 40), 1)[1, ::2]  # 20 elements, stride 2
    b = full_range((20, 6), 2)
    assert torch.equal(ring.row_matmul_sum([(a, b)]), python_matmul(a.reshape(1, 20), b).reshape(6))


@pytest.mark.parametrize(
    "case",
    ["two rows", "three terms", "mixed layouts", "strided matrix", "batched matrix", "int32", "row shapes differ"],
)
def test_products_beyond_the_row_kernel_go_to_the_general_kernels(case: str) -> None:
    """What the row kernel does not take, ``is_row_product`` says so, ``row_matmul_sum``
    refuses, and ``ring_matmul_sum`` still gives the exact sum by the general kernels."""
    a, b, c, d = full_range((1, 8), 1), full_range((8, 5), 2), full_range((1, 8), 3), full_range((8, 5), 4)
    pairs = {
        "two rows": [(full_range((2, 8), 5), b)],
        "three terms": [(a, b), (c, d), (a, d)],
        "mixed layouts": [(a, b), (c, stored(d, "transposed"))],
        "strided matrix": [(a, full_range((8, 10), 6)[:, ::2])],
        "batched matrix": [(a, full_range((2, 8, 5), 7))],
        "int32": [(a.to(torch.int32), b.to(torch.int32))],
        "row shapes differ": [(a, b), (c.reshape(8), d)],
    }[case]
    assert not ring.is_row_product(pairs)
    with pytest.raises(ValueError, match="row kernel"):
        ring.row_matmul_sum(pairs)
    expected = sum(torch.matmul(x, y) for x, y in pairs)
    assert torch.equal(ring.ring_matmul_sum(pairs), expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**31))
def test_ring_matmul_hypothesis_shapes(m: int, k: int, n: int, seed: int) -> None:
    a, b = full_range((m, k), seed), full_range((k, n), seed + 1)
    expected = python_matmul(a, b)
    assert torch.equal(ring.limb_matmul(a, b), expected)
    assert torch.equal(ring.native_matmul(a, b), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_compact_floats_encode_exactly_in_float32(dtype) -> None:
    """``encode_into`` (float32 arithmetic for compact dtypes) gives ``encode``'s exact
    fixed-point values: random weights, halves to round, the largest magnitudes of each
    dtype in range, and zero; a value out of range, inf or nan is refused."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(2000, generator=g) * 3, torch.tensor([0.0, -0.0, 2.0**-19, -(2.0**-19), 1000.5])])
    if dtype != torch.float16:
        x = torch.cat([x, torch.tensor([2.0**40, -(2.0**43) + 2.0**20])])
    x = x.to(dtype)
    out = torch.empty(x.shape, dtype=torch.int64)
    scratch = torch.empty(x.shape, dtype=torch.float32)
    assert torch.equal(ring.encode_into(x, 18, out, scratch), ring.encode(x, 18))
    for bad in (float("inf"), float("nan"), 2.0**46):
        if dtype == torch.float16 and bad == 2.0**46:
            continue  # beyond float16's range: it is inf
        with pytest.raises(ValueError, match="fixed-point range"):
            ring.encode_into(torch.tensor([1.0, bad]).to(dtype), 18, out[:2], scratch[:2])


def test_auto_sends_one_row_to_the_row_kernel_and_more_rows_to_the_calibrated_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    row_kernel = ring.row_kernel

    def spy(layout, terms):
        calls.append(terms)
        return row_kernel(layout, terms)

    monkeypatch.setattr(ring, "row_kernel", spy)
    monkeypatch.delenv("SECURETORCH_MATMUL_KERNEL", raising=False)
    row, weight = full_range((1, 1, 8), 1), full_range((8, 5), 2)
    ring.ring_matmul_sum([(row, weight), (row, weight)])
    ring.ring_matmul(row, weight)
    assert calls == [2, 1]
    ring.ring_matmul(row, weight, "native")
    ring.ring_matmul(full_range((3, 8), 3), weight)
    monkeypatch.setenv("SECURETORCH_MATMUL_KERNEL", "limbs")
    ring.ring_matmul(row, weight)
    assert calls == [2, 1]


def test_row_kernel_compiles_each_loop_once_though_threads_ask_together() -> None:
    """The simulator's three party threads reach the row kernel together: one compiled loop
    per (layout, terms), and the products from all threads are exact."""
    a, b = full_range((1, 16), 1), full_range((16, 4), 2)
    expected = python_matmul(a, b)
    got: list[torch.Tensor] = []
    loops: list[object] = []
    barrier = threading.Barrier(3)

    def party() -> None:
        barrier.wait()
        loops.append(ring.row_kernel("rows", 1))
        got.append(ring.row_matmul_sum([(a, b)]))

    threads = [threading.Thread(target=party) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(torch.equal(g, expected) for g in got)
    assert all(loop is loops[0] for loop in loops)
    ring.compile_kernels()
    assert ring.row_kernel("rows", 1) is loops[0]
