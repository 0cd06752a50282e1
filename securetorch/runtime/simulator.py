"""Three parties in one process: SPMD code on three threads linked in memory.

``Simulator.run(fn, *args)`` does what ``Cluster.run`` does (``private(t)`` arguments arrive
secret-shared, a ``SharedTensor`` in a result comes back as its plaintext, results in rank
order) without starting processes, pickling the function or crossing a socket: each party
is a thread with its own ``PartyContext`` (current through a context variable) and the
parties talk through a ``MemoryHub``. The protocols run unchanged, so outputs, bytes,
messages and rounds equal those of a ``LocalCluster``. An exception in a party is raised
here as itself, with its own traceback; the other parties are woken (``PeerAbort``) instead of
waiting for a message that will not come.

No isolation: the three parties share this process's memory. Use it for tests, notebooks
and experiments, never to keep a secret from anyone who runs the process.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from securetorch.comm.links import PeerAbort
from securetorch.comm.memory import MemoryHub
from securetorch.comm.profile import NetworkProfile, network_profile
from securetorch.comm.stats import CommStats
from securetorch.prg import new_key
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.runtime import libc
from securetorch.session import costs
from securetorch.session.context import PartyContext, PartyKeys, activate, check_device
from securetorch.tensor.payload import (
    RANKS,
    arrive,
    deal_tree,
    from_shared,
    map_structure,
    reconstruct_tree,
)
from securetorch.tensor.shared import SharedTensor


class Simulator:
    """Three in-process parties for SPMD code (``run``), with their counters and cost report.

    ``frac_bits`` and ``compare_bits`` as for ``LocalCluster``; ``timeout``: seconds a party
    waits for a peer's message before raising ``PartyError`` (a party that took another
    path through the code); ``network``: a profile (``"lan"``, ``"puma"``, ``"wan"`` or a
    ``NetworkProfile``) the parties pick protocol variants for and the links play (unless
    ``play_network`` is False); ``device``: where the parties compute (``"cpu"``, or an
    accelerator such as ``"cuda"``: every share, PRG draw and message lands there, and
    results come back on the CPU). State a function keeps in ``current().store`` lasts until
    ``close()``, as in a cluster session.
    """

    def __init__(
        self,
        frac_bits: int = DEFAULT_FRAC_BITS,
        compare_bits: int = DEFAULT_COMPARE_BITS,
        timeout: float = 60.0,
        network: str | NetworkProfile | None = None,
        play_network: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 4 <= compare_bits <= 64 or not 0 <= frac_bits <= 30:
            raise ValueError("need 0 <= frac_bits <= 30 and 4 <= compare_bits <= 64")
        self.device = check_device(device)
        self.network = network_profile(network)
        self.frac_bits = frac_bits
        self.compare_bits = compare_bits
        self.hub = MemoryHub()
        pairwise, common = [new_key() for _ in RANKS], new_key()
        self.contexts = [
            PartyContext(
                r,
                frac_bits,
                compare_bits,
                self.hub.links(r, timeout, self.device),
                PartyKeys(prev=pairwise[r], next=pairwise[(r + 1) % 3], common=common, private=new_key()),
                self.network,
            )
            for r in RANKS
        ]
        if play_network:
            for ctx in self.contexts:
                ctx.net.emulated = self.network
        self._jobs = itertools.count(1)
        self._threads = ThreadPoolExecutor(3, thread_name_prefix="securetorch-party")
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` in each party (SPMD); the three results in rank order."""
        if self._closed:
            raise RuntimeError("this Simulator is closed")
        job = next(self._jobs)
        calls = deal_tree((args, kwargs), self.frac_bits, self.compare_bits)
        futures = [self._threads.submit(self._party, r, job, fn, calls[r]) for r in RANKS]
        del calls
        outcomes: list[Any] = []
        failures: list[BaseException] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except BaseException as exc:  # re-raised below, the cause first
                failures.append(exc)
        self.hub.finish(job)
        if failures:
            raise next((e for e in failures if not isinstance(e, PeerAbort)), failures[0])
        return reconstruct_tree(outcomes, self.frac_bits)

    def _party(self, rank: int, job: int, fn: Callable[..., Any], call: Any) -> Any:
        ctx = self.contexts[rank]
        ctx.start_job(job)
        ctx.net.begin_job(job)
        args, kwargs = map_structure(call, lambda v: arrive(v, ctx.device))
        try:
            with activate(ctx):  # results inside too: an owed truncation runs when they are read
                result = fn(*args, **kwargs)
                return map_structure(result, lambda v: from_shared(v) if isinstance(v, SharedTensor) else v)
        except BaseException as exc:
            if not isinstance(exc, PeerAbort):
                self.hub.abort(job, f"party {rank} raised {type(exc).__name__}: {exc}")
                exc.add_note(f"raised in party {rank} (simulated, job {job})")
            raise

    def stats(self) -> list[CommStats]:
        """The parties' communication counters, in rank order."""
        return [ctx.stats.copy() for ctx in self.contexts]

    def reset_stats(self) -> None:
        for ctx in self.contexts:
            ctx.net.stats = CommStats()

    @contextlib.contextmanager
    def cost_report(self) -> Iterator[costs.CostReport]:
        """What the runs inside the ``with`` block cost, per op (as ``Cluster.cost_report``)."""
        report = costs.CostReport()
        for ctx in self.contexts:
            costs.start(ctx)
        try:
            yield report
        finally:
            report.entries[:] = costs.combine([costs.stop(ctx) for ctx in self.contexts]).entries

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._threads.shutdown(wait=True)
            for ctx in self.contexts:
                ctx.net.close()
            release_freed_memory()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def release_freed_memory() -> None:
    """Give the memory that in-process parties have freed back to the operating system:
    collect garbage, then trim glibc's malloc arenas. Each party thread allocates from an
    arena of its own, and glibc keeps what they free; without this a closed in-process
    cluster that ran BERT-base on 128 tokens left its process gigabytes larger. Elsewhere
    than glibc: the collection only."""
    gc.collect()
    libc.trim_malloc()


def simulate(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """One shot: run SPMD ``fn`` on three in-process parties (a ``Simulator``); the three
    results in rank order."""
    with Simulator() as sim:
        return sim.run(fn, *args, **kwargs)
