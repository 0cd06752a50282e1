"""What a party receives looks uniformly random; outputs reach only their recipients."""

from __future__ import annotations

import torch

import securetorch as puma
from securetorch.protocols import comparison as pc
from securetorch.protocols.boolean import unpack_uint
from securetorch.protocols.sampling import SamplingSettings, sample
from securetorch.session.context import current

from ..conftest import chi_square_critical, chi_square_uniform_bytes, received_tensors


def recording(fn):
    """Run ``fn`` in a party and return every tensor this party received meanwhile."""

    def wrapped(*args):
        with received_tensors() as received:
            fn(*args)
        return received

    return wrapped


def uniform_payload(tensors: list[torch.Tensor]) -> bytes:
    """The received bytes: ring elements (int64) and packed bits/small integers (uint8)."""
    assert all(t.dtype in (torch.int64, torch.uint8) for t in tensors)
    return b"".join(t.numpy().tobytes() for t in tensors)


def test_shares_of_a_constant_are_uniform(cluster) -> None:
    def fn():
        puma.share(torch.zeros(100_000) if puma.rank() == 0 else None, owner=0)

    received = cluster.run(recording(fn))
    assert received[0] == []  # the owner receives nothing
    for r in (1, 2):
        stat, critical = chi_square_uniform_bytes(uniform_payload(received[r]))
        assert stat < critical, (r, stat, critical)


def test_every_message_of_products_is_uniform(cluster) -> None:
    """Mul, matmul and truncation of constants, with both truncation protocols (small and
    large tensors): all received payloads look uniform."""

    def fn():
        n = 1 << 17  # from here on products take the 3-round truncation
        x = puma.share(torch.full((n,), 3.0) if puma.rank() == 0 else None, owner=0)
        y = puma.share(torch.full((n,), -2.0) if puma.rank() == 1 else None, owner=1)
        for _ in range(3):  # each party takes the dealer role once, in both protocols
            x * y
            x[:20_000] * y[:20_000]
        x[:20_000].reshape(100, 200) @ y[:20_000].reshape(200, 100)
        x * 0.001

    for r, tensors in enumerate(cluster.run(recording(fn))):
        assert tensors
        stat, critical = chi_square_uniform_bytes(uniform_payload(tensors))
        assert stat < critical, (r, stat, critical)


def test_every_message_of_dealt_lookups_is_uniform(cluster) -> None:
    """Truncations with dealt lookup tables of a constant, and the normalisers that use them
    (LayerNorm's rsqrt, softmax's reciprocal on a few rows): the opened values, B's table
    shares and the reshared lookups all look uniform."""
    from securetorch.protocols import arithmetic as pa

    def fn():
        ctx = current()
        x = puma.share(torch.full((200,), 3.0) if puma.rank() == 0 else None, owner=0)
        tables = torch.arange(2 * 1024, dtype=torch.int64).reshape(2, 1024)
        for _ in range(3):  # each party takes the dealer role once
            pa.truncate_many(ctx, [(x.shares[0], 18, tables), (x.shares[0], 30, None)])
        y = puma.share(torch.full((4, 64), 0.5) if puma.rank() == 0 else None, owner=0)
        torch.nn.functional.layer_norm(y, (64,))
        torch.softmax(y, -1)

    for r, tensors in enumerate(cluster.run(recording(fn))):
        assert tensors
        stat, critical = chi_square_uniform_bytes(uniform_payload(tensors))
        assert stat < critical, (r, stat, critical)


