"""Protocols side by side (``session.parallel``): their rounds travel together, their results
and bytes are those of a sequential run."""

from __future__ import annotations

import pytest
import torch

import securetorch as puma
from securetorch.comm.profile import parallel_cost
from securetorch.comm.stats import total
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.session.context import current
from securetorch.session.parallel import parallel


def _both_ways(v: torch.Tensor):
    ctx = current()
    x = pa.share_from_party(ctx, v if ctx.rank == 0 else None, owner=0)
    runs = []
    for side_by_side in (False, True):
        fns = [lambda: pc.less_than_zero(ctx, x), lambda: ap.exp(ctx, x), lambda: pa.truncate(ctx, x, 3)]
        before = puma.stats()
        outs = parallel(ctx, fns) if side_by_side else [fn() for fn in fns]
        cost = puma.stats() - before
        runs.append(([pa.reveal(ctx, y) for y in outs], cost))
    return runs


def test_side_by_side_rounds_are_the_longest_and_bytes_the_sum(sim) -> None:
    v = (torch.linspace(-10, 0.5, 500, dtype=torch.float64) * 2**18).round().long()
    results = sim.run(_both_ways, v)
    (sequential, _), (side_by_side, _) = results[0]
    assert torch.equal(sequential[0], side_by_side[0]) and torch.equal(sequential[0], (v < 0).long())
    for a, b in zip(sequential[1:], side_by_side[1:], strict=True):
        assert int((a - b).abs().max()) <= 16  # truncations round up or down by their masks
    one, both = total([r[0][1] for r in results]), total([r[1][1] for r in results])
    costs = [pc.less_than_zero_cost(500, 44), ap.exp_cost(500), pa.truncation_cost(500, 3)]
    assert (one.rounds, one.bytes_sent) == (sum(c[0] for c in costs), sum(c[1] for c in costs))
    assert (both.rounds, both.bytes_sent) == parallel_cost(costs) == (12, one.bytes_sent)


def test_a_failing_branch_raises_in_the_caller(sim) -> None:
    def fn():
        ctx = current()
        x = pa.share_from_party(ctx, torch.ones(4, dtype=torch.int64) if ctx.rank == 0 else None, owner=0)

        def fails():
            pa.truncate(ctx, x, 2)
            raise ValueError("branch 1 failed after a round")

        with pytest.raises(ValueError, match="branch 1 failed"):
            parallel(ctx, [lambda: ap.exp(ctx, x), fails])
        before = puma.stats()
        nested = parallel(
            ctx, [lambda: parallel(ctx, [lambda: pa.truncate(ctx, x, 1)] * 2), lambda: pa.truncate(ctx, x, 2)]
        )
        spent = (puma.stats() - before).rounds  # inside a branch one after the other: 2 + 2 rounds
        assert spent == 2 * pa.truncation_cost(4, 1)[0] and len(nested[0]) == 2
        return pa.reveal(ctx, pa.truncate(ctx, pa.mul_public(x, torch.tensor(4)), 1))  # the links work on

    assert set(sim.run(fn)[0].tolist()) <= {2, 3}  # floor(4 / 2) or one more


def test_branches_run_in_the_callers_thread_and_a_failure_unwinds_the_others(sim) -> None:
    """Branches are coroutines of the calling thread (no thread per branch); when one fails,
    the others still running are unwound (their ``finally`` blocks run) before the error
    reaches the caller, and the party's links are its own again."""
    import threading

    def fn():
        ctx = current()
        x = pa.share_from_party(ctx, torch.ones(4, dtype=torch.int64) if ctx.rank == 0 else None, owner=0)
        caller, seen, unwound = threading.get_ident(), [], []

        def long_run():
            try:
                seen.append(threading.get_ident())
                return ap.exp(ctx, x)
            finally:
                unwound.append(True)

        def fails():
            seen.append(threading.get_ident())
            pa.truncate(ctx, x, 2)
            raise ValueError("branch 1 failed")

        links = ctx.net
        with pytest.raises(ValueError, match="branch 1 failed"):
            parallel(ctx, [long_run, fails])
        assert seen == [caller, caller] and unwound == [True] and ctx.net is links
        return True

    assert sim.run(fn) == [True, True, True]
