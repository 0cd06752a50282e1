"""Boolean (XOR-replicated) shares over bit-packed planes, and packing of small integers.

A secret bit vector b = b_0 xor b_1 xor b_2 is held like arithmetic shares: P_i holds
(b_i, b_{i+1}). Bits are packed eight to a byte (``pack_bits``), so a protocol over n bits
moves ceil(n/8) bytes per message; a *plane* is one packed bit vector. Many planes are
processed at once as a ``[planes, bytes]`` uint8 tensor.

Sources: ABY3 §4 (boolean sharing, AND with one round of resharing).
"""

from __future__ import annotations

import functools
import math

import torch

from securetorch.prg import AesPrg
from securetorch.session.context import PartyContext

BitPair = tuple[torch.Tensor, torch.Tensor]


# Packing runs in torch on the tensors' own device: a few ops per call, each on whole
# tensors (``benchmarks.packing`` times them against numpy's C loops on a decode step's
# calls).


@functools.cache
def _bit_shifts(device: torch.device) -> torch.Tensor:
    """0..7 as uint8 on ``device``: the shifts that spread a byte over its eight bits."""
    return torch.arange(8, dtype=torch.uint8, device=device)


# Multiplying a 64-bit word whose byte k is bit b_k (0 or 1) by this gathers b_0..b_7 into
# its top byte: term b_k 2^(8k) 2^(56-7j) lands on bit 56 + k for j = k, at or above bit 64
# for j < k and on distinct bits below 56 for j > k, so no carry reaches the top byte.
_GATHER = 0x0102040810204080


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 values along the last dim, eight to a byte (little bit order):
    [..., n] -> uint8 [..., ceil(n/8)]."""
    n = bits.shape[-1]
    groups = -(-n // 8)
    spread = bits.to(torch.uint8)
    if n % 8:
        spread = torch.nn.functional.pad(spread, (0, 8 * groups - n))
    words = spread.contiguous().view(*spread.shape[:-1], groups, 8).view(torch.int64).squeeze(-1)
    return (((words * _GATHER) >> 56) & 255).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 [..., ceil(n/8)] -> int64 0/1 [..., n]."""
    bits = (packed.unsqueeze(-1) >> _bit_shifts(packed.device)) & 1
    return bits.flatten(-2)[..., :n].to(torch.int64)


