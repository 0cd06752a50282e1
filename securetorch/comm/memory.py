"""Links between three parties that are threads of one process (the simulator's transport).

A ``MemoryHub`` is the medium: one mailbox per party, keyed like the ZeroMQ transport's
inbox by (sender, job, step), and one condition variable that wakes a receiver when its
message arrives or its job is abandoned. A sent tensor is copied into the mailbox, so the
receiver owns what it gets, as it would after a wire. Counters, rounds and receive hooks are
``Links``' own, so a protocol costs exactly the same bytes, messages and rounds here as
between processes.

No isolation: every party's state is in one address space. This transport is for tests,
notebooks and experiments; deployments use ``network.PeerNetwork``.
"""

from __future__ import annotations

import threading
import time

import torch

from securetorch.comm.links import Links, PeerAbort
from securetorch.errors import PartyError, ProtocolError


class MemoryHub:
    """The shared medium of three ``MemoryNetwork`` links."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._boxes: list[dict[tuple[int, int, int], list[torch.Tensor]]] = [{}, {}, {}]
        self._aborted: dict[int, str] = {}

    def links(self, rank: int, timeout: float, device: torch.device | str = "cpu") -> MemoryNetwork:
        """Party ``rank``'s links (what it receives lands on ``device``)."""
        return MemoryNetwork(self, rank, timeout, device)

    def post(self, sender: int, receiver: int, job: int, step: int, tensors: list[torch.Tensor]) -> None:
        copies = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
        with self._changed:
            box = self._boxes[receiver]
            if (sender, job, step) in box:
                raise ProtocolError(f"party {receiver}: two messages from party {sender} for step {step}")
            box[(sender, job, step)] = copies
            self._changed.notify_all()

    def take(self, receiver: int, sender: int, job: int, step: int, timeout: float) -> list[torch.Tensor]:
        """The message for ``receiver`` from ``sender`` at (job, step), waiting up to ``timeout``."""
        key = (sender, job, step)
        deadline = time.monotonic() + timeout
        with self._changed:
            while key not in self._boxes[receiver]:
                if job in self._aborted:
                    raise PeerAbort(f"party {receiver}: {self._aborted[job]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PartyError(
                        f"party {receiver}: no message from party {sender} within {timeout:.1f} s "
                        f"(job {job}, step {step}); did party {sender} take another path?"
                    )
                self._changed.wait(left)
            return self._boxes[receiver].pop(key)

    def abort(self, job: int, reason: str) -> None:
        """Job ``job`` is abandoned: wake every party waiting in it."""
        with self._changed:
            self._aborted.setdefault(job, reason)
            self._changed.notify_all()

    def finish(self, job: int) -> None:
        """Job ``job`` is over: drop its leftover messages and its abort."""
        with self._changed:
            for box in self._boxes:
                for key in [k for k in box if k[1] == job]:
                    del box[key]
            self._aborted.pop(job, None)


class MemoryNetwork(Links):
    """One party's links through a ``MemoryHub``."""

    def __init__(self, hub: MemoryHub, rank: int, timeout: float, device: torch.device | str = "cpu") -> None:
        super().__init__(rank, timeout, device)
        self.hub = hub

    def _deliver(self, peer: int, tensors: list[torch.Tensor]) -> None:
        self.hub.post(self.rank, peer, self.job, self.step, tensors)

    def _take(self, peer: int) -> list[torch.Tensor]:
        return self.hub.take(self.rank, peer, self.job, self.step, self.timeout)
