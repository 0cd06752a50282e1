"""Models without a family file run from their architecture alone (``families.generic``,
RMSNorm modules recognised by what they compute):
each on a tiny seeded config, two sequences of 12 tokens with padding, against plaintext
float32; decoders also generate greedily, token-equal to HF's ``generate`` on every step
whose plaintext top-2 margin is decisive. Mixture-of-experts models are refused."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma

hf.logging.set_verbosity_error()

V = 120
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V)
DECODER = dict(SMALL, num_key_value_heads=2, pad_token_id=0)

ENCODERS = {
    "DistilBertModel": hf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=V),
    "XLMRobertaModel": hf.XLMRobertaConfig(**SMALL),
    "MPNetModel": hf.MPNetConfig(**SMALL),
    "AlbertModel": hf.AlbertConfig(**SMALL, embedding_size=16),
    "BertForMaskedLM": hf.BertConfig(**SMALL),
    "BertForTokenClassification": hf.BertConfig(**SMALL, num_labels=5),
    "BertForQuestionAnswering": hf.BertConfig(**SMALL),
    "ElectraModel": hf.ElectraConfig(**SMALL, embedding_size=16),
    "DebertaV2Model": hf.DebertaV2Config(**SMALL),
    "ModernBertModel": hf.ModernBertConfig(**SMALL),
}
DECODERS = {
    "Qwen2ForCausalLM": hf.Qwen2Config(**DECODER),
    "MistralForCausalLM": hf.MistralConfig(**DECODER),
    "Phi3ForCausalLM": hf.Phi3Config(**dict(DECODER, num_key_value_heads=4)),
    "Qwen3ForCausalLM": hf.Qwen3Config(**DECODER, head_dim=8),
    "PhiForCausalLM": hf.PhiConfig(**SMALL, pad_token_id=0),
    "FalconForCausalLM": hf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=V),
    "GemmaForCausalLM": hf.GemmaConfig(**DECODER, head_dim=8),
    "Gemma2ForCausalLM": hf.Gemma2Config(**DECODER, head_dim=8),  # soft-capping, post-norms
    "Gemma3ForCausalLM": hf.Gemma3TextConfig(**DECODER, head_dim=8),  # q/k norms, sliding windows
    "GPTNeoXForCausalLM": hf.GPTNeoXConfig(**SMALL, pad_token_id=0),
    "OPTForCausalLM": hf.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=V, word_embed_proj_dim=32
    ),
}


# Seeds (default 2) whose five greedy steps all have plaintext top-2 margins above 0.05.
SEEDS = {"PhiForCausalLM": 3, "Gemma3ForCausalLM": 3}


def build(name: str, config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(hf, name)(config).eval()


def padded(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 12 tokens, the second with 4 padding positions."""
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 12, dtype=torch.long)
    pad = slice(0, 4) if left else slice(8, 12)
    mask[1, pad] = 0
    ids[1, pad] = 1  # the padding token of these configs
    return ids, mask


def output_of(out) -> torch.Tensor:
    if getattr(out, "start_logits", None) is not None:  # a question-answering head
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("name", [*ENCODERS, *DECODERS])
def test_a_model_without_a_family_file_matches_plaintext(cluster, name) -> None:
    config = {**ENCODERS, **DECODERS}[name]
    if name in ENCODERS:
        config.pad_token_id = 1
    model = build(name, config)
    ids, mask = padded(left=name in DECODERS)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = output_of(secure_model(input_ids=ids, attention_mask=mask))
    finally:
        secure_model.close()
    with torch.no_grad():
        want = output_of(model(input_ids=ids, attention_mask=mask))
    real = mask.bool()  # padding positions attend to nothing in a decoder: compare real tokens
    assert got.shape == want.shape
    assert float((got - want).abs()[real].max()) <= 0.02


@pytest.mark.parametrize("name", list(DECODERS))
def test_a_decoder_without_a_family_file_generates_like_hf(cluster, name) -> None:
    config = DECODERS[name].__class__.from_dict({**DECODERS[name].to_dict(), "initializer_range": 0.3})
    model = build(name, config, seed=SEEDS.get(name, 2))  # larger weights, a seed whose every step is decisive
    ids = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(2))
    plain = model.generate(
        ids, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0
    )
    scores = torch.stack(plain.scores, dim=1).float()
    top2 = scores.topk(2, dim=-1).values
    decisive = (top2[..., 0] - top2[..., 1])[0] > 0.05
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.generate(ids, max_new_tokens=5, pad_token_id=0)
    finally:
        secure_model.close()
    assert bool(decisive.all()), "a step whose plaintext top two are closer than the secure error"
    assert torch.equal(got, plain.sequences)


def test_mixture_of_experts_models_are_refused_before_anything_is_sent(cluster) -> None:
    config = hf.MixtralConfig(**DECODER, num_local_experts=4, num_experts_per_tok=2)
    model = build("MixtralForCausalLM", config)
    with pytest.raises(NotImplementedError, match=r"mixture-of-experts model \(num_\w*experts = 4\)"):
        puma.secure(model, cluster=cluster, name="moe")
    with pytest.raises(puma.AccessError, match="no model named 'moe'"):
        puma.SecureModel.by_name("moe", cluster)


def test_a_party_refuses_such_a_config_before_any_constructor_runs(cluster, monkeypatch) -> None:
    """An owner's driver that skips its own checks: the party (a thread here, so the class can
    be watched) refuses from the config alone, before building anything."""
    from securetorch.runtime.verbs import Verb

    built = []
    monkeypatch.setattr(hf.MixtralForCausalLM, "__init__", lambda self, *a, **k: built.append(1))
    config = hf.MixtralConfig(**DECODER, num_local_experts=4).to_dict()
    with pytest.raises(NotImplementedError, match="mixture-of-experts"):
        cluster.call(
            Verb.INSTALL,
            {"name": "moe", "class": "MixtralForCausalLM", "config": config, "clients": [], "check_inputs": True,
             "persistent": False, "params": {}, "bindings": [], "buffers": [], "absent": []},
        )  # fmt: skip
    assert built == []


def test_a_driver_cannot_make_a_party_build_anything_but_a_transformers_model(cluster) -> None:
    from securetorch.runtime.verbs import Verb

    for name in ("os", "__import__", "AutoModel", "PreTrainedTokenizer", "pipeline", "a.b", "x" * 200):
        with pytest.raises(NotImplementedError, match="not a Hugging Face transformers model class"):
            cluster.call(
                Verb.INSTALL,
                {"name": "bad", "class": name, "config": {}, "clients": [], "check_inputs": True,
                 "persistent": False, "params": {}, "bindings": [], "buffers": [], "absent": []},
            )  # fmt: skip
