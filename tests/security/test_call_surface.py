"""The call surface of a secure model: only declared inputs go in, only the declared output
comes out, and a client's one-hot input is checked by the parties before use."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import securetorch as puma
from securetorch.comm.stats import total
from securetorch.protocols.checks import one_hot_check_cost
from securetorch.runtime.verbs import Verb
from securetorch.tensor.payload import Private, SharePayload

from ..conftest import chi_square_uniform_bytes, received_tensors

transformers.logging.set_verbosity_error()

VOCAB = 30


@pytest.fixture(scope="module")
def bert(cluster):
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()  # fmt: skip
    secure_model = puma.secure(model, cluster=cluster)
    yield model, secure_model
    secure_model.close()


def token_ids(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "keyword",
    ["output_hidden_states", "output_attentions", "labels", "inputs_embeds", "use_cache", "return_dict", "head_mask"],
)
def test_undeclared_keywords_are_refused_before_anything_is_sent(cluster, bert, keyword) -> None:
    _, secure_model = bert
    cluster.reset_stats()
    value = token_ids() if keyword in ("labels",) else (torch.zeros(2, 5, 16) if keyword == "inputs_embeds" else True)
    with pytest.raises(puma.InputError, match=keyword) as info:
        secure_model(input_ids=token_ids(), **{keyword: value})
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert total(cluster.stats()).messages == 0


def test_declared_inputs_are_checked_for_dtype_shape_and_range(cluster, bert) -> None:
    _, secure_model = bert
    bad = {
        "attention_mask": (torch.ones(2, 5), "integer or bool"),
        "token_type_ids": (torch.zeros(2, 4, dtype=torch.long), r"shape \[2, 5\]"),
        "position_ids": (torch.full((2, 5), 10_000), r"lie in \[0, 512\)"),
    }
    for name, (value, why) in bad.items():
        with pytest.raises(puma.InputError, match=why):
            secure_model(input_ids=token_ids(), **{name: value})
    with pytest.raises(puma.InputError, match=r"attention_mask must lie in \[0, 2\)"):
        secure_model(input_ids=token_ids(), attention_mask=torch.full((2, 5), 3))


def onehot_of(ids: torch.Tensor) -> Private:
    return puma.private(torch.nn.functional.one_hot(ids, VOCAB), dtype=torch.int64)


def test_the_parties_refuse_what_a_driver_sends_past_its_own_checks(cluster, bert) -> None:
    """A driver that skips the client library's checks: the parties check again."""
    _, secure_model = bert
    forward = {"model": secure_model.key, "onehot": onehot_of(token_ids())}
    cases = [
        ({**forward, "inputs": {"output_hidden_states": torch.ones(2, 5, dtype=torch.long)}}, puma.InputError, "output_hidden_states is not accepted"),
        ({**forward, "inputs": {"attention_mask": torch.full((2, 5), 7)}}, puma.InputError, "attention_mask must lie"),
        ({**forward, "inputs": {}, "labels": torch.zeros(2, dtype=torch.long)}, ValueError, "takes no argument 'labels'"),
        ({"model": secure_model.key, "onehot": puma.private(torch.zeros(2, 5, VOCAB - 1, dtype=torch.long), dtype=torch.int64), "inputs": {}}, puma.InputError, "one-hot input must have shape"),
    ]  # fmt: skip
    for args, error, why in cases:
        with pytest.raises(error, match=why):
            cluster.call(Verb.FORWARD, args)


def test_only_the_declared_output_comes_back(cluster, bert) -> None:
    _, secure_model = bert
    out = secure_model(input_ids=token_ids())
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    assert out.last_hidden_state is not None and out.pooler_output is not None
    assert out.hidden_states is None and out.attentions is None and out.past_key_values is None
    raw = cluster.call(Verb.FORWARD, {"model": secure_model.key, "onehot": onehot_of(token_ids()), "inputs": {}})
    assert set(raw[0]["fields"]) == {"last_hidden_state", "pooler_output"}


