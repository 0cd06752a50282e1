"""What a protocol sees of the transport: one party's links to the other two.

``Links`` numbers the rounds and keeps the exact counters; a transport supplies how one
message leaves (``_deliver``) and how the next one from a peer arrives (``_take``): ZeroMQ
between processes or machines (``network.PeerNetwork``), memory between threads of one
process (``memory.MemoryNetwork``). Both count the same bytes, messages and rounds for the
same protocol, because they count here.

Receive hooks (``add_receive_hook``) see every message a party receives, after the counters:
view tests use them to check that what a party receives is uniform.

The link emulator: with ``emulated`` set to a ``NetworkProfile``, every round takes the
profile's RTT plus the bytes this party sends in it at the profile's bandwidth on top of
its time on loopback, so a run plays compute + rounds x RTT + bytes / bandwidth, the model
``NetworkProfile.projected_seconds`` computes (an upper bound on a real link, where a
round's latency partly overlaps the peers' compute). ``measure`` times the links the other
way round: what a round trip and a bulk round take (``securetorch netcheck``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from securetorch.comm.frames import payload_bytes
from securetorch.comm.profile import NetworkProfile
from securetorch.comm.stats import CommStats
from securetorch.errors import PartyError

ReceiveHook = Callable[[int, list[torch.Tensor]], None]
"""Called with (sender rank, tensors) for every message this party receives."""
NETCHECK_MAX_BYTES = 64 << 20
NETCHECK_MAX_ROUNDS = 1000


class PeerAbort(PartyError):
    """A peer abandoned the job this party is running (it already told the third party)."""


class Links:
    """One party's links to its two peers: rounds, counters, hooks. What arrives is moved to
    ``device`` (the party's) before the hooks and the protocol see it."""

    def __init__(self, rank: int, timeout: float, device: torch.device | str = "cpu") -> None:
        self.rank = rank
        self.timeout = timeout
        self.device = torch.device(device)
        self.stats = CommStats()
        self.job = 0
        self.step = 0
        self._hooks: list[ReceiveHook] = []
        self.emulated: NetworkProfile | None = None

    def begin_job(self, job: int) -> None:
        """Job ``job`` starts: steps count from zero again."""
        self.job = job
        self.step = 0

    def exchange(
        self, sends: Mapping[int, Sequence[torch.Tensor]], recv_from: Iterable[int]
    ) -> dict[int, list[torch.Tensor]]:
        """One protocol round: send to some peers, then receive from some peers.

        Every party calls ``exchange`` for every round (with empty arguments if it takes no
        part), so step numbers and round counts stay equal on all three parties.
        """
        return self.exchange_together([(sends, recv_from)])[0]

    def exchange_together(
        self, rounds: Sequence[tuple[Mapping[int, Sequence[torch.Tensor]], Iterable[int]]]
    ) -> list[dict[int, list[torch.Tensor]]]:
        """The rounds of several protocols running side by side (``session.parallel``) as
        one round: every message of every protocol leaves first, then each protocol's
        arrive, each at a step of its own (so the transports keep them apart). Counted as
        one round; every party passes as many protocols' rounds in the same order."""
        started = time.perf_counter()
        stats, deliver, take = self.stats, self._deliver, self._take
        base = self.step
        stats.rounds += 1
        sent = 0
        step = base
        for sends, _ in rounds:
            step += 1
            self.step = step
            for peer, tensors in sends.items():
                tensors = list(tensors)
                deliver(peer, tensors)
                sent += payload_bytes(tensors)
            stats.messages += len(sends)
        stats.bytes_sent += sent
        received: list[dict[int, list[torch.Tensor]]] = []
        on_cpu, hooks = self.device.type == "cpu", self._hooks
        step = base
        for _, recv_from in rounds:
            step += 1
            self.step = step
            got = {}
            for peer in recv_from:
                tensors = take(peer)
                if not on_cpu:
                    tensors = [t.to(self.device) for t in tensors]
                stats.bytes_received += payload_bytes(tensors)
                for hook in list(hooks) if hooks else ():
                    hook(peer, tensors)
                got[peer] = tensors
            received.append(got)
        if self.emulated is not None:
            time.sleep(self.emulated.round_seconds(sent))
        stats.seconds += time.perf_counter() - started
        return received

    def measure(self, random_bytes: Callable[[int], torch.Tensor], nbytes: int, rounds: int) -> dict[str, float]:
        """This party's view of its links, as the cost model reads them
        (``NetworkProfile.round_seconds``): the median seconds of ``rounds`` rounds in which it
        sends one byte to each peer (the RTT), and of three rounds in which it sends ``nbytes``
        from ``random_bytes`` to each peer, less that RTT, for the bandwidth (twice the payload
        sent per round). Every party calls it in the same job (``Cluster.netcheck``)."""
        if not 1 <= rounds <= NETCHECK_MAX_ROUNDS or not 1 <= nbytes <= NETCHECK_MAX_BYTES:
            raise ValueError(f"netcheck: 1..{NETCHECK_MAX_ROUNDS} rounds and 1..{NETCHECK_MAX_BYTES} bytes")
        payload = random_bytes(nbytes)
        peers = [r for r in range(3) if r != self.rank]

        def median_round(tensor: torch.Tensor, count: int) -> float:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                self.exchange({peer: [tensor] for peer in peers}, peers)
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        rtt = median_round(payload[:1], rounds)
        bulk = median_round(payload, 3)
        return {"rtt_s": rtt, "bandwidth_bps": 2 * payload.numel() * 8 / max(bulk - rtt, 1e-9)}

    def add_receive_hook(self, hook: ReceiveHook) -> Callable[[], None]:
        """Call ``hook(sender, tensors)`` on every message received from now on; returns a
        function that removes it."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)

    @contextlib.contextmanager
    def received(self) -> Iterator[list[torch.Tensor]]:
        """Collect every tensor this party receives inside the ``with`` block."""
        tensors: list[torch.Tensor] = []
        remove = self.add_receive_hook(lambda _peer, got: tensors.extend(got))
        try:
            yield tensors
        finally:
            remove()

    def _deliver(self, peer: int, tensors: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _take(self, peer: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the transport's resources."""
