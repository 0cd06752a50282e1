"""SharedTensor behaviour: shape ops share-wise, public mixing, clear refusals."""

from __future__ import annotations

import pytest
import torch

import securetorch as puma
from securetorch.comm.profile import total_cost
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS

U = 2.0**-18


def shape_ops(a: torch.Tensor) -> dict[str, object]:
    x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    p = torch.ones(2, 3, 4, dtype=torch.float64)
    ops = {
        "view": x.view(6, 4),
        "reshape": x.reshape(4, 6),
        "torch_reshape": torch.reshape(x, (-1,)),
        "permute": x.permute(2, 0, 1),
        "transpose": x.transpose(0, 2),
        "t": x[0].t(),
        "T": x[0].T,
        "contiguous": x.transpose(0, 1).contiguous(),
        "getitem": x[1, :, 1:3],
        "getitem_mask": x[:, torch.tensor([True, False, True])],
        "cat": torch.cat([x, p, x], dim=1),
        "stack": torch.stack([x, x], dim=0),
        "split": x.split([1, 3], dim=2),
        "chunk": torch.chunk(x, 2, dim=2),
        "expand": x[:, :1].expand(2, 5, 4),
        "squeeze": x[:, :1].squeeze(1),
        "unsqueeze": x.unsqueeze(-1),
        "flatten": x.flatten(1),
        "unflatten": x.flatten().unflatten(0, (4, 6)),
        "unbind": x.unbind(0),
        "narrow": x.narrow(2, 1, 2),
        "select": x.select(1, 2),
        "movedim": x.movedim(0, -1),
        "clone": x.clone(),
        "detach": x.detach(),
        "flip": x.flip(0),
        "tril": torch.tril(x[0]),
        "index_select": torch.index_select(x, 2, torch.tensor([3, 0])),
        "gather": torch.gather(x, 2, torch.zeros(2, 3, 1, dtype=torch.long)),
        "view_as": x.flatten().view_as(x),
    }

    def open_(v):
        return v.reveal() if isinstance(v, puma.SharedTensor) else type(v)(open_(t) for t in v)

    return {k: open_(v) for k, v in ops.items()}


def test_shape_ops_match_plaintext(sim) -> None:
    a = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) / 8 - 1.3
    p = torch.ones(2, 3, 4, dtype=torch.float64)
    want = {
        "view": a.view(6, 4),
        "reshape": a.reshape(4, 6),
        "torch_reshape": a.reshape(-1),
        "permute": a.permute(2, 0, 1),
        "transpose": a.transpose(0, 2),
        "t": a[0].t(),
        "T": a[0].T,
        "contiguous": a.transpose(0, 1),
        "getitem": a[1, :, 1:3],
        "getitem_mask": a[:, torch.tensor([True, False, True])],
        "cat": torch.cat([a, p, a], dim=1),
        "stack": torch.stack([a, a]),
        "split": a.split([1, 3], dim=2),
        "chunk": torch.chunk(a, 2, dim=2),
        "expand": a[:, :1].expand(2, 5, 4),
        "squeeze": a[:, :1].squeeze(1),
        "unsqueeze": a.unsqueeze(-1),
        "flatten": a.flatten(1),
        "unflatten": a.flatten().unflatten(0, (4, 6)),
        "unbind": a.unbind(0),
        "narrow": a.narrow(2, 1, 2),
        "select": a.select(1, 2),
        "movedim": a.movedim(0, -1),
        "clone": a,
        "detach": a,
        "flip": a.flip(0),
        "tril": torch.tril(a[0]),
        "index_select": a[:, :, [3, 0]],
        "gather": a[:, :, :1],
        "view_as": a,
    }
    got = sim.run(shape_ops, a)[0]
    for name, expected in want.items():
        values = got[name]
        if isinstance(expected, torch.Tensor):
            values, expected = [values], [expected]
        for v, e in zip(values, expected, strict=True):
            assert v.shape == e.shape, name
            assert float((v - e).abs().max()) <= U, name


def test_public_operands_cost_nothing(sim) -> None:
    def fn():
        x = puma.share(torch.ones(3, 4) if puma.rank() == 0 else None, owner=0)
        before = puma.stats()
        y = (x + torch.ones(4)) * 2 - x * torch.tensor(3) + 1
        torch.cat([y, torch.zeros(1, 4)])
        return puma.stats() - before

    assert all(s.bytes_sent == 0 and s.rounds == 0 for s in sim.run(fn))


