"""Exact communication counters of one party."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CommStats:
    """What one party put on and took off the party-to-party wire.

    ``bytes_*`` count tensor payload bytes (bits travel packed, eight to a byte); ``messages``
    counts messages sent; ``rounds`` counts protocol steps that exchanged messages. Every
    party counts every step, so all three report the same ``rounds``. ``seconds`` is the
    wall time spent inside rounds (sending, and waiting for peers' messages).
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0
    rounds: int = 0
    seconds: float = 0.0

    def __add__(self, other: CommStats) -> CommStats:
        return CommStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def __sub__(self, other: CommStats) -> CommStats:
        return CommStats(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def copy(self) -> CommStats:
        return CommStats(**asdict(self))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def total(stats: list[CommStats]) -> CommStats:
    """Bytes and messages summed over parties; rounds as the largest count (they agree), and
    the longest time in rounds."""
    out = CommStats()
    for s in stats:
        out.bytes_sent += s.bytes_sent
        out.bytes_received += s.bytes_received
        out.messages += s.messages
        out.rounds = max(out.rounds, s.rounds)
        out.seconds = max(out.seconds, s.seconds)
    return out
