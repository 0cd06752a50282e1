"""Structure fidelity: the parties build a model from its class and config, so a model whose
structure the config does not describe is refused before anything is sent, and constructor
options that leave no trace in the config (a BERT without its pooler) travel with it."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import securetorch as puma

transformers.logging.set_verbosity_error()

BERT = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)


def ids(vocab: int = 60, length: int = 6) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(3))


def test_a_bert_without_its_pooler_matches_plaintext_and_survives_share_files(cluster, tmp_path) -> None:
    torch.manual_seed(0)
    model = BertModel(BERT, add_pooling_layer=False).eval()
    secure_model = puma.secure(model, cluster=cluster)
    with torch.no_grad():
        want = model(input_ids=ids()).last_hidden_state
    out = secure_model(input_ids=ids())
    assert out.pooler_output is None
    assert float((out.last_hidden_state - want).abs().max()) <= 1e-3
    puma.save_shares(secure_model, tmp_path)
    secure_model.close()
    loaded = puma.load_shares(cluster, directory=tmp_path)
    again = loaded(input_ids=ids())
    assert again.pooler_output is None
    assert float((again.last_hidden_state - want).abs().max()) <= 1e-3
    loaded.close()


def test_a_gpt2_with_resized_embeddings_matches_plaintext(cluster) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    model.resize_token_embeddings(64)
    secure_model = puma.secure(model, cluster=cluster)
    tokens = ids(64, 5)
    with torch.no_grad():
        want = model(input_ids=tokens).logits
    assert float((secure_model(input_ids=tokens).logits - want).abs().max()) <= 1e-3
    secure_model.close()


def _prune_two_heads(model: torch.nn.Module) -> None:
    """Heads pruned by hand (transformers 5 has no ``prune_heads``): two of layer 0's four
    heads dropped from its query, key, value and output projections."""
    attention = model.encoder.layer[0].attention
    for name in ("query", "key", "value"):
        setattr(attention.self, name, torch.nn.Linear(16, 8))
    attention.output.dense = torch.nn.Linear(8, 16)
    attention.self.num_attention_heads, attention.self.all_head_size = 2, 8


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda m: setattr(m.encoder.layer[0].intermediate, "dense", torch.nn.Linear(16, 48)), "[48, 16] here"),
        (lambda m: m.encoder.layer[1].output.register_buffer("scale", torch.ones(3)), "buffer encoder.layer.1"),
        (lambda m: setattr(m.embeddings, "extra", torch.nn.Linear(2, 2)), "embeddings.extra.weight [2, 2]"),
        (lambda m: delattr(m.encoder.layer[1].attention.output, "LayerNorm"), "missing from this model"),
        (_prune_two_heads, "encoder.layer.0.attention.self.query.weight: [8, 16] here, [16, 16] from the config"),
    ],
)
def test_a_model_its_config_does_not_describe_is_refused_before_anything_is_sent(cluster, change, named) -> None:
    torch.manual_seed(0)
    model = BertModel(BERT).eval()
    change(model)
    with pytest.raises(ValueError, match=f"differs from the one its config describes.*{re.escape(named)}"):
        puma.secure(model, cluster=cluster, name="not-described")
    with pytest.raises(puma.AccessError, match="no model named 'not-described'"):  # the parties never got it
        puma.SecureModel.by_name("not-described", cluster)