def _public_products(x: torch.Tensor, w: torch.Tensor, table: torch.Tensor, ids: torch.Tensor):
    xs = puma.share(x if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
    onehot = puma.share(
        torch.nn.functional.one_hot(ids, table.shape[0]) if puma.rank() == 1 else None, owner=1, dtype=torch.int64
    )
    before = puma.stats()
    right, left = xs @ w, w.T @ xs.T
    assert (puma.stats() - before).rounds == 0  # each product's truncation is owed until read
    for product in (right, left):
        assert product.shares is not None
    middle = puma.stats()
    rows = onehot @ table
    after = puma.stats()
    linear = torch.nn.functional.linear(xs, w.T.contiguous())  # an [out, in] weight: cut into its rows
    assert (xs @ torch.zeros(48, 0)).shape == (5, 0)  # an empty public operand
    return right.reveal(), left.reveal(), rows.reveal(), middle - before, after - middle, linear.reveal()


@pytest.mark.parametrize("block", [1 << 21, 7, 300])
def test_public_weights_are_widened_block_by_block_with_the_same_result(sim, monkeypatch, block) -> None:
    """A public bf16 weight on either side of a secret matrix, row-major (cut into rows of the
    inner dim: partial products summed) or transposed (cut into output columns), widened to the
    ring a block at a time (also in blocks that split it unevenly): the product within the
    truncation's error, one truncation (2 rounds) per product; a secret one-hot times a public
    float table is exact (the table's fixed-point rows) and local."""
    from securetorch.tensor import arith_ops

    monkeypatch.setattr(arith_ops, "PUBLIC_BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 48, generator=g, dtype=torch.float64)
    w = (torch.randn(48, 40, generator=g) / 7).to(torch.bfloat16)
    table = torch.randn(30, 16, generator=g, dtype=torch.float64)
    ids = torch.tensor([3, 0, 29, 3])
    right, left, rows, product_cost, lookup_cost, linear = sim.run(_public_products, x, w, table, ids)[0]
    want = x @ w.double()
    for got in (right, left.T, linear):
        assert float((got - want).abs().max()) < 48 * 2 * U
    assert torch.equal(rows, puma.ring.decode(puma.ring.encode(table[ids], 18), 18).to(rows.dtype))
    assert product_cost.rounds == 4  # two products, one truncation each
    assert lookup_cost.rounds == 0 and lookup_cost.bytes_sent == 0


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        (lambda x: torch.sin(x), "torch.sin(SharedTensor)"),
        (lambda x: bool(x.sum()), "Tensor.__bool__"),
        (lambda x: x.item(), "Tensor.item"),
        (lambda x: x.numpy(), "Tensor.numpy"),
        (lambda x: x.long(), "Tensor.long"),
        (lambda x: x.to(torch.int64), "Tensor.to to torch.int64"),
        (lambda x: x[x.reshape(-1)[:1].long()], "Tensor.long"),
        (lambda x: torch.erf(x), "torch.erf(SharedTensor)"),
        (lambda x: torch.index_select(x, 0, x.long()), "Tensor.long"),
        (lambda x: torch.cumsum(x, 0), "torch.cumsum(SharedTensor, int)"),
    ],
)
def test_unsupported_ops_raise_naming_the_op(sim, expr, name) -> None:
    def fn():
        x = puma.share(torch.ones(3) if puma.rank() == 0 else None, owner=0)
        return expr(x)

    with pytest.raises(NotImplementedError) as info:
        sim.run(fn)
    assert name in str(info.value)


def test_secret_index_refused(sim) -> None:
    def fn():
        x = puma.share(torch.ones(3) if puma.rank() == 0 else None, owner=0)
        return torch.gather(x, 0, x)

    with pytest.raises(NotImplementedError, match="secret index"):
        sim.run(fn)


def test_shared_tensor_is_a_tensor_with_metadata(sim) -> None:
    def fn():
        x = puma.share(torch.ones(2, 5) if puma.rank() == 1 else None, owner=1)
        return [isinstance(x, torch.Tensor), tuple(x.shape), x.size(1), x.dim(), x.ndim, x.numel(), len(x), repr(x)]

    assert sim.run(fn)[0] == [True, (2, 5), 5, 2, 2, 10, 2, "SharedTensor(shape=(2, 5), dtype=torch.float32)"]


