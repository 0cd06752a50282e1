"""Framing of the party-to-party wire: round trips, and malformed frames are refused."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securetorch.comm.frames import PACKED_MAX_BYTES, FrameError, decode_message, encode_message


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float64, torch.bool])
def test_round_trip(dtype: torch.dtype) -> None:
    tensors = [torch.arange(24).reshape(2, 3, 4).to(dtype), torch.zeros(0, 5, dtype=dtype), torch.tensor(7).to(dtype)]
    head, got = decode_message(as_bytes(encode_message(2, 9, 31, tensors)))
    assert (head.sender, head.job, head.step, head.count) == (2, 9, 31, 3)
    for a, b in zip(tensors, got, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_non_contiguous_tensor() -> None:
    t = torch.arange(12).reshape(3, 4).t()
    _, got = decode_message(as_bytes(encode_message(0, 1, 1, [t])))
    assert torch.equal(got[0], t)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_crash(frames: list[bytes]) -> None:
    try:
        decode_message(frames)
    except FrameError:
        pass


@settings(max_examples=200)
@given(st.integers(0, 200), st.integers(0, 3))
def test_truncated_frames_are_refused(cut: int, which: int) -> None:
    frames = as_bytes(encode_message(1, 1, 1, [torch.arange(10), torch.ones(2, 2)]))
    which = min(which, len(frames) - 1)
    if cut >= len(frames[which]):
        return
    frames[which] = frames[which][:cut]
    with pytest.raises(FrameError):
        decode_message(frames)


def test_an_empty_tensor_of_absurd_dimensions_is_a_frame_error() -> None:
    """Zero elements pass the length check; a tensor may still not claim dimensions nothing
    could hold (numpy refuses to shape them; code that sizes work by a dimension would
    take them at their word): a FrameError, never a ValueError escaping a party's handler."""
    meta = struct.pack("<BB3q", 0, 3, 0, 2**62, 2**62)
    frames = [struct.pack("<4sBQQI", b"STP1", 1, 1, 1, 1), meta, b""]
    with pytest.raises(FrameError, match="bad tensor"):
        decode_message(frames)


def test_small_messages_are_packed_into_one_frame_and_large_ones_are_not() -> None:
    """Up to ``PACKED_MAX_BYTES`` of payload a message is one frame (header, metas and data
    back to back); beyond, a header frame and a meta and a data frame per tensor. Both
    decode to the same tensors."""
    small = [torch.arange(10), torch.ones(2, 2, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.uint8)]
    large = [torch.arange(PACKED_MAX_BYTES // 8 + 1), torch.tensor([True, False])]
    for tensors, frames_expected in ((small, 1), (large, 1 + 2 * len(large))):
        frames = as_bytes(encode_message(1, 5, 7, tensors))
        assert len(frames) == frames_expected
        head, got = decode_message(frames)
        assert (head.sender, head.job, head.step, head.count) == (1, 5, 7, len(tensors))
        for a, b in zip(tensors, got, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_malformed_packed_messages_are_refused() -> None:
    (packed,) = as_bytes(encode_message(2, 1, 3, [torch.arange(6), torch.ones(3)]))
    header = packed[:25]
    for frames in (
        [packed + b"\x00"],  # bytes after the last tensor
        [packed, b""],  # a packed message is one frame
        [header + packed[25:27]],  # a meta cut short
        [header[:-4] + struct.pack("<I", 3) + packed[25:]],  # one tensor more than it holds
        [header + bytes([9, 1]) + packed[27:]],  # an unknown dtype code
    ):
        with pytest.raises(FrameError):
            decode_message(frames)
