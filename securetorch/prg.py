"""AES-128-CTR pseudorandom generators producing uniform ring tensors.

Every random ring element in securetorch comes from here: pairwise streams for zero-sharing
and correlated randomness (ABY3 §2.2: P_i holds keys k_i and k_{i+1}), one stream common to
all three parties, and a private stream per party. Keys are 16 bytes drawn with ``secrets``.
Two parties holding the same key draw the same stream, so they must draw in the same order
(protocols are SPMD, so they do).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16
# Keystream is produced by encrypting zeros straight into the output buffer, a chunk at a time
# (about 4x the throughput of allocating plaintext and ciphertext for every draw).
_CHUNK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
# CTR's update_into wants room for one block less a byte beyond the bytes it writes.
_SLACK = 15


def new_key() -> bytes:
    """A fresh 128-bit key from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


class AesPrg:
    """AES-128 in counter mode keyed by ``key``; successive draws continue the stream.

    ``stream`` selects one of 2^64 independent streams of the key (it fills the high half of
    the initial counter block): parties restart their streams at every job with the job's
    number, so a job abandoned half-way cannot leave two holders of a key out of step.
    """

    def __init__(self, key: bytes, stream: int = 0) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"AES-128 key must be {KEY_BYTES} bytes, got {len(key)}")
        nonce = stream.to_bytes(8, "big") + bytes(8)
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()

    def random_bytes(self, n: int) -> np.ndarray:
        """The next n bytes of the keystream, as a uint8 array."""
        buf = np.empty(n + _SLACK, dtype=np.uint8)
        out = memoryview(buf)
        for start in range(0, n, _CHUNK_BYTES):
            size = min(_CHUNK_BYTES, n - start)
            self._enc.update_into(_ZEROS[:size], out[start : start + size + _SLACK])
        return buf[:n]

    def _draw(self, shape: tuple[int, ...] | torch.Size, dtype: np.dtype) -> torch.Tensor:
        count = math.prod(shape)
        raw = self.random_bytes(count * dtype.itemsize)
        return torch.from_numpy(raw.view(dtype).reshape(tuple(shape)))

    def int64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 (as torch.int64)."""
        return self._draw(shape, np.dtype(np.int64))

    def uint8(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform bytes (as torch.uint8): packed random bits."""
        return self._draw(shape, np.dtype(np.uint8))

    def bits(self, n: int) -> torch.Tensor:
        """n uniform bits as a flat torch.int64 tensor of 0/1 (ceil(n/8) bytes of the stream)."""
        raw = self.random_bytes((n + 7) // 8)
        return torch.from_numpy(np.unpackbits(raw, count=n, bitorder="little").astype(np.int64))

    def uniform_bits(self, shape: tuple[int, ...] | torch.Size, bits: int) -> torch.Tensor:
        """Uniform integers in [0, 2^bits) as torch.int64 (1 <= bits <= 63)."""
        if not 1 <= bits <= 63:
            raise ValueError("bits must be in [1, 63]")
        return self.int64(shape) & ((1 << bits) - 1)
