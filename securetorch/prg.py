"""AES-128-CTR pseudorandom generators producing uniform ring tensors.

Every random ring element in securetorch comes from here: pairwise streams for zero-sharing
and correlated randomness (ABY3 §2.2: P_i holds keys k_i and k_{i+1}), one stream common to
all three parties, and a private stream per party. Keys are 16 bytes drawn with ``secrets``.
Two parties holding the same key draw the same stream, so they must draw in the same order
(protocols are SPMD, so they do).

AES runs on the CPU (``cryptography``'s OpenSSL, AES-NI); a generator made for another
``device`` moves each draw there once, as one tensor, and every later step stays on it.
"""

from __future__ import annotations

import math
import secrets

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

    def __init__(self, key: bytes, stream: int = 0, device: torch.device | str = "cpu") -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"AES-128 key must be {KEY_BYTES} bytes, got {len(key)}")
        nonce = stream.to_bytes(8, "big") + bytes(8)
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"

    def random_bytes(self, n: int) -> torch.Tensor:
        """The next n bytes of the keystream, as a flat uint8 tensor on the generator's device."""
        return self._draw((n,), torch.uint8)

    def _draw(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """The next prod(shape) elements' bytes of the keystream as a ``dtype`` tensor: AES
        writes them into a buffer the tensor then owns (no copy on the CPU)."""
        count = math.prod(shape)
        if not count:
            return torch.empty(tuple(shape), dtype=dtype, device=self.device)
        n = count * dtype.itemsize
        buf = bytearray(n + _SLACK)
        out = memoryview(buf)
        for start in range(0, n, _CHUNK_BYTES):
            size = min(_CHUNK_BYTES, n - start)
            self._enc.update_into(_ZEROS[:size], out[start : start + size + _SLACK])
        drawn = torch.frombuffer(buf, dtype=dtype, count=count)
        if len(shape) != 1:
            drawn = drawn.view(tuple(shape))
        return drawn if self._on_cpu else drawn.to(self.device)

    def int64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 (as torch.int64)."""
        return self._draw(shape, torch.int64)

    def uint8(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform bytes (as torch.uint8): packed random bits."""
        return self._draw(shape, torch.uint8)

    def uniform_bits(self, shape: tuple[int, ...] | torch.Size, bits: int) -> torch.Tensor:
        """Uniform integers in [0, 2^bits) as torch.int64 (1 <= bits <= 63)."""
        if not 1 <= bits <= 63:
            raise ValueError("bits must be in [1, 63]")
        return self.int64(shape) & ((1 << bits) - 1)