def ring_shares(values: torch.Tensor) -> list[SharePayload]:
    """Replicated shares of arbitrary ring values, dealt without the driver's range check
    (what a malicious client could send)."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(-(2**63), 2**63 - 1, values.shape, generator=g, dtype=torch.int64)
    x1 = torch.randint(-(2**63), 2**63 - 1, values.shape, generator=g, dtype=torch.int64)
    parts = [x0, x1, values - x0 - x1]
    return [SharePayload(parts[r], parts[(r + 1) % 3], torch.int64) for r in range(3)]


def forged_forward(cluster, key: str, values: torch.Tensor) -> list:
    shares = ring_shares(values)
    return cluster._exchange(Verb.FORWARD, [{"model": key, "onehot": shares[r], "inputs": {}} for r in range(3)])


def test_inputs_that_are_not_one_hot_are_refused_by_the_parties(cluster, bert) -> None:
    model, secure_model = bert
    good = torch.nn.functional.one_hot(token_ids(), VOCAB).long()
    forged_forward(cluster, secure_model.key, good)  # the honest input passes
    attacks = {}
    two = good.clone()
    two[0, 0] *= 2  # a scaled row
    attacks["scaled row"] = two
    double = good.clone()
    double[1, 2, (int(token_ids()[1, 2]) + 1) % VOCAB] = 1  # a row with two ones
    attacks["two ones"] = double
    empty = good.clone()
    empty[0, 1] = 0  # a row of zeros
    attacks["empty row"] = empty
    wrap = good.clone()
    wrap[0, 3] = 0
    wrap[0, 3, 0] = -(2**63) + 1  # 1 + 2^63 and -2^63: sums to 1, squares sum to 1 mod 2^64
    wrap[0, 3, 1] = -(2**63)
    attacks["ring wrap"] = wrap
    fixed = good * (1 << 18)  # a one-hot in fixed point
    attacks["fixed-point ones"] = fixed
    negative = good.clone()
    negative[1, 0, 0] = -1
    negative[1, 0, 1] += 1
    attacks["minus one"] = negative
    for name, values in attacks.items():
        with pytest.raises(puma.InputError, match="not a one-hot matrix"):
            forged_forward(cluster, secure_model.key, values)
            pytest.fail(f"the parties used an input with a {name}")
    out = secure_model(input_ids=token_ids())  # the parties serve on
    with torch.no_grad():
        assert float((out.last_hidden_state - model(input_ids=token_ids()).last_hidden_state).abs().max()) <= 1e-2


def test_shares_that_do_not_fit_together_are_refused_by_the_parties(cluster, bert) -> None:
    """The check reads first shares; the embedding reads both. A client that adds d to every
    party's second share (where X = 0) passes a check of first shares alone while the
    embedding computes (X + d) T: a probe of the table. The parties compare shares too."""
    model, secure_model = bert
    good = torch.nn.functional.one_hot(token_ids(), VOCAB).long()
    probe = (1 - good) * (2**62)  # any ring values where X = 0
    for targets in ([0, 1, 2], [0], [1], [2]):  # second shares shifted at all three parties, or at one
        shares = ring_shares(good)
        for r in targets:
            shares[r] = SharePayload(shares[r].first, shares[r].second + probe, torch.int64)
        # all three: only the comparison of shares can tell; one: the one-hot test may tell first
        why = "shares of the input do not fit together" + ("" if len(targets) == 3 else "|not a one-hot matrix")
        with pytest.raises(puma.InputError, match=why):
            cluster._exchange(
                Verb.FORWARD, [{"model": secure_model.key, "onehot": shares[r], "inputs": {}} for r in range(3)]
            )
            pytest.fail("the parties used inconsistent shares")
    out = secure_model(input_ids=token_ids())  # the parties serve on
    with torch.no_grad():
        assert float((out.last_hidden_state - model(input_ids=token_ids()).last_hidden_state).abs().max()) <= 1e-2


def test_the_one_hot_check_costs_exactly_its_formula_and_an_owner_may_skip_it(cluster) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    checked = puma.secure(model, cluster=cluster)
    trusted = puma.secure(model, cluster=cluster, check_inputs=False)
    ids = token_ids(2, 7)
    costs = []
    try:
        for secure_model in (checked, trusted):
            with cluster.cost_report() as report:
                cluster.reset_stats()
                secure_model(input_ids=ids)
            costs.append((total(cluster.stats()), report))
    finally:
        checked.close()
        trusted.close()
    (with_check, report), (without, _) = costs
    rounds, nbytes = one_hot_check_cost(2 * 7, VOCAB)
    assert with_check.bytes_sent - without.bytes_sent == nbytes
    assert with_check.rounds - without.rounds == rounds
    booked = [r for r in report.records if r["op"] == "one_hot_check"]
    assert len(booked) == 1 and booked[0]["bytes"] == nbytes and booked[0]["rounds"] == rounds


def _check_view(onehot):
    from securetorch.protocols.checks import check_one_hot
    from securetorch.session.context import current

    with received_tensors() as received:
        check_one_hot(current(), onehot.shares)
    return received


def test_what_the_checker_receives_is_uniform(cluster) -> None:
    ids = torch.randint(0, 2000, (64, 64), generator=torch.Generator().manual_seed(1))
    onehot = puma.private(torch.nn.functional.one_hot(ids, 2000), dtype=torch.int64)
    received = cluster.run(_check_view, onehot)
    payload = received[0][0]  # party 0: party 1's masked share of (z, s); then party 2's digests
    assert payload.dtype == torch.int64 and payload.numel() == 64 * 64 * 2000 + 64 * 64
    stat, critical = chi_square_uniform_bytes(payload.numpy().tobytes())
    assert stat < critical
    assert [t.numel() for t in received[0][1:]] == [32, 32]  # SHA-256 of w_2 and of x_0 (party 0 holds x_0)
    for r in (1, 2):  # a digest of the share this party holds, then party 0's verdict
        assert [t.numel() for t in received[r]] == [32, 1]
