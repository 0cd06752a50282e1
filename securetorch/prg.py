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

    def random_bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def _draw(self, shape: tuple[int, ...] | torch.Size, dtype: np.dtype) -> torch.Tensor:
        count = math.prod(shape)
        raw = self.random_bytes(count * dtype.itemsize)
        arr = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
        return torch.from_numpy(arr.copy())

    def int64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 (as torch.int64)."""
        return self._draw(shape, np.dtype(np.int64))

    def uint8(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform bytes (as torch.uint8): packed random bits."""
        return self._draw(shape, np.dtype(np.uint8))

    def uniform_bits(self, shape: tuple[int, ...] | torch.Size, bits: int) -> torch.Tensor:
        """Uniform integers in [0, 2^bits) as torch.int64 (1 <= bits <= 63)."""
        if not 1 <= bits <= 63:
            raise ValueError("bits must be in [1, 63]")
        return self.int64(shape) & ((1 << bits) - 1)
