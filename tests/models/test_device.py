"""Models on parties given a device (``InProcessCluster(device=...)``): shares, public inputs
and the HF modules' own tensors stay on it, and outputs and tokens are what they are on the
default parties. The factories of the parties default to ``meta`` meanwhile
(``factories_default_to_meta``), so any tensor made off the party's device fails the run."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma

from ..conftest import factories_default_to_meta


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    small = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128, "num_hidden_layers": 1}
    return {
        "bert": hf.BertForSequenceClassification(hf.BertConfig(**small)).eval(),
        "gpt2": hf.GPT2LMHeadModel(hf.GPT2Config(n_layer=1, n_embd=64, n_head=2)).eval(),
        "llama": hf.LlamaForCausalLM(hf.LlamaConfig(vocab_size=1000, **small)).eval(),
    }


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_a_model_on_a_party_device_makes_its_tensors_there(name, monkeypatch) -> None:
    model = _models()[name]
    ids = torch.randint(5, 900, (1, 8), generator=torch.Generator().manual_seed(3))
    with puma.InProcessCluster(device="cpu") as parties:
        secure_model = puma.secure(model, cluster=parties)
        with factories_default_to_meta(monkeypatch):
            logits = secure_model(input_ids=ids).logits
            tokens = None if name == "bert" else secure_model.generate(ids, max_new_tokens=3)
    with torch.no_grad():
        assert float((logits - model(input_ids=ids).logits).abs().max()) < 1e-3
        if tokens is not None:
            assert torch.equal(tokens, model.generate(ids, max_new_tokens=3, do_sample=False))
