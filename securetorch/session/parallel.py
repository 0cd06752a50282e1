"""Protocols side by side: independent protocol runs whose rounds go out together.

``parallel(ctx, fns)`` runs each of ``fns`` (SPMD code of this party, each a protocol run
that does not depend on the others' results) so that round r of every one that is still
running travels in one round of the links (``Links.exchange_together``): the rounds of the
whole are the most any one takes, the bytes the sum. Each function runs as a greenlet (a
coroutine with a stack of its own, in this thread), one at a time in a fixed order
(function 0 until it reaches its next round, then function 1, ...), so every party draws
its PRG streams and rotates its dealers in the same order as its peers, as in a sequential
run. A switch between branches costs about a microsecond, where a thread's hand-over cost
tens of microseconds and two OS threads per call. ``comm.profile.parallel_cost`` is the
matching cost.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from greenlet import GreenletExit, getcurrent, greenlet

from securetorch.comm.links import Links
from securetorch.session.context import PartyContext

_Round = tuple[Mapping[int, Sequence[torch.Tensor]], list[int]]


class _BranchLinks:
    """The links as a branch sees them: a round hands its messages to the caller's greenlet,
    which sends every branch's together, and resumes with this branch's replies."""

    def __init__(self, links: Links, caller: greenlet) -> None:
        self.links = links
        self._caller = caller

    def exchange(
        self, sends: Mapping[int, Sequence[torch.Tensor]], recv_from: Iterable[int]
    ) -> dict[int, list[torch.Tensor]]:
        return self._caller.switch((sends, list(recv_from)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.links, name)


def parallel(ctx: PartyContext, fns: Sequence[Callable[[], Any]]) -> list[Any]:
    """The results of ``fns``, run side by side: their rounds travel together (see the
    module's docstring). Called inside a branch (a protocol that runs parts side by side,
    itself run beside another), the functions run one after the other: their rounds add up.
    A branch's exception is raised here, after the branches still running are unwound."""
    if isinstance(ctx.net, _BranchLinks):
        return [fn() for fn in fns]
    links = ctx.net
    caller = getcurrent()
    results: list[Any] = [None] * len(fns)
    branches = []
    for fn in fns:
        branch = greenlet(fn, parent=caller)
        branch.gr_context = contextvars.copy_context()
        branches.append(branch)
    ctx.net = _BranchLinks(links, caller)  # type: ignore[assignment]
    try:
        replies: dict[int, dict[int, list[torch.Tensor]]] = {}
        alive = list(range(len(fns)))
        while alive:
            posted: list[_Round] = []
            for index in alive:  # each runs until its next round, or to its end
                branch = branches[index]
                out = branch.switch(replies.pop(index)) if index in replies else branch.switch()
                if branch.dead:
                    results[index] = out
                else:
                    posted.append(out)
            alive = [i for i in alive if not branches[i].dead]
            if alive:
                replies = dict(zip(alive, links.exchange_together(posted), strict=True))
    finally:
        ctx.net = links
        for branch in branches:  # after a failure: unwind the branches still running
            if not branch.dead:
                branch.throw(GreenletExit)
    return results
