"""Bit packing of small integers and of 0/1 vectors: exact round trips and the documented
little-endian stream layout (what goes on the wire), on sizes that take every path."""

from __future__ import annotations

import pytest
import torch

from securetorch.protocols.boolean import bit_planes, high_bits_first, pack_bits, pack_uint, unpack_bits, unpack_uint

from ..conftest import seeded


def stream_reference(values: list[int], bits: int) -> bytes:
    """Value i occupies stream bits [i bits, (i+1) bits), bit 0 of the stream being bit 0 of byte 0."""
    total = sum(v << (i * bits) for i, v in enumerate(values))
    return total.to_bytes((len(values) * bits + 7) // 8, "little")


@pytest.mark.parametrize("bits", [1, 2, 7, 8, 13, 18, 23, 32, 33, 36, 50, 62, 63])
@pytest.mark.parametrize("n", [1, 5, 64, 1001, 3000, (1 << 14) + 7])  # every packing path
def test_pack_uint_layout_and_round_trip(bits: int, n: int) -> None:
    values = torch.randint(0, 2**62, (n,), generator=seeded(bits * 1000 + n)) & ((1 << bits) - 1)
    packed = pack_uint(values, bits)
    assert packed.dtype == torch.uint8
    assert packed.numpy().tobytes() == stream_reference(values.tolist(), bits)
    assert torch.equal(unpack_uint(packed, bits, (n,)), values)


def test_pack_uint_keeps_shapes_and_top_values() -> None:
    values = torch.full((2, 3, 5), (1 << 18) - 1, dtype=torch.int64)
    values[0, 0, 0] = 0
    assert torch.equal(unpack_uint(pack_uint(values, 18), 18, values.shape), values)


def test_pack_bits_round_trip() -> None:
    bits = torch.randint(0, 2, (3, 1001), generator=seeded(5))
    packed = pack_bits(bits)
    assert packed.shape == (3, 126) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, 1001), bits)
    assert torch.equal(pack_bits(bits.t().contiguous().t()), packed)  # a strided input
    want = sum(int(b) << i for i, b in enumerate(bits[1].tolist())).to_bytes(126, "little")
    assert packed[1].numpy().tobytes() == want  # bit i of the row: bit i % 8 of byte i // 8


@pytest.mark.parametrize("bits", [1, 13, 43, 64])
def test_high_bits_first_lists_each_elements_bits_from_the_top(bits: int) -> None:
    x = torch.randint(-(2**63), 2**63 - 1, (37,), generator=seeded(bits), dtype=torch.int64)
    got = high_bits_first(x, bits)
    assert got.dtype == torch.int16 and got.shape == (37, bits)
    want = torch.stack([(x >> j) & 1 for j in range(bits - 1, -1, -1)], 1)
    assert torch.equal(got.long(), want)


@pytest.mark.parametrize("bits", [1, 8, 20, 43, 44, 64])
@pytest.mark.parametrize("n", [1, 13, 2047, 2048, (1 << 14) + 5])  # both paths (expansion, 8 x 8 transpositions)
def test_bit_planes_hold_bit_j_of_every_element_in_plane_j(bits: int, n: int) -> None:
    x = torch.randint(-(2**63), 2**63 - 1, (n,), generator=seeded(bits + n), dtype=torch.int64)
    x[0] = -1  # the sign bit set: the transposition's shifts are arithmetic
    planes = bit_planes(x, bits)
    assert planes.shape == (bits, (n + 7) // 8) and planes.dtype == torch.uint8
    want = torch.stack([(x >> j) & 1 for j in range(bits)])
    assert torch.equal(unpack_bits(planes, n), want)
