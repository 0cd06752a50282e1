"""AES-CTR PRG: determinism per key, independence across keys, uniform output."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from securetorch.prg import AesPrg, new_key
from securetorch.protocols.boolean import random_bits

from ..conftest import chi_square_uniform_bytes


def test_same_key_same_stream_and_stream_continues() -> None:
    key = new_key()
    a, b = AesPrg(key), AesPrg(key)
    first = a.int64((1000,))
    assert torch.equal(first, b.int64((1000,)))
    assert not torch.equal(first, a.int64((1000,)))  # the stream moves on


def test_draws_split_like_one_draw() -> None:
    key = new_key()
    whole = AesPrg(key).int64((10,))
    parts = AesPrg(key)
    assert torch.equal(torch.cat([parts.int64((3,)), parts.int64((7,))]), whole)


def test_keystream_is_aes_128_ctr_across_chunk_boundaries() -> None:
    """Known answer: the stream is AES-128-CTR on zeros with nonce = stream number || 0^64,
    however draws fall across the PRG's internal 1 MiB chunks."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, n = new_key(), 3 * (1 << 20) + 13
    nonce = (5).to_bytes(8, "big") + bytes(8)
    want = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(bytes(n))
    assert AesPrg(key, 5).random_bytes(n).numpy().tobytes() == want
    prg = AesPrg(key, 5)
    parts = [prg.random_bytes(k).numpy().tobytes() for k in (7, (1 << 20) - 3, 2 * (1 << 20) + 9)]
    assert b"".join(parts) == want


def test_different_keys_independent() -> None:
    x, y = AesPrg(new_key()).int64((100_000,)), AesPrg(new_key()).int64((100_000,))
    assert int((x == y).sum()) == 0
    # Bitwise agreement of independent streams is ~50 %.
    agree = (~(x ^ y)).view(torch.uint8)
    bits = torch.stack([(agree >> i) & 1 for i in range(8)]).double().mean().item()
    assert abs(bits - 0.5) < 0.005


def test_output_uniform_bytes() -> None:
    data = AesPrg(new_key()).int64((200_000,)).numpy().tobytes()
    stat, critical = chi_square_uniform_bytes(data)
    assert stat < critical


def test_uniform_bits_range_and_key_length() -> None:
    v = AesPrg(new_key()).uniform_bits((50_000,), 18)
    assert int(v.min()) >= 0 and int(v.max()) < 2**18 and int(v.max()) > 2**17
    with pytest.raises(ValueError, match="16 bytes"):
        AesPrg(b"short")


def test_no_torch_or_numpy_randomness_in_library() -> None:
    root = pathlib.Path(__file__).resolve().parents[2] / "securetorch"
    pattern = re.compile(r"torch\.(rand|randn|randint|Generator)|numpy\.random|np\.random")
    offenders = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_random_bits_are_the_stream_bits_in_little_order() -> None:
    key = new_key()
    raw = AesPrg(key, 3).random_bytes(13).tolist()
    want = [(raw[i // 8] >> (i % 8)) & 1 for i in range(101)]
    bits = random_bits(AesPrg(key, 3), 101)
    assert bits.dtype == torch.int64 and bits.tolist() == want


def test_draws_land_on_the_generators_device() -> None:
    """A generator for another device hands every draw over there (the meta device stands
    in for an accelerator: it has shapes and dtypes but no data)."""
    prg = AesPrg(new_key(), device="meta")
    for draw in (prg.int64((4, 5)), prg.uint8((7,)), prg.uniform_bits((3,), 18), prg.random_bytes(0)):
        assert draw.device.type == "meta"
    assert prg.int64((4, 5)).shape == (4, 5) and prg.random_bytes(9).shape == (9,)
