"""Wire formats: tensors as dtype, shape and raw bytes; no pickle anywhere.

Between parties a message is a ZeroMQ message::

    header  = b"STP1" | sender u8 | job u64 | step u64 | count u32
    then per tensor:  meta = dtype code u8 | ndim u8 | shape (ndim x i64);  data = raw bytes

in one of two layouts: *packed*, one frame holding the header and every tensor's meta and
data back to back, for payloads up to ``PACKED_MAX_BYTES`` (most protocol rounds: one copy
of a few KiB is cheaper than a frame per part, which costs ZeroMQ a message part and Python
a ``Frame`` each); or *multipart*, the header and then a meta frame and a data frame per
tensor, sent without copying the data.

Between a driver and a party (both directions) a message is typed::

    kind (ASCII, <= 32 bytes) | header (a JSON object, <= 16 MiB) | tensors as above

Parsing checks every length and code and raises ``FrameError`` on anything malformed.
Tensors leave from and arrive on the CPU: encoding hands a tensor's bytes to ZeroMQ (a
tensor on another device is copied to the CPU first; numpy lends the buffer protocol torch
tensors lack); decoding copies the bytes into a fresh CPU tensor, which the links move to
their party's device.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAGIC = b"STP1"
_HEADER = struct.Struct("<4sBQQI")
_META = struct.Struct("<BB")
MAX_DIMS = 16
MAX_DIM_SIZE = 1 << 40
MAX_KIND_BYTES = 32
MAX_HEADER_BYTES = 16 << 20

_DTYPES: list[torch.dtype] = [
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.float64,
    torch.float32,
    torch.bool,
]
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
_ITEMSIZE = [dt.itemsize for dt in _DTYPES]
_SHAPES = [struct.Struct(f"<{n}q") for n in range(MAX_DIMS + 1)]
_METAS = [struct.Struct(f"<BB{n}q") for n in range(MAX_DIMS + 1)]  # a whole meta, by rank


class FrameError(ValueError):
    """A frame that is not a well-formed securetorch message."""


@dataclass(frozen=True)
class Header:
    sender: int
    job: int
    step: int
    count: int


Buffer = bytes | bytearray | memoryview


def encode_tensors(tensors: Sequence[torch.Tensor]) -> list[Buffer]:
    """Two frames per tensor: its meta (dtype code, rank, shape) and its raw bytes."""
    frames: list[Buffer] = []
    for t in tensors:
        code, ndim = _CODE.get(t.dtype), t.dim()
        if code is None:
            raise TypeError(f"cannot send tensors of dtype {t.dtype}")
        if ndim > MAX_DIMS:
            raise TypeError(f"cannot send tensors of more than {MAX_DIMS} dimensions")
        if t.requires_grad:
            t = t.detach()
        if not t.is_cpu:
            t = t.cpu()
        t = t.contiguous()
        frames.append(_METAS[ndim].pack(code, ndim, *t.shape))
        frames.append(memoryview(t.numpy()).cast("B") if t.numel() else b"")
    return frames


def decode_tensors(frames: Sequence[Buffer]) -> list[torch.Tensor]:
    """The tensors of ``encode_tensors``' frames (copied out of the message buffers)."""
    if len(frames) % 2:
        raise FrameError("tensor frames come in pairs (meta, data)")
    tensors = []
    for meta, data in zip(frames[0::2], frames[1::2], strict=True):
        code, shape, end = _read_meta(meta, 0)
        if end != len(meta):
            raise FrameError("bad tensor meta")
        tensors.append(_read_data(code, shape, data))
    return tensors


def _read_meta(buffer: Buffer, at: int) -> tuple[int, tuple[int, ...], int]:
    """(dtype code, shape, where the meta ends) of the tensor meta at ``at`` in ``buffer``;
    ``FrameError`` unless it is whole and well-formed."""
    if len(buffer) < at + _META.size:
        raise FrameError("short tensor meta")
    code, ndim = _META.unpack_from(buffer, at)
    end = at + _META.size + 8 * ndim
    if code >= len(_DTYPES) or ndim > MAX_DIMS or len(buffer) < end:
        raise FrameError("bad tensor meta")
    shape = _SHAPES[ndim].unpack_from(buffer, at + _META.size)
    if shape and min(shape) < 0:
        raise FrameError("negative dimension")
    if shape and max(shape) > MAX_DIM_SIZE:  # even an empty tensor may not claim one
        raise FrameError(f"bad tensor of shape {shape}: a dimension above 2^40")
    return code, shape, end


