"""Boolean (XOR-replicated) shares over bit-packed planes, and packing of small integers.

A secret bit vector b = b_0 xor b_1 xor b_2 is held like arithmetic shares: P_i holds
(b_i, b_{i+1}). Bits are packed eight to a byte (``pack_bits``), so a protocol over n bits
moves ceil(n/8) bytes per message; a *plane* is one packed bit vector. Many planes are
processed at once as a ``[planes, bytes]`` uint8 tensor.

Sources: ABY3 §4 (boolean sharing, AND with one round of resharing).
"""

from __future__ import annotations

import torch

from securetorch.runtime.context import PartyContext

BitPair = tuple[torch.Tensor, torch.Tensor]

_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 values along the last dim, eight to a byte: [..., n] -> uint8 [..., ceil(n/8)]."""
    n = bits.shape[-1]
    pad = (-n) % 8
    b = bits.to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.reshape(*b.shape[:-1], -1, 8)
    return (b * _WEIGHTS).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 [..., ceil(n/8)] -> int64 0/1 [..., n]."""
    bits = (packed.unsqueeze(-1) & _WEIGHTS) != 0
    return bits.reshape(*packed.shape[:-1], -1)[..., :n].to(torch.int64)


def bit_planes(x: torch.Tensor, bits: int, start: int = 0) -> torch.Tensor:
    """Bits start..start+bits-1 of every element of int64 ``x`` (flattened) as packed planes
    [bits, ceil(n/8)]."""
    flat = x.reshape(-1)
    shifts = torch.arange(start, start + bits, dtype=torch.int64).unsqueeze(1)
    return pack_bits((flat.unsqueeze(0) >> shifts) & 1)


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative integers below 2^bits, packed to ``bits`` bits each (as bit planes)."""
    return bit_planes(values, bits)


def unpack_uint(packed: torch.Tensor, bits: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_uint`` for a tensor of ``shape``."""
    n = torch.Size(shape).numel()
    planes = unpack_bits(packed, n)
    weights = torch.ones(bits, 1, dtype=torch.int64) << torch.arange(bits, dtype=torch.int64).unsqueeze(1)
    return (planes * weights).sum(0).reshape(shape)


def xor_zero_share(ctx: PartyContext, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Three XOR-shares of zero (uint8): F(k_i) xor F(k_{i+1}). Local."""
    return ctx.prg_prev.uint8(shape) ^ ctx.prg_next.uint8(shape)


def xor(x: BitPair, y: BitPair) -> BitPair:
    return x[0] ^ y[0], x[1] ^ y[1]


def xor_public(ctx: PartyContext, x: BitPair, p: torch.Tensor) -> BitPair:
    """x xor p for public packed bits p (into share b_0, held by P_0 and P_2)."""
    first, second = x
    if ctx.rank == 0:
        first = first ^ p
    elif ctx.rank == 2:
        second = second ^ p
    return first, second


def reshare_bits(ctx: PartyContext, z: torch.Tensor) -> BitPair:
    """3-out-of-3 XOR shares to replicated XOR shares. 1 round, 3 bits per bit."""
    z = z ^ xor_zero_share(ctx, z.shape)
    got = ctx.net.exchange({ctx.prev_rank: [z]}, [ctx.next_rank])
    return z, got[ctx.next_rank][0]


def and_(ctx: PartyContext, x: BitPair, y: BitPair) -> BitPair:
    """x AND y, bitwise. Cost: 1 round, 3 bits per bit (all parties)."""
    z = (x[0] & y[0]) ^ (x[0] & y[1]) ^ (x[1] & y[0])
    return reshare_bits(ctx, z)


def reveal_bits(ctx: PartyContext, x: BitPair) -> torch.Tensor:
    """Open packed bits to every party. 1 round, 3 bits per bit."""
    got = ctx.net.exchange({ctx.next_rank: [x[0]]}, [ctx.prev_rank])
    return x[0] ^ x[1] ^ got[ctx.prev_rank][0]
