"""Network profiles (``comm/profile.py``): presets and custom links, the projection of a
loopback measurement onto a link, and the link emulator: a workload played on a profile takes
at least rounds x RTT plus its bytes at the bandwidth, with the same outputs, bytes and
rounds as on loopback. Local clusters play their profile; a cluster file declares one."""

from __future__ import annotations

import time

import pytest
import torch

import securetorch as puma
from securetorch.comm.profile import PRESETS, NetworkProfile, network_profile
from securetorch.comm.stats import total
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.protocols.boolean import pack_bits, xor_public
from securetorch.runtime.deployment import ClusterConfig, ConfigError, local_config
from securetorch.session.context import current


def test_presets_and_custom_profiles() -> None:
    assert network_profile("wan") == NetworkProfile(100e6, 40e-3, "wan") == PRESETS["wan"]
    assert (PRESETS["lan"].bandwidth_bps, PRESETS["lan"].rtt_s) == (10e9, 0.2e-3)
    assert (PRESETS["puma"].bandwidth_bps, PRESETS["puma"].rtt_s) == (5e9, 1e-3)
    custom = network_profile({"bandwidth_bps": 1e9, "rtt_s": 0.005})
    assert custom == NetworkProfile(1e9, 0.005)
    assert network_profile(None) is None and network_profile(custom) is custom
    for bad in ("moon", {"bandwidth_bps": 1e9}, {"bandwidth_bps": -1, "rtt_s": 0}, {"bandwidth_bps": 1e9, "rtt_s": 60},
                {"bandwidth_bps": True, "rtt_s": 0}, {"bandwidth_bps": 1e9, "rtt_s": 0, "loss": 0.1}, 5):  # fmt: skip
        with pytest.raises(ValueError):
            network_profile(bad)


def test_the_projection_is_compute_plus_rounds_times_rtt_plus_bytes_over_bandwidth() -> None:
    wan = PRESETS["wan"]
    assert wan.projected_seconds(1.5, 2100, 60_000_000) == pytest.approx(1.5 + 2100 * 0.04 + 60e6 * 8 / 100e6)
    assert wan.round_seconds(1_000_000) == pytest.approx(0.04 + 0.08)


def _products(x: torch.Tensor, times: int):
    s = puma.share(x if puma.rank() == 0 else None, owner=0)
    before = puma.stats()
    for _ in range(times):
        s = s * s
    return s.reveal(), puma.stats() - before


def test_a_played_link_takes_its_rounds_and_bytes_and_changes_nothing_else() -> None:
    x = torch.rand(20_000) * 0.5 + 0.5
    slow = NetworkProfile(bandwidth_bps=80e6, rtt_s=0.03)
    with puma.Simulator() as sim:
        plain = sim.run(_products, x, 3)
    with puma.Simulator(network=slow) as sim:
        started = time.perf_counter()
        played = sim.run(_products, x, 3)
        seconds = time.perf_counter() - started
    assert [(c.rounds, c.bytes_sent) for _, c in played] == [(c.rounds, c.bytes_sent) for _, c in plain]
    assert torch.allclose(played[0][0], plain[0][0], atol=1e-3)
    cost = max((c for _, c in played), key=lambda c: c.bytes_sent)
    assert seconds >= cost.rounds * slow.rtt_s + cost.bytes_sent * 8 / slow.bandwidth_bps  # every round paid the link


def test_local_clusters_play_their_profile() -> None:
    with puma.InProcessCluster(network="wan") as cluster:
        assert cluster.network == PRESETS["wan"]
        started = time.perf_counter()
        (_, cost), *_ = cluster.run(_products, torch.ones(10), 2)
        assert time.perf_counter() - started >= cost.rounds * 0.04
    with puma.LocalCluster(network=NetworkProfile(1e9, 0.02)) as cluster:  # the party processes play it
        started = time.perf_counter()
        (_, cost), *_ = cluster.run(_products, torch.ones(10), 2)
        assert time.perf_counter() - started >= cost.rounds * 0.02


PARTIES = "".join(
    f'[[parties]]\nrank = {r}\ncontrol = "tcp://127.0.0.1:{7000 + r}"\npeer = "tcp://127.0.0.1:{7100 + r}"\n'
    for r in range(3)
)
DRIVER = '[[drivers]]\nname = "alice"\nrole = "owner"\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        ('network = "wan"\n', PRESETS["wan"]),
        ("[network]\nbandwidth_bps = 1e9\nrtt_s = 0.002\n", NetworkProfile(1e9, 0.002)),
        ("", None),
    ],
)
def test_a_cluster_file_declares_its_network(tmp_path, text, expected) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(text + PARTIES + DRIVER)
    config = ClusterConfig.load(path)
    assert config.network == expected
    assert ClusterConfig.from_json(config.to_json()).network == expected