def test_outside_a_party_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="not inside a party"):
        puma.share(torch.ones(2), owner=0)


def test_a_power_of_two_scaling_rides_in_the_products_truncation(sim) -> None:
    """A secret @ secret product owes its truncation until its shares are read, so that a
    public power-of-two factor (attention's 1/sqrt(64)) rides in it: one truncation, 2
    rounds; any other factor (or one that would take it past 62 bits), or a read in between,
    takes a truncation of its own."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, 5, 8, generator=g) * 3, torch.randn(2, 8, 6, generator=g) * 3

    def fn(a, b):
        x, y = (puma.share(v if puma.rank() == 0 else None, owner=0) for v in (a, b))
        outs, rounds = [], []
        for scale in (lambda p: p * 0.125, lambda p: p / 8, lambda p: 2 * p, lambda p: p * 0.3, lambda p: p * 2.0**-50):
            before = puma.stats()
            out = scale(torch.matmul(x, y)) + 1.0
            assert out.shares is not None  # the truncation runs when the shares are read
            rounds.append((puma.stats() - before).rounds)
            outs.append(out.reveal())
        owed = x @ y
        _ = owed.shares  # read first: the scaling is a truncation of its own
        before = puma.stats()
        owed = owed * 0.125
        rounds.append((puma.stats() - before).rounds)
        in_place = x @ y
        in_place *= 0.5
        outs += [owed.reveal(), in_place.reveal()]
        return outs, rounds

    outs, rounds = sim.run(fn, a, b)[0]
    product = (a.double() @ b.double()).float()
    wants = [product * 0.125 + 1, product / 8 + 1, 2 * product + 1, product * 0.3 + 1, product * 2.0**-50 + 1]
    wants += [product * 0.125, product * 0.5]
    for got, want in zip(outs, wants, strict=True):
        assert float((got - want).abs().max()) <= 1e-4
    assert rounds == [2, 2, 2, 4, 4, 2]  # 2^-50 would take the truncation past 62 bits: one of its own


def _owed_sums(x, w1, b1, w2, residual, gamma, beta):
    from securetorch.protocols import approx as ap
    from securetorch.protocols import arithmetic as pa

    F = torch.nn.functional
    xs, w1s, b1s, w2s, rs, gs, bs = (
        puma.share(v if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
        for v in (x, w1, b1, w2, residual, gamma, beta)
    )
    from securetorch.session.context import current

    ctx = current()
    f = ctx.frac_bits
    rows, count = x.shape[0] * x.shape[1], w1.shape[0]
    costs = {}
    before = puma.stats()
    h = F.linear(xs, w1s, b1s) + rs + 0.5  # a bias, a secret residual and a public term: still owed
    viewed = h.view(rows, count).transpose(0, 1).float().T  # reshaped and retyped: owed, the same truncation
    costs["owed"] = puma.stats() - before
    before = puma.stats()
    normed = F.layer_norm(h, (count,), gs, bs, 1e-5)  # truncated with its row means
    costs["layer_norm"] = puma.stats() - before
    before = puma.stats()
    plain = h.reveal()  # read once: the view shares it
    same = viewed.reveal()
    costs["views"] = puma.stats() - before
    q, k = xs @ w2s, xs @ (w2s * 1.0)  # two owed operands of one product: truncated together
    before = puma.stats()
    product = q @ k.transpose(-1, -2)
    costs["together"] = puma.stats() - before
    scores = product.reveal()
    before = puma.stats()
    large = F.linear(xs, w1s) + 4e7  # too large to join the product's scale: its truncation runs first
    costs["too_large"] = puma.stats() - before
    unmerged = F.layer_norm(F.linear(xs, w1s), (count,), gs, bs, 1e-5)
    assert unmerged.shares is not None
    expected = {
        "layer_norm": ap.layer_norm_cost(rows, count, True, False, f, ctx.compare_bits, ctx.network, owed_bits=f),
        "merged": ap.row_means_cost(rows, count, f, f, ctx.network),
        "unmerged": ap.layer_norm_cost(rows, count, True, False, f, ctx.compare_bits, ctx.network),
        "truncation": pa.truncation_cost(rows * count, f, ctx.network),
        "together": pa.truncate_together_cost([(q.numel(), f)] * 2, ctx.network),
    }
    return normed.reveal(), unmerged.reveal(), large.reveal(), plain, same, scores, costs, expected


def test_sums_views_and_layer_norms_ride_in_an_owed_truncation(sim) -> None:
    """A linear layer's product owes its truncation through a bias, a secret residual, a
    public term, a reshaping and a dtype change (no round until read), and a view shares it
    with the sum (one truncation for both). A LayerNorm on such a sum truncates it together
    with its row means: exactly ``layer_norm_cost`` with the owed bits, 2 rounds fewer than
    the truncation and then the LayerNorm. Two owed operands of one product are truncated in
    one call (2 rounds, not 4). A public term too large for the truncation's range takes the
    product's truncation first. Every value within the fixed-point bounds of the float64
    reference."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 6, 32, generator=g, dtype=torch.float64)
    w1, b1 = (
        torch.randn(32, 32, generator=g, dtype=torch.float64) / 4,
        torch.randn(32, generator=g, dtype=torch.float64),
    )
    w2 = torch.randn(32, 16, generator=g, dtype=torch.float64) / 4
    residual = torch.randn(2, 6, 32, generator=g, dtype=torch.float64) * 3 + 1
    gamma, beta = torch.randn(32, generator=g, dtype=torch.float64), torch.randn(32, generator=g, dtype=torch.float64)
    results = sim.run(_owed_sums, x, w1, b1, w2, residual, gamma, beta)
    normed, unmerged, large, plain, same, scores, _, expected = results[0]
    costs = {  # rounds (the same on every party) and the bytes of all parties
        name: (results[0][6][name].rounds, sum(r[6][name].bytes_sent for r in results)) for name in results[0][6]
    }
    F = torch.nn.functional
    h = F.linear(x, w1, b1) + residual + 0.5
    assert float((plain - h).abs().max()) <= 32 * 2 * U
    assert torch.equal(same.double(), plain.view(12, 32).double())
    assert float((normed - F.layer_norm(h, (32,), gamma, beta, 1e-5)).abs().max()) <= 1e-3
    assert float((unmerged - F.layer_norm(F.linear(x, w1), (32,), gamma, beta, 1e-5)).abs().max()) <= 1e-3
    assert float((large - F.linear(x, w1) - 4e7).abs().max()) <= 32 * 2 * U
    q = x @ w2
    assert float((scores - q @ q.transpose(-1, -2)).abs().max()) <= 1e-3
    assert costs["owed"] == (0, 0)
    assert costs["layer_norm"] == expected["layer_norm"]
    merged, unmerged_cost, truncation = expected["merged"], expected["unmerged"], expected["truncation"]
    assert merged[0] == 2 and expected["layer_norm"][0] == unmerged_cost[0] + truncation[0] - 2
    assert costs["views"][0] == 2  # two reveals, no truncation
    assert costs["together"] == expected["together"]
    assert expected["together"][0] == 2
    assert costs["too_large"] == truncation


