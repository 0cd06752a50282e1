"""Protocols side by side: independent protocol runs whose rounds go out together.

``parallel(ctx, fns)`` runs each of ``fns`` (SPMD code of this party, each a protocol run
that does not depend on the others' results) so that round r of every one that is still
running travels in one round of the links (``Links.exchange_together``): the rounds of the
whole are the most any one takes, the bytes the sum. Each function runs in a thread of its
own, but only one at a time, in a fixed order (function 0 until it reaches its next round,
then function 1, ...), so every party draws its PRG streams and rotates its dealers in the
same order as its peers, as in a sequential run. ``comm.profile.parallel_cost`` is the matching cost.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from securetorch.comm.links import Links
from securetorch.session.context import PartyContext


class _Abandoned(BaseException):
    """Raised in a branch whose run was abandoned (another branch or the links failed)."""


class _BranchLinks:
    """The links as a branch sees them: its rounds wait for the other branches' ones."""

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner

    def exchange(
        self, sends: Mapping[int, Sequence[torch.Tensor]], recv_from: Iterable[int]
    ) -> dict[int, list[torch.Tensor]]:
        return self._runner.wait_for_round(sends, recv_from)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner.links, name)


class _Runner:
    def __init__(self, links: Links, count: int) -> None:
        self.links = links
        self.current = 0
        self.posted: dict[int, tuple[Mapping[int, Sequence[torch.Tensor]], list[int]]] = {}
        self.replies: dict[int, dict[int, list[torch.Tensor]]] = {}
        self.resume = [threading.Semaphore(0) for _ in range(count)]
        self.paused = threading.Semaphore(0)
        self.abandoned = False

    def wait_for_round(
        self, sends: Mapping[int, Sequence[torch.Tensor]], recv_from: Iterable[int]
    ) -> dict[int, list[torch.Tensor]]:
        branch = self.current
        self.posted[branch] = (sends, list(recv_from))
        self.paused.release()
        self.resume[branch].acquire()
        if self.abandoned:
            raise _Abandoned
        return self.replies.pop(branch)


def parallel(ctx: PartyContext, fns: Sequence[Callable[[], Any]]) -> list[Any]:
    """The results of ``fns``, run side by side: their rounds travel together (see the
    module's docstring). The functions must not call ``parallel`` themselves."""
    if isinstance(ctx.net, _BranchLinks):
        raise RuntimeError("parallel: branches cannot run branches of their own")
    runner = _Runner(ctx.net, len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException | None] = [None] * len(fns)
    done = [False] * len(fns)

    def branch(index: int) -> None:
        runner.resume[index].acquire()
        try:
            if not runner.abandoned:
                results[index] = fns[index]()
        except _Abandoned:
            pass
        except BaseException as exc:  # handed to the caller's thread
            errors[index] = exc
        finally:
            done[index] = True
            runner.paused.release()

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(branch, i), daemon=True) for i in range(len(fns))
    ]
    for thread in threads:
        thread.start()
    ctx.net = _BranchLinks(runner)  # type: ignore[assignment]
    try:
        alive = list(range(len(fns)))
        while alive:
            for index in alive:  # each runs until its next round, or to its end
                runner.current = index
                runner.resume[index].release()
                runner.paused.acquire()
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                raise failed
            alive = [i for i in alive if not done[i]]
            if alive:
                got = runner.links.exchange_together([runner.posted.pop(i) for i in alive])
                runner.replies.update(zip(alive, got, strict=True))
    finally:
        ctx.net = runner.links
        if not all(done):
            runner.abandoned = True
            for index, finished in enumerate(done):
                if not finished:
                    runner.resume[index].release()
        for thread in threads:
            thread.join()
    return results