def test_every_message_of_comparisons_is_uniform(cluster) -> None:
    """Comparisons of constants by the bit circuit with both bit injections (large and small
    batches), the all-pairs max and the dealt tables (integer and bit outputs): all received
    payloads (packed bits, 2-bit table entries, small and full ring elements) look uniform.
    (The zero test's values in Z_p: ``test_every_message_of_the_zero_test_is_uniform``.)"""

    def fn():
        ctx = current()
        n = 1 << 17  # from here on the bit injection takes the dealer-assisted product
        x = puma.share(torch.full((n,), 3.0) if puma.rank() == 0 else None, owner=0)
        # each party takes the dealer role once in each protocol
        large = [x < 1.0 for _ in range(3)] + [x[:4000] < 1.0]
        pairs = [x[:600].reshape(100, 6).amax(-1) for _ in range(3)]
        small = x[:1000].shares
        for ring_bits in (64, None):
            for _ in range(3):
                pc._dealt_sign(ctx, small, 44, pc._TABLE_PLANS["tables2"](44, ring_bits), ring_bits)
        return large + pairs

    for r, tensors in enumerate(cluster.run(recording(fn))):
        assert tensors
        stat, critical = chi_square_uniform_bytes(uniform_payload(tensors))
        assert stat < critical, (r, stat, critical)


def test_every_message_of_sampling_is_uniform(cluster) -> None:
    """A sampled token with temperature, top-k and top-p from constant logits: every received
    payload (bit decompositions, per-row bit counts, small-ring injections, the draw) looks
    uniform, so nothing about the logits, the thresholds or the token leaks to any party."""

    def fn():
        logits = torch.zeros(2, 2000)
        logits[:, :10] = 3.0
        x = puma.share(logits if puma.rank() == 0 else None, owner=0)
        sample(current(), x.shares, SamplingSettings(0.8, top_k=50, top_p=0.9))

    for r, tensors in enumerate(cluster.run(recording(fn))):
        assert tensors
        stat, critical = chi_square_uniform_bytes(uniform_payload(tensors))
        assert stat < critical, (r, stat, critical)


def test_reveal_to_one_party_sends_nothing_to_the_others(cluster) -> None:
    def fn():
        x = puma.share(torch.arange(10.0) if puma.rank() == 2 else None, owner=2)
        before = puma.stats()
        value = x.reveal(to=1)
        return value, puma.stats() - before

    results = cluster.run(fn)
    assert results[0][0] is None and results[2][0] is None
    assert torch.equal(results[1][0], torch.arange(10.0))
    assert results[0][1].bytes_received == 0 and results[2][1].bytes_received == 0


def test_driver_inputs_and_outputs_stay_with_the_driver(cluster) -> None:
    """A private input arrives as shares; a returned SharedTensor goes only to the driver."""
    secret = torch.tensor([[1.25, -3.5], [7.0, 0.125]])

    def fn(x):
        return x.shares, x * 2

    results = cluster.run(fn, puma.private(secret))
    # each party saw only its pair, never the value
    pairs = [r[0] for r in results]
    assert not any(
        torch.equal(a, puma.ring.encode(secret, 18)) or torch.equal(b, puma.ring.encode(secret, 18)) for a, b in pairs
    )
    total = pairs[0][0] + pairs[1][0] + pairs[2][0]
    assert torch.equal(total, puma.ring.encode(secret, 18))
    assert torch.equal(results[0][1], secret * 2)


def _chi_square(values: torch.Tensor, low: int, high: int) -> tuple[float, float]:
    """Chi-square statistic of integer ``values`` vs uniform on [low, high), and the critical
    value at p = 1e-6."""
    counts = torch.bincount(values.reshape(-1).long() - low, minlength=high - low).double()
    assert counts.numel() == high - low, "values out of range"
    expected = values.numel() / (high - low)
    return float(((counts - expected) ** 2 / expected).sum()), chi_square_critical(high - low - 1, z=4.753)


