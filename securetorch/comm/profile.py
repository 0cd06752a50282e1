"""Network profiles: the link between the parties, as bandwidth and round-trip time.

A profile says what a network costs: ``projected_seconds`` is compute + rounds x RTT + bytes
/ bandwidth, the model by which a protocol's rounds and bytes become time on a link. A
``LocalCluster``, an ``InProcessCluster`` or a ``Simulator`` given a profile plays it: every
protocol round takes RTT + (the bytes this party sends in it) / bandwidth on top of its time
on loopback (``Links.exchange``), so a run takes what the projection says, which is an upper
bound on a real link (there a round's latency partly overlaps the peers' compute). A deployment's cluster file declares its
profile (``network = "wan"`` or a ``[network]`` table); nothing is played there.

Presets: ``lan`` (10 Gbps, 0.2 ms), ``puma`` (5 Gbps, 1 ms: PUMA's setting) and ``wan``
(100 Mbps, 40 ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NetworkProfile:
    """A link: ``bandwidth_bps`` (bits per second) and ``rtt_s`` (round-trip seconds)."""

    bandwidth_bps: float
    rtt_s: float
    name: str = ""

    def __post_init__(self) -> None:
        bandwidth, rtt = float(self.bandwidth_bps), float(self.rtt_s)
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"a network's bandwidth_bps must be a positive number, got {self.bandwidth_bps!r}")
        if not math.isfinite(rtt) or not 0 <= rtt <= 10:
            raise ValueError(f"a network's rtt_s must lie in [0, 10] seconds, got {self.rtt_s!r}")

    def round_seconds(self, sent_bytes: int) -> float:
        """What one protocol round adds on this link: a round trip, plus the bytes a party
        sends in it at the link's bandwidth."""
        return self.rtt_s + sent_bytes * 8 / self.bandwidth_bps

    def projected_seconds(self, compute_seconds: float, rounds: int, nbytes: int) -> float:
        """compute + rounds x RTT + bytes / bandwidth: a workload measured on loopback (its
        compute seconds, rounds and bytes), moved onto this link."""
        return compute_seconds + rounds * self.rtt_s + nbytes * 8 / self.bandwidth_bps

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth_bps": self.bandwidth_bps, "rtt_s": self.rtt_s, "name": self.name}

    def __str__(self) -> str:
        label = f"{self.name}: " if self.name else ""
        return f"{label}{self.bandwidth_bps / 1e9:g} Gbps, {self.rtt_s * 1e3:g} ms RTT"


PRESETS: dict[str, NetworkProfile] = {
    "lan": NetworkProfile(10e9, 0.2e-3, "lan"),
    "puma": NetworkProfile(5e9, 1e-3, "puma"),
    "wan": NetworkProfile(100e6, 40e-3, "wan"),
}


def cheapest(
    network: NetworkProfile | None,
    variants: Mapping[str, tuple[int, int]],
    fallback: str,
    work: Mapping[str, float] | None = None,
) -> str:
    """The protocol variant to run: of ``variants`` (name -> exact (rounds, bytes of all
    parties)), the one with the least time on ``network``, rounds x RTT + a party's bytes
    (a third of all: each party sends on its own links) / bandwidth + the local seconds
    ``work`` estimates for a variant whose local work is far above the others' (absent: 0),
    fewer bytes on a tie; without a network, ``fallback`` (the size rules tuned on
    loopback). A pure function of public facts, so every party picks the same."""
    if network is None:
        return fallback
    extra = work or {}

    def seconds(name: str) -> tuple[float, int]:
        rounds, nbytes = variants[name]
        return rounds * network.rtt_s + nbytes / 3 * 8 / network.bandwidth_bps + extra.get(name, 0.0), nbytes

    return min(variants, key=seconds)


Cost = tuple[int, int]  # exact (rounds, bytes of all parties) of a protocol run


def total_cost(costs: Iterable[Cost]) -> Cost:
    """The cost of protocols run one after the other: rounds and bytes add up."""
    rounds = nbytes = 0
    for r, b in costs:
        rounds, nbytes = rounds + r, nbytes + b
    return rounds, nbytes


def runs(plan: Sequence[str], chained: str) -> list[range]:
    """The steps of ``plan`` (one protocol variant per step) as they run: each stretch of
    consecutive ``chained`` steps together (every step of it but the last has its last round
    ride in the next one's first: ``chained_costs``), every other step alone."""
    out, start = [], 0
    while start < len(plan):
        end = start + 1
        if plan[start] == chained:
            while end < len(plan) and plan[end] == chained:
                end += 1
        out.append(range(start, end))
        start = end
    return out


def chained_costs(costs: Sequence[Cost], plan: Sequence[str], chained: str) -> list[Cost]:
    """Per step, the exact cost of steps run as ``runs`` groups them, from each step's own
    ``costs``: a round less for every ``chained`` step followed by another."""
    out = list(costs)
    for run in runs(plan, chained):
        for k in run[:-1]:
            out[k] = (out[k][0] - 1, out[k][1])
    return out


def parallel_cost(costs: Iterable[Cost]) -> Cost:
    """The cost of protocols run side by side (``session.parallel``): the most rounds, all
    the bytes."""
    rounds = nbytes = 0
    for r, b in costs:
        rounds, nbytes = max(rounds, r), nbytes + b
    return rounds, nbytes


def network_profile(value: str | NetworkProfile | Mapping[str, Any] | None) -> NetworkProfile | None:
    """A profile from a preset's name, a ``NetworkProfile``, or a mapping of
    ``bandwidth_bps`` and ``rtt_s`` (a cluster file's ``[network]`` table); None stays None."""
    if value is None or isinstance(value, NetworkProfile):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown network preset {value!r}: use one of {', '.join(PRESETS)} or a NetworkProfile")
        return PRESETS[value]
    if isinstance(value, Mapping):
        extra = set(value) - {"bandwidth_bps", "rtt_s", "name"}
        if extra or not {"bandwidth_bps", "rtt_s"} <= set(value):
            raise ValueError("a network is given by bandwidth_bps and rtt_s (and optionally a name)")
        numbers = (value["bandwidth_bps"], value["rtt_s"])
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise ValueError("a network's bandwidth_bps and rtt_s are numbers")
        return NetworkProfile(float(numbers[0]), float(numbers[1]), str(value.get("name", "")))
    raise ValueError(f"a network is a preset name, a NetworkProfile or a mapping, not {type(value).__name__}")


__all__ = ["PRESETS", "Cost", "NetworkProfile", "network_profile", "parallel_cost", "total_cost"]


def measured_profile(views: Sequence[Mapping[str, float]]) -> NetworkProfile:
    """The parties' views of their links (``Links.measure``) combined: the slowest round
    trip and the narrowest bandwidth, as the "measured" profile."""
    return NetworkProfile(min(v["bandwidth_bps"] for v in views), min(10.0, max(v["rtt_s"] for v in views)), "measured")