def test_a_cluster_file_with_an_unknown_network_names_it(tmp_path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('network = "moon"\n' + PARTIES + DRIVER)
    with pytest.raises(ConfigError, match="network: unknown network preset 'moon'"):
        ClusterConfig.load(path)


def _truncate_and_inject(x: torch.Tensor, n_bits: int):
    """A truncation of x's product by 2^-18 and a bit injection of n_bits bits, with the
    cost of each."""
    ctx = current()
    xs = puma.share(x if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    before = puma.stats()
    truncated = pa.truncate(ctx, pa.mul_public(xs.shares, torch.tensor(3 << 18)), 18)
    middle = puma.stats()
    bits = torch.arange(n_bits) % 3 == 0
    zeros = torch.zeros((n_bits + 7) // 8, dtype=torch.uint8)
    arith = pc.bit_to_arith(ctx, xor_public(ctx, (zeros, zeros.clone()), pack_bits(bits)), (n_bits,))
    after = puma.stats()
    return (
        puma.SharedTensor(truncated, torch.float64).reveal(),
        puma.SharedTensor(arith, torch.int64).reveal(),
        middle - before,
        after - middle,
    )


def test_the_network_picks_each_protocol_variant_and_both_give_the_same_result() -> None:
    """Truncation (2 rounds, 41 B per element, or 3 rounds, 26.5 B) and bit injection (1 round,
    48 B per bit, or 2 rounds, 24.1 B): on a lan link the extra round costs less than the
    bytes it saves, on a wan link more, so the parties pick differently for the same sizes,
    get the same values, and spend exactly what the cost functions say for their network."""
    n, n_bits = 80_000, 50_000
    x = torch.linspace(-100, 100, n, dtype=torch.float64)
    seen = {}
    for name in ("lan", "wan"):
        profile = PRESETS[name]
        with puma.Simulator(network=profile) as sim:
            results = sim.run(_truncate_and_inject, x, n_bits)
        truncated, arith = results[0][:2]
        assert float((truncated - 3 * x).abs().max()) <= 2.5 * 2**-18  # 3 x's encoding error (1.5 units) + 1
        assert torch.equal(arith, (torch.arange(n_bits) % 3 == 0).long())
        measured = (total([r[2] for r in results]), total([r[3] for r in results]))
        assert (measured[0].rounds, measured[0].bytes_sent) == pa.truncation_cost(n, 18, profile)
        assert (measured[1].rounds, measured[1].bytes_sent) == pc.bit_to_arith_cost(n_bits, 64, profile)
        seen[name] = (measured[0].rounds, measured[1].rounds)
    assert seen == {"lan": (3, 2), "wan": (2, 1)}  # lan: the byte-optimal ones; wan: the round-optimal ones


def test_netcheck_measures_the_link_the_parties_play() -> None:
    """``Cluster.netcheck`` on parties playing 1 Gbps and 20 ms: the round trip and the
    bandwidth it reports are those of the link (the bounds leave room for a loaded machine)."""
    with puma.InProcessCluster(network=NetworkProfile(1e9, 0.02)) as cluster:
        measured = cluster.netcheck(rounds=5, megabytes=2)
    assert measured.name == "measured"
    assert 0.02 <= measured.rtt_s < 0.035
    assert 0.3e9 < measured.bandwidth_bps <= 1.05e9


@pytest.mark.parametrize(("rounds", "megabytes"), [(0, 1.0), (1001, 1.0), (5, 100.0)])
def test_netcheck_refuses_sizes_out_of_bounds_before_anything_is_sent(rounds, megabytes) -> None:
    with puma.InProcessCluster() as cluster:
        cluster.reset_stats()
        with pytest.raises(ValueError, match=r"netcheck: 1\.\.1000 rounds and 1\.\.67108864 bytes"):
            cluster.netcheck(rounds=rounds, megabytes=megabytes)
        assert all(s.bytes_sent == 0 and s.rounds == 0 for s in cluster.stats())


def _comparison(x: torch.Tensor):
    s = puma.share(x if puma.rank() == 0 else None, owner=0)
    before = puma.stats()
    below = (s < 0).reveal()
    return below, puma.stats() - before


def test_a_declared_profile_picks_its_variants_without_playing_them() -> None:
    """``play_network=False``: the parties pick protocol variants for the profile (here the
    dealt tables of a comparison on wan, the bit circuit on loopback) and report exactly
    the played run's rounds and bytes, without waiting out its round trips."""
    x = torch.randn(3000, generator=torch.Generator().manual_seed(5))
    with puma.Simulator(network="wan") as sim:
        started = time.perf_counter()
        played = sim.run(_comparison, x)
        played_seconds = time.perf_counter() - started
    with puma.Simulator(network="wan", play_network=False) as sim:
        started = time.perf_counter()
        declared = sim.run(_comparison, x)
        declared_seconds = time.perf_counter() - started
    with puma.Simulator() as sim:
        loopback = sim.run(_comparison, x)
    assert [(c.rounds, c.bytes_sent) for _, c in declared] == [(c.rounds, c.bytes_sent) for _, c in played]
    assert torch.equal(declared[0][0], x < 0) and torch.equal(played[0][0], x < 0)
    assert declared[0][1].rounds < loopback[0][1].rounds
    assert played_seconds >= played[0][1].rounds * PRESETS["wan"].rtt_s > declared_seconds


def test_a_local_cluster_file_keeps_whether_its_network_is_played() -> None:
    config = local_config(18, 44, 5.0, None, {}, PRESETS["wan"], play_network=False)
    again = ClusterConfig.from_json(config.to_json())
    assert (again.network, again.play_network) == (PRESETS["wan"], False)
    assert ClusterConfig.from_json(local_config(18, 44, 5.0, None, {}, PRESETS["lan"]).to_json()).play_network