def test_every_message_of_the_zero_test_is_uniform(cluster) -> None:
    """The comparison by a masked zero test, on a constant (so any leak would repeat): B's
    shares of r's bits and each masked term D receives are uniform in Z_p; what D can add up,
    s_i d_i, is uniform in Z_p* but for at most one zero per comparison, which occurs in half
    the comparisons and in every place equally often; the opened c and the parts of the
    result are uniform bytes."""
    n, bits = 20_000, 44
    low = bits - 1
    p = pc._zero_test_prime(low)

    width = p.bit_length()
    terms_bytes = (n * low * width + 7) // 8

    def fn():
        ctx = current()
        x = puma.share(torch.full((n,), 3.0) if puma.rank() == 0 else None, owner=0)
        calls = []
        for _ in range(3):  # each party takes the dealer role once
            got: list[tuple[int, torch.Tensor]] = []
            remove = ctx.net.add_receive_hook(lambda peer, tensors, got=got: got.extend((peer, t) for t in tensors))
            pc._zero_test_sign(ctx, x.shares, bits, 64)
            remove()
            calls.append(got)
        return calls

    results = cluster.run(fn)
    for call in range(3):
        views = {rank: results[rank][call] for rank in range(3)}
        # D receives exactly the two masked vectors; B receives D's shares of r's bits
        dealer = next(r for r in range(3) if [t.numel() for _, t in views[r]] == [terms_bytes] * 2)
        rank_b = (dealer + 2) % 3
        terms = [unpack_uint(t, width, (n, low)) for _, t in views[dealer]]
        r_shares = [t for peer, t in views[rank_b] if peer == dealer and t.numel() == terms_bytes]
        assert len(r_shares) == 1
        for values in [*terms, unpack_uint(r_shares[0], width, (n, low))]:
            stat, critical = _chi_square(values, 0, p)
            assert stat < critical, (call, stat, critical)
        tested = (terms[0] + terms[1]) % p
        zeros = tested == 0
        assert int(zeros.sum(1).max()) <= 1
        rows_with_zero = int(zeros.any(1).sum())
        assert abs(rows_with_zero - n / 2) < 5 * (n / 4) ** 0.5, rows_with_zero
        stat, critical = _chi_square(zeros.nonzero()[:, 1], 0, low)
        assert stat < critical, ("zero places", stat, critical)
        stat, critical = _chi_square(tested[~zeros], 1, p)
        assert stat < critical, ("nonzero terms", stat, critical)
        for rank in ((dealer + 1) % 3, rank_b):
            rest = [t for _, t in views[rank] if t is not r_shares[0]]
            stat, critical = chi_square_uniform_bytes(uniform_payload(rest))
            assert stat < critical, (rank, stat, critical)


def test_every_ring_message_of_chained_protocols_is_uniform() -> None:
    """Where a protocol's last message rides in the next one's first: a chain of 3-round
    truncations (exp on 2^17 elements) and the max tree's zero-test levels under wan (the
    swap that makes a level's results replicated inside the next level's opening). Every
    ring element a party receives (each masked share, opened value and dealt part) looks
    uniform; the zero test's values in Z_p are tested above."""
    from securetorch.comm.profile import PRESETS
    from securetorch.protocols import approx as ap
    from securetorch.protocols import arithmetic as pa

    wan = PRESETS["wan"]
    assert pa._truncation_variant(1 << 17, 23, wan) == "wrap_bits"
    assert pc._level_variant(4 * 32, 2, False, 44, wan) == "zero_test"

    def fn():
        ctx = current()
        x = puma.share(torch.full((1 << 17,), -1.0) if puma.rank() == 0 else None, owner=0)
        y = puma.share(torch.full((4, 64), 2.0) if puma.rank() == 0 else None, owner=0)
        got: list[torch.Tensor] = []
        remove = ctx.net.add_receive_hook(
            lambda peer, tensors: got.extend(t for t in tensors if t.dtype == torch.int64)
        )
        for _ in range(3):  # each party takes the dealer role once
            ap.exp(ctx, x.shares)
            pc.max_last_dim(ctx, y.shares, with_index=True)
        remove()
        return got

    with puma.Simulator(network=wan, play_network=False) as sim:
        results = sim.run(fn)
    for r, tensors in enumerate(results):
        assert tensors
        stat, critical = chi_square_uniform_bytes(uniform_payload(tensors))
        assert stat < critical, (r, stat, critical)
