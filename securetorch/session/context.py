"""The state a protocol runs in: this party's rank, links, PRG streams, fixed-point setting,
and the session's cost recorder. The party server makes one context per driver session and
makes it current while that session's job runs.

"Current" is a ``contextvars.ContextVar``, not a module global: each thread (and each asyncio
task) sees its own, so three parties can run as threads of one process (the simulator)
without seeing each other's state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from securetorch.comm.links import Links
from securetorch.comm.profile import NetworkProfile
from securetorch.comm.stats import CommStats
from securetorch.prg import AesPrg

if TYPE_CHECKING:
    from securetorch.session.costs import CostRecorder


@dataclass(frozen=True)
class PartyKeys:
    """P_i's keys (ABY3 §2.2): k_i (shared with P_{i-1}), k_{i+1} (shared with P_{i+1}), one
    key common to all three parties, and one private key."""

    prev: bytes
    next: bytes
    common: bytes
    private: bytes


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device`` a party can compute on here; ``ValueError`` naming it
    when torch does not know it or this machine lacks it (a party checks at start, before
    any job)."""
    try:
        resolved = torch.device(device)
        torch.empty(1, device=resolved)
    except (RuntimeError, AssertionError, TypeError) as exc:
        raise ValueError(f"device {str(device)!r} is not available here: {exc}") from None
    if resolved.type == "meta":
        raise ValueError("device 'meta' holds no data: a party computes on 'cpu' or an accelerator")
    return resolved


class PartyContext:
    """Everything a protocol needs from the party running it.

    ``prg_prev`` draws from k_i (also held by P_{i-1}), ``prg_next`` from k_{i+1} (also held
    by P_{i+1}), ``prg_common`` from the key of all three, ``prg_private`` from this party's
    own key. ``start_job`` restarts every stream at the job's number and resets the dealer
    rotation, so each job starts from the same state on all parties. Job numbers come from
    the party that orders the jobs (party 0) and only grow, so no stream is ever drawn twice.

    ``device`` is where this party computes (its links' device: what they receive lands
    there): every tensor a protocol makes is made there, and the PRG streams draw onto it.

    ``network`` is the link the parties are on (declared in the cluster file, or played by
    local parties), for which protocols with variants pick theirs (``comm.profile.cheapest``);
    None keeps the size rules tuned on loopback.

    ``store`` keeps a session's state across its jobs (functions run by ``Cluster.run`` may
    use it); ``models`` is the party's model store (set by the server); ``recorder`` the
    session's ``CostRecorder`` while a cost report runs.
    """

    def __init__(
        self,
        rank: int,
        frac_bits: int,
        compare_bits: int,
        net: Links,
        keys: PartyKeys,
        network: NetworkProfile | None = None,
    ) -> None:
        self.rank = rank
        self.network = network  # the link protocol variants are chosen for (comm.profile.cheapest)
        self.frac_bits = frac_bits
        self.compare_bits = compare_bits
        self.net = net
        self.device = net.device
        self._keys = keys
        self.store: dict[str, object] = {}
        self.models: Any = None
        self.recorder: CostRecorder | None = None
        self.progress: Callable[[int, int], None] | None = None  # set by the server per job
        self.start_job(0)

    def start_job(self, job: int) -> None:
        """Restart every PRG stream at ``job`` (the server starts the job on the links too)."""
        self.prg_prev = AesPrg(self._keys.prev, job, self.device)
        self.prg_next = AesPrg(self._keys.next, job, self.device)
        self.prg_common = AesPrg(self._keys.common, job, self.device)
        self.prg_private = AesPrg(self._keys.private, job, self.device)
        self._dealer_turn = 0

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % 3

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % 3

    def prg_with(self, peer: int) -> AesPrg:
        """The stream this party shares with ``peer``."""
        if peer == self.next_rank:
            return self.prg_next
        if peer == self.prev_rank:
            return self.prg_prev
        raise ValueError(f"party {self.rank} shares no key with party {peer}")

    def next_dealer(self) -> int:
        """Rotate the helper role of dealer-assisted protocols over the parties (same on all)."""
        dealer = self._dealer_turn
        self._dealer_turn = (dealer + 1) % 3
        return dealer

    @property
    def stats(self) -> CommStats:
        return self.net.stats


_CURRENT: ContextVar[PartyContext | None] = ContextVar("securetorch_party", default=None)


@contextlib.contextmanager
def activate(ctx: PartyContext | None) -> Iterator[PartyContext | None]:
    """Make ``ctx`` the current party's context (in this thread) inside the ``with`` block."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_or_none() -> PartyContext | None:
    """The current context, or None outside a party's job."""
    return _CURRENT.get()


def current() -> PartyContext:
    """The context of the party this code runs in (inside ``Cluster.run`` or ``simulate``)."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError(
            "not inside a party: secure operations run in functions passed to "
            "Cluster.run / puma.run_local / puma.simulate (or in a module returned by puma.secure)"
        )
    return ctx


def rank() -> int:
    """This party's rank: 0, 1 or 2."""
    return current().rank


def stats() -> CommStats:
    """A snapshot of this party's communication counters."""
    return current().stats.copy()
