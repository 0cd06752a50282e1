"""``puma.check``: a dry run on the driver, with no parties, that lists what the secure path
cannot run, found by the handlers the parties run (``tensor/dryrun.py``)."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from securetorch.runtime import cluster as cluster_module
from securetorch.session.context import current_or_none
from securetorch.tensor import SharedTensor
from securetorch.tensor.dryrun import NO_PROTOCOL, REVEALS, dry_run, secret
from securetorch.tensor.registry import HANDLERS

try:
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights

hf.logging.set_verbosity_error()
F = torch.nn.functional

V = 120
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V)
SUPPORTED = {
    "BertModel": hf.BertConfig(**SMALL),
    "BertForSequenceClassification": hf.BertConfig(**SMALL, num_labels=3),
    "GPT2LMHeadModel": hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V),
    "LlamaForCausalLM": hf.LlamaConfig(**SMALL, num_key_value_heads=2),
    "ViTModel": hf.ViTConfig(**{**SMALL, "vocab_size": None}, image_size=16, patch_size=8),  # pixels, conv2d
}


def build(name: str, config: hf.PretrainedConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(hf, name)(config).eval()


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach parties fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("puma.check started a cluster")

    for cls in (cluster_module.Cluster, cluster_module.LocalCluster, cluster_module.InProcessCluster):
        monkeypatch.setattr(cls, "__init__", refuse)


@pytest.mark.parametrize("name", SUPPORTED)
def test_a_supported_model_has_no_problems(no_cluster, name) -> None:
    report = puma.check(build(name, SUPPORTED[name]))
    assert isinstance(report, puma.CheckReport)
    assert report.model == name
    assert report.problems == ()
    assert report.ok
    assert "runs securely" in str(report)
    report.raise_for_problems()  # nothing to raise
    assert current_or_none() is None  # the dry run's stand-in context is gone


def test_an_activation_without_a_protocol_is_listed_under_every_layer(no_cluster) -> None:
    assert F.mish not in HANDLERS, "pick an activation that has no secure protocol"
    report = puma.check(build("BertModel", hf.BertConfig(**{**SMALL, "num_hidden_layers": 3}, hidden_act="mish")))
    assert not report.ok
    assert [(p.function, p.module, p.detail, p.count) for p in report.problems] == [
        ("torch.nn.functional.mish", f"encoder.layer.{i}.intermediate.intermediate_act_fn", NO_PROTOCOL, 1)
        for i in range(3)
    ]
    assert report.problems[0].arguments.startswith("SharedTensor")
    lines = str(report).splitlines()
    assert len(lines) == 4
    assert lines[1].strip().startswith("encoder.layer.0.intermediate.intermediate_act_fn: torch.nn.functional.mish(")
    with pytest.raises(NotImplementedError, match=r"encoder\.layer\.2\.intermediate\.intermediate_act_fn"):
        report.raise_for_problems()


def test_a_decoder_is_checked_in_its_forward_its_prefill_and_a_cached_step(no_cluster) -> None:
    report = puma.check(build("LlamaForCausalLM", hf.LlamaConfig(**SMALL, num_key_value_heads=2, hidden_act="mish")))
    assert [(p.function, p.module, p.count) for p in report.problems] == [
        ("torch.nn.functional.mish", f"model.layers.{i}.mlp.act_fn", 3) for i in range(2)
    ]
    assert "[3 calls]" in str(report)


def test_a_real_model_with_an_unsupported_function(no_cluster) -> None:
    # ESM's feed-forward computes GeLU as x/2 (1 + erf(x/sqrt 2)) with torch.erf
    assert torch.erf not in HANDLERS
    config = hf.EsmConfig(**SMALL, pad_token_id=1, mask_token_id=2)
    report = puma.check(build("EsmModel", config))
    assert [(p.function, p.module) for p in report.problems] == [
        ("torch.erf", f"encoder.layer.{i}.intermediate") for i in range(2)
    ]


def test_a_handler_refusing_its_arguments_is_listed_with_its_reason(no_cluster, monkeypatch) -> None:
    """A BERT whose intermediate layer applies dropout in training mode: the dropout handler
    itself refuses, and the check reports its reason."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.intermediate_act_fn(self.dense(hidden_states)), 0.1, training=True)

    monkeypatch.setattr(hf.models.bert.modeling_bert.BertIntermediate, "forward", forward)
    report = puma.check(build("BertModel", hf.BertConfig(**SMALL)))
    assert [(p.function, p.module) for p in report.problems] == [
        ("torch.nn.functional.dropout", f"encoder.layer.{i}.intermediate") for i in range(2)
    ]
    assert report.problems[0].detail == "dropout in training mode (secure inference runs in eval mode)"