def _read_data(code: int, shape: tuple[int, ...], data: Buffer) -> torch.Tensor:
    """The CPU tensor of dtype ``code`` and ``shape`` whose raw bytes are ``data`` (copied
    into memory of its own, so it outlives the message and is aligned for its dtype)."""
    dtype = _DTYPES[code]
    if len(data) != math.prod(shape) * _ITEMSIZE[code]:
        raise FrameError(f"data of {len(data)} bytes for shape {shape} of {dtype}")
    try:
        if not data:
            return torch.empty(shape, dtype=dtype)
        tensor = torch.frombuffer(bytearray(data), dtype=dtype)
        return tensor if len(shape) == 1 else tensor.view(shape)
    except (ValueError, RuntimeError, MemoryError) as exc:  # e.g. an empty tensor of absurd dimensions
        raise FrameError(f"bad tensor of shape {shape}: {exc}") from None


PACKED_MAX_BYTES = 1 << 16


def encode_message(sender: int, job: int, step: int, tensors: list[torch.Tensor]) -> list[Buffer]:
    """A peer message's frames: packed (one frame) for payloads up to ``PACKED_MAX_BYTES``,
    else multipart (see the module docstring)."""
    header = _HEADER.pack(MAGIC, sender, job, step, len(tensors))
    parts = encode_tensors(tensors)
    if payload_bytes(tensors) <= PACKED_MAX_BYTES:
        return [b"".join([header, *parts])]
    return [header, *parts]


def payload_bytes(tensors: list[torch.Tensor]) -> int:
    total = 0
    for t in tensors:  # a loop: most messages hold one or two tensors, where sum() costs more
        total += t.nbytes
    return total


def decode_header(frame: Buffer) -> Header:
    """The header at the start of ``frame`` (a multipart message's first frame is exactly a
    header; a packed one continues with the tensors)."""
    if len(frame) < _HEADER.size:
        raise FrameError(f"header of {len(frame)} bytes, expected {_HEADER.size}")
    magic, sender, job, step, count = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if sender > 2:
        raise FrameError(f"sender rank {sender} out of range")
    return Header(sender, job, step, count)


def decode_message(frames: Sequence[Buffer]) -> tuple[Header, list[torch.Tensor]]:
    if not frames:
        raise FrameError("empty message")
    head = decode_header(frames[0])
    if len(frames[0]) > _HEADER.size or (len(frames) == 1 and head.count):
        if len(frames) != 1:
            raise FrameError(f"a packed message of {len(frames)} frames")
        return head, _decode_packed(memoryview(frames[0]).cast("B"), head.count)
    if len(frames) != 1 + 2 * head.count:
        raise FrameError(f"{len(frames)} frames for {head.count} tensors")
    return head, decode_tensors(frames[1:])


def _decode_packed(frame: memoryview, count: int) -> list[torch.Tensor]:
    """The ``count`` tensors of a packed message, each meta followed by its data."""
    tensors = []
    at = _HEADER.size
    for _ in range(count):
        code, shape, end = _read_meta(frame, at)
        at = end + math.prod(shape) * _ITEMSIZE[code]
        if len(frame) < at:
            raise FrameError(f"data of {len(frame) - end} bytes for shape {shape} of {_DTYPES[code]}")
        tensors.append(_read_data(code, shape, frame[end:at]))
    if at != len(frame):
        raise FrameError(f"{len(frame) - at} bytes after the last tensor")
    return tensors


def encode_typed(kind: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> list[Buffer]:
    """A driver-party message: its kind, a JSON header and raw tensor frames."""
    return [kind.encode("ascii"), json.dumps(header, separators=(",", ":")).encode(), *encode_tensors(tensors)]


def decode_typed(frames: Sequence[Buffer]) -> tuple[str, dict, list[torch.Tensor]]:
    """(kind, header, tensors) of a typed message; ``FrameError`` on anything malformed."""
    if len(frames) < 2:
        raise FrameError(f"a typed message has a kind and a header, got {len(frames)} frame(s)")
    kind_frame, header_frame = bytes(frames[0]), frames[1]
    if not 0 < len(kind_frame) <= MAX_KIND_BYTES or not kind_frame.isascii():
        raise FrameError("bad message kind")
    if len(header_frame) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(header_frame)} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(header_frame))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return kind_frame.decode("ascii"), header, decode_tensors(frames[2:])