def _truncated_once(x, w, residual):
    F = torch.nn.functional
    xs, ws, rs = (puma.share(v if puma.rank() == 0 else None, owner=0, dtype=torch.float64) for v in (x, w, residual))
    rounds = {}
    p = F.linear(xs, ws)
    before = puma.stats()
    _ = p @ p.mT  # both operands are p: one truncation, the product owed
    rounds["p @ p.mT"] = (puma.stats() - before).rounds
    p = F.linear(xs, ws)
    before = puma.stats()
    _ = p.mT.mT @ p.mT  # two views of one product: one truncation
    _ = p.shares  # the product itself: already truncated
    rounds["two views"] = (puma.stats() - before).rounds
    h = F.linear(xs, ws) + rs
    normed = F.layer_norm(h.float(), (w.shape[0],))  # a retyped input: the residual h shares its truncation
    before = puma.stats()
    _ = h.shares
    rounds["residual after LayerNorm"] = (puma.stats() - before).rounds
    h = F.linear(xs, ws) + rs
    rows = F.layer_norm(h.view(-1, w.shape[0]), (w.shape[0],))  # a reshaped view: the sum shares its truncation
    before = puma.stats()
    _ = h.shares
    rounds["residual after LayerNorm on a view"] = (puma.stats() - before).rounds
    flat = F.linear(xs, ws).view(-1)  # a secret weight's product viewed like a plain tensor's
    return F.linear(xs, ws), flat, normed, rows, h, rounds  # owed results come back settled