def test_the_dry_run_runs_the_handlers_own_checks_and_continues() -> None:
    with dry_run() as run:
        x = secret((2, 3))
        public = torch.ones(2, 3)
        assert isinstance(x, SharedTensor) and x.device.type == "cpu"
        y = x**x  # secret exponent: refused by the pow handler
        z = torch.pow(y, 2.5)  # an exponent it has no protocol for
        w = F.softmax(z @ x.transpose(0, 1), dim=-1)  # interactive protocols: computed on stand-ins
        public += w.sum()  # a secret written into a public tensor: refused before anything is computed
        if w.sum() > 0:  # control flow on a secret
            w = w * 2
        v = torch.erf(w)  # no handler
        out = torch.cat([v, x[:, :2]], dim=0)
    assert isinstance(out, SharedTensor) and tuple(out.shape) == (4, 2) and out.dtype == torch.float32
    found = [(p.function, p.detail) for p in run.problems]
    assert found == [
        ("torch.Tensor.__pow__", "torch.pow needs a public scalar exponent"),
        ("torch.pow", "torch.pow with exponent 2.5 (supported: 1..64, 0.5, -0.5, -1)"),
        ("torch.Tensor.add_", "torch.Tensor.add_ would write a secret into a public tensor"),
        ("torch.Tensor.__bool__", REVEALS),
        ("torch.erf", NO_PROTOCOL),
    ]
    assert all(p.module == "" for p in run.problems)
    assert current_or_none() is None


def test_a_large_vocabulary_costs_no_memory(no_cluster) -> None:
    """Stand-in shares are meta tensors: a LLaMA with a 128k-token vocabulary checks without
    materialising a share of its tables (or of the one-hot product with them)."""
    table = secret((128_256, 4096))
    assert all(share.is_meta for share in table.shares)
    config = hf.LlamaConfig(**{**SMALL, "vocab_size": 128_256, "hidden_size": 64}, num_key_value_heads=2)
    with no_init_weights():
        model = hf.LlamaForCausalLM(config).eval()
    assert puma.check(model).ok


def test_a_bert_base_shaped_model_checks_quickly(no_cluster) -> None:
    """12 layers of BERT-base (weights allocated, not initialised); the time is reported, not
    asserted (timings live in the benchmarks)."""
    with no_init_weights():
        model = hf.BertModel(hf.BertConfig()).eval()
    report = puma.check(model)
    assert report.ok
    print(f"puma.check(BERT-base, 12 layers): {report.seconds:.3f} s")


def test_a_model_secure_refuses_is_refused_the_same_way(no_cluster) -> None:
    moe = build("MixtralForCausalLM", hf.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=2))
    for model in (moe, torch.nn.Linear(2, 2).eval()):
        with pytest.raises(NotImplementedError) as checked:
            puma.check(model)
        with pytest.raises(NotImplementedError) as secured:
            puma.secure(model)
        assert str(checked.value) == str(secured.value)
    assert "mixture-of-experts" in str(checked.value) or "not a Hugging Face" in str(checked.value)


def test_a_forward_that_fails_for_another_reason_names_the_module(no_cluster, monkeypatch) -> None:
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise KeyError("no such key")

    monkeypatch.setattr(hf.models.bert.modeling_bert.BertIntermediate, "forward", forward)
    with pytest.raises(RuntimeError, match=r"failed in encoder\.layer\.0\.intermediate: KeyError at test_check\.py"):
        puma.check(build("BertModel", hf.BertConfig(**SMALL)))
    assert current_or_none() is None


def test_a_refusal_outside_the_op_tables_stops_the_run_and_is_listed(no_cluster, monkeypatch) -> None:
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("securetorch: refused here")

    monkeypatch.setattr(hf.models.bert.modeling_bert.BertIntermediate, "forward", forward)
    report = puma.check(build("BertModel", hf.BertConfig(**SMALL)))
    assert [(p.function, p.module) for p in report.problems] == [("(dry run stopped)", "encoder.layer.0.intermediate")]
    assert "refused here" in report.problems[0].detail


def test_a_model_that_differs_from_its_config_is_refused(no_cluster) -> None:
    model = build("BertModel", hf.BertConfig(**SMALL))
    model.encoder.layer[0].output.dense = torch.nn.Linear(64, 32, bias=False)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.output\.dense\.bias: missing from this model"):
        puma.check(model)