def random_bits(stream: AesPrg, n: int) -> torch.Tensor:
    """n uniform bits (int64 0/1) from the next ceil(n/8) bytes of ``stream``: bit i is bit
    i mod 8 of byte i // 8, as ``unpack_bits`` reads them."""
    return unpack_bits(stream.uint8(((n + 7) // 8,)), n)


def high_bits_first(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Bits bits-1 .. 0 of every element of int64 ``x`` (flattened), as int16 [n, bits]."""
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int64, device=x.device)
    return ((x.reshape(-1, 1) >> shifts) & 1).to(torch.int16)


# The masks of the three delta swaps of an 8 x 8 bit transposition (Warren, "Hacker's
# Delight", 2nd ed., §7-3): bit 8 r + c of a word moves to bit 8 c + r.
_TRANSPOSE_STEPS = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))


def bit_planes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Bits 0..bits-1 of every element of int64 ``x`` (flattened) as packed planes
    [bits, ceil(n/8)]: plane j holds bit j of all elements, by 8 x 8 bit transpositions in
    64-bit words (no 8x expansion to one byte per bit).

    Byte b of eight consecutive elements 8m..8m+7 forms one 64-bit word
    (bit 8t + k: bit k of element 8m + t); its 8 x 8 bit transposition has in byte k bit k of
    the eight elements, element 8m + t at bit t: byte m of plane 8b + k. The shifts are
    arithmetic, but every mask clears the bits a sign could fill."""
    flat = x.reshape(-1)
    n = flat.numel()
    groups, nbytes = -(-n // 8), -(-bits // 8)
    if n % 8:
        flat = torch.cat([flat, flat.new_zeros(8 * groups - n)])
    words = flat.view(torch.uint8).view(8 * groups, 8)[:, :nbytes].t().contiguous().view(torch.int64)
    for shift, mask in _TRANSPOSE_STEPS:
        swap = (words ^ (words >> shift)) & mask
        words = words ^ swap ^ (swap << shift)
    return words.view(torch.uint8).view(nbytes, groups, 8).permute(0, 2, 1).reshape(8 * nbytes, groups)[:bits]


@functools.cache
def _uint_layout(bits: int, device: torch.device) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values of ``bits`` bits laid end to end in little-endian 64-bit words repeat their
    layout every g = 64 / gcd(bits, 64) values, which fill ``bits * g / 64`` words: (g, words,
    each value's word and shift, and which values run into the next word), on ``device``."""
    group = 64 // math.gcd(bits, 64)
    start = torch.arange(group, dtype=torch.int64, device=device) * bits
    word, shift = start >> 6, start & 63
    return group, bits * group // 64, word, shift, shift > 64 - bits


@functools.cache
def _byte_group_shifts(bits: int, device: torch.device) -> torch.Tensor:
    """0, bits, ..., 7 bits on ``device``: where eight values of ``bits`` <= 8 bits sit in a word."""
    return torch.arange(8, dtype=torch.int64, device=device) * bits


# Values of at most this many bits lie, with their offset into their first byte (< 8),
# inside the 8-byte window that starts at that byte: one 64-bit read or write per value.
_WINDOW_BITS = 57
# Below this many values, windows pack values of up to ``_WINDOW_BITS`` bits; above (and for
# wider values at any size), torch works on whole 64-bit words (no write per value).
_WORD_PACKING_MIN = 1 << 14
# From this many values of at most 8 bits, eight values are packed into one 64-bit word and
# its low ``bits`` bytes kept (below, windows are faster).
_BYTE_GROUP_MIN = 1 << 10


@functools.lru_cache(maxsize=64)
def _windows(n: int, bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of n values of ``bits`` bits lies in the packed stream, on ``device``: the
    first byte of its window, (i bits) // 8, and its shift into it, (i bits) mod 8."""
    start = torch.arange(n, dtype=torch.int64, device=device) * bits
    return start >> 3, start & 7


@functools.lru_cache(maxsize=64)
def _window_bytes(n: int, bits: int, device: torch.device) -> torch.Tensor:
    """The eight bytes of each value's window, [n * 8] (for packing: n < 2^14, at most 1 MiB)."""
    first, _ = _windows(n, bits, device)
    return (first.unsqueeze(1) + torch.arange(8, dtype=torch.int64, device=device)).view(-1)


def _pack_windows(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """``pack_uint`` for bits <= ``_WINDOW_BITS``: each value, shifted into its window, is
    added bytewise at the window's place (bit ranges are disjoint: the sums are ORs)."""
    n, size = flat.numel(), (flat.numel() * bits + 7) // 8
    _, shift = _windows(n, bits, flat.device)
    spread = _window_bytes(n, bits, flat.device)
    out = torch.zeros(size + 8, dtype=torch.uint8, device=flat.device)
    out.index_add_(0, spread, (flat << shift).view(torch.uint8))
    return out[:size]


def _unpack_windows(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """``unpack_uint`` for bits <= ``_WINDOW_BITS``: each value's window read as one word."""
    first, shift = _windows(n, bits, packed.device)
    windows = torch.nn.functional.pad(packed, (0, 8)).unfold(0, 8, 1)  # row j: bytes j..j+7
    words = windows.index_select(0, first).view(torch.int64).view(n)
    return (words >> shift) & ((1 << bits) - 1)  # the mask drops the sign fill


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative integers below 2^bits, ``bits`` bits each, packed into ceil(n bits / 8)
    bytes (value i holds stream bits [i bits, (i+1) bits), little-endian)."""
    flat = values.reshape(-1).long()
    n = flat.numel()
    device = flat.device
    if bits <= _WINDOW_BITS and n < (_BYTE_GROUP_MIN if bits <= 8 else _WORD_PACKING_MIN):
        return _pack_windows(flat, bits)
    if bits <= 8:  # eight values fill ``bits`` bytes of one word
        groups = -(-n // 8)
        grid = flat.new_zeros(groups * 8)
        grid[:n] = flat
        words = (grid.view(groups, 8) << _byte_group_shifts(bits, device)).sum(1)
        return words.view(torch.uint8).view(groups, 8)[:, :bits].reshape(-1)[: (n * bits + 7) // 8]
    group, nwords, word, shift, spills = _uint_layout(bits, device)
    rows = -(-n // group)
    grid = flat.new_zeros(rows * group)
    grid[:n] = flat
    grid = grid.view(rows, group)
    words = flat.new_zeros(rows, nwords)  # a group ends at a word's end: no spill past it
    words.index_add_(1, word, grid << shift)  # disjoint bit ranges: the sum is an OR
    words.index_add_(1, word[spills] + 1, grid[:, spills] >> (64 - shift[spills]))
    return words.view(-1).view(torch.uint8)[: (n * bits + 7) // 8].clone()


def unpack_uint(packed: torch.Tensor, bits: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_uint`` for a tensor of ``shape``."""
    n = torch.Size(shape).numel()
    device = packed.device
    if bits <= 8 and n >= _BYTE_GROUP_MIN:
        groups = -(-n // 8)
        wide = packed.new_zeros(groups, 8)
        spread = packed.new_zeros(groups * bits)
        spread[: packed.numel()] = packed
        wide[:, :bits] = spread.view(groups, bits)
        values = (wide.view(torch.int64) >> _byte_group_shifts(bits, device)) & ((1 << bits) - 1)
        return values.view(-1)[:n].reshape(tuple(shape))
    if bits <= _WINDOW_BITS:
        return _unpack_windows(packed, bits, n).reshape(tuple(shape))
    group, nwords, word, shift, spills = _uint_layout(bits, device)
    rows = -(-n // group)
    padded = packed.new_zeros(rows * nwords * 8)
    padded[: packed.numel()] = packed
    words = padded.view(torch.int64).view(rows, nwords)
    low_bits = torch.clamp(64 - shift, max=bits)  # the bits of each value in its first word
    values = (words[:, word] >> shift) & ((1 << low_bits) - 1)  # the mask drops the sign fill
    values[:, spills] |= (words[:, word[spills] + 1] << (64 - shift[spills])) & ((1 << bits) - 1)
    return values.view(-1)[:n].reshape(tuple(shape))


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