def test_an_owed_product_is_truncated_once_whatever_reads_it(sim) -> None:
    """A product read as both operands of a product, through two views, or by a LayerNorm on
    a retyped or reshaped view while the residual sum is read later, is truncated once (2
    rounds, then none); a secret weight's linear output can be viewed as a plain tensor can; an owed
    result returned from the parties' function is settled there (``Simulator.run``)."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
    residual = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    product, flat, normed, rows, h, rounds = sim.run(_truncated_once, x, w, residual)[0]
    want = torch.nn.functional.linear(x, w)
    assert float((product - want).abs().max()) <= 16 * 2 * U
    assert float((flat - want.reshape(-1)).abs().max()) <= 16 * 2 * U
    want_normed = torch.nn.functional.layer_norm(want + residual, (16,))
    assert float((normed.double() - want_normed).abs().max()) <= 1e-3
    assert float((rows - want_normed.reshape(-1, 16)).abs().max()) <= 1e-3
    assert float((h - want - residual).abs().max()) <= 16 * 2 * U
    assert rounds == {
        "p @ p.mT": 2,
        "two views": 2,
        "residual after LayerNorm": 0,
        "residual after LayerNorm on a view": 0,
    }


def _attention(scores, x, w):
    F = torch.nn.functional
    s, xs, ws = (puma.share(v if puma.rank() == 0 else None, owner=0, dtype=torch.float64) for v in (scores, x, w))
    rounds = {}
    before = puma.stats()
    p = F.softmax(s, -1)
    v = F.linear(xs, ws)  # owed: its truncation rides beside the reciprocal
    deferred = p.to(torch.float32).to(torch.float64) @ v  # a retype keeps the division owed
    _ = deferred.shares
    rounds["divided after"] = (puma.stats() - before).rounds
    again = p.reveal()  # read itself: divided now, the numerators times 1/s
    before = puma.stats()
    p = F.softmax(s, -1)
    v = F.linear(xs, ws)
    _ = p.shares  # divided first, as before
    _ = (p @ v).shares
    rounds["divided first"] = (puma.stats() - before).rounds
    other_dim = F.softmax(s, 1)  # not over the last dim: divided at once
    vector = F.softmax(s, -1) @ xs[0, 0, :, 0]  # a vector on the right: the rows' dim goes
    return deferred, again, (p @ v), other_dim, vector, rounds


def test_a_softmax_divides_after_its_product_with_v(sim) -> None:
    """softmax(s) @ V runs as (e @ V) / s, in the order the policy picks (the reciprocal, or
    its factors, beside V's truncation and e @ V's, their product owed), in fewer rounds than
    dividing first; the same probabilities read directly (after the product used them), over
    another dim, and by the old order."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 4
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64) / 2
    deferred, again, first, other_dim, vector, rounds = sim.run(_attention, scores, x, w)[0]
    probs = torch.softmax(scores, -1)
    want = probs @ torch.nn.functional.linear(x, w)
    assert float((deferred - want).abs().max()) <= 2e-3
    assert float((first - want).abs().max()) <= 2e-3
    assert float((again - probs).abs().max()) <= 2e-3
    assert float((other_dim - torch.softmax(scores, 1)).abs().max()) <= 2e-3
    assert float((vector - probs @ x[0, 0, :, 0]).abs().max()) <= 2e-3 * float(x[0, 0, :, 0].abs().max())
    rows, f, bits = 2 * 3 * 5, DEFAULT_FRAC_BITS, DEFAULT_COMPARE_BITS
    value = pa.truncation_cost(x.numel(), f)  # V's own truncation
    assert ap.division_order(rows, 7, rows * 6, value, f, bits, None) != "first"
    division = ap.division_cost(rows, 7, rows * 6, value, f, bits, None)  # the owed product read
    assert rounds["divided after"] == total_cost([
        ap.softmax_numerators_cost(tuple(scores.shape)), division
    ])[0] < rounds["divided first"]  # fmt: skip
