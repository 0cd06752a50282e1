"""Models without a family file run from their architecture alone (``families.generic``,
normalisation and activation modules recognised by what they compute):
each on a tiny seeded config, two sequences of 12 tokens with padding, against plaintext
float32; decoders also generate greedily, token-equal to HF's ``generate`` on every step
whose plaintext top-2 margin is decisive, and their sequence classifiers pool at the last
non-padding token. Sentence embeddings are pooled on the driver. Mixture-of-experts models
are refused."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from benchmarks import coverage
from benchmarks.coverage import CLASSIFIERS, DECODERS, ENCODERS, build, classifier_config, output_of, padded

DECODER = coverage.DECODER


@pytest.mark.parametrize("name", [*ENCODERS, *DECODERS])
def test_a_model_without_a_family_file_matches_plaintext(cluster, name) -> None:
    model = build(name, {**ENCODERS, **DECODERS}[name])
    ids, mask = padded(left=name in DECODERS)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = output_of(secure_model(input_ids=ids, attention_mask=mask))
    finally:
        secure_model.close()
    with torch.no_grad():
        want = output_of(model(input_ids=ids, attention_mask=mask))
    assert got.shape == want.shape
    error = (got - want).abs()
    if error.shape[:2] == mask.shape:  # per-token outputs: padding positions attend to nothing in a decoder
        error = error[mask.bool()]
    assert float(error.max()) <= 0.02


@pytest.mark.parametrize("name", list(CLASSIFIERS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_decoder_sequence_classifier_pools_at_the_last_real_token(cluster, name, padding) -> None:
    """HF finds that position from the token ids; the parties see embeddings, so the driver
    sends it (public, as the padding pattern is)."""
    model = build(name, classifier_config(name))
    ids, mask = padded(left=padding == "left")
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model(input_ids=ids, attention_mask=mask).logits
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    assert got.shape == want.shape == (2, 3)
    assert float((got - want).abs().max()) <= 0.02
    # what a right-padded row would give if pooled at the last position instead: a real difference
    if padding == "right":
        with torch.no_grad():
            last = model.score(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state)[1, -1]
        assert float((last - want[1]).abs().max()) > 0.02


def test_a_public_pooling_position_out_of_range_is_refused(cluster) -> None:
    from securetorch.runtime.verbs import Verb

    model = build("Qwen2ForSequenceClassification", classifier_config("Qwen2ForSequenceClassification"))
    secure_model = puma.secure(model, cluster=cluster)
    ids, mask = padded(left=False)
    onehot = secure_model.onehot(ids)
    try:
        for bad in (torch.tensor([12, 3]), torch.tensor([-1, 3]), torch.tensor([[3, 3]])):
            with pytest.raises(puma.InputError, match="last_non_pad_token must"):
                cluster.call(
                    Verb.FORWARD,
                    {"model": secure_model.key, "onehot": onehot, "inputs": {"attention_mask": mask, "last_non_pad_token": bad}},
                )  # fmt: skip
    finally:
        secure_model.close()


def test_sentence_embeddings_of_an_mpnet_shaped_encoder_are_pooled_on_the_driver(cluster) -> None:
    model = build("MPNetModel", ENCODERS["MPNetModel"])
    ids, mask = padded(left=False)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.encode(ids, attention_mask=mask)
    finally:
        secure_model.close()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    want = puma.mean_pooling(hidden, mask)
    by_hand = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # the sentence-transformers recipe
    assert torch.allclose(want, torch.nn.functional.normalize(by_hand, dim=-1), atol=1e-6)
    assert float(want.norm(dim=-1).sub(1).abs().max()) < 1e-5
    assert float((got - want).abs().max()) <= 0.02
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.9999


@pytest.mark.parametrize("name", list(DECODERS))
def test_a_decoder_without_a_family_file_generates_like_hf(cluster, name) -> None:
    config = DECODERS[name].__class__.from_dict({**DECODERS[name].to_dict(), "initializer_range": 0.3})
    model = build(
        name, config, seed=coverage.GENERATION_SEEDS.get(name, 2)
    )  # larger weights, a seed whose every step is decisive
    ids = torch.randint(3, coverage.V, (1, 6), generator=torch.Generator().manual_seed(2))
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


def test_a_family_file_is_one_register_call_that_the_parties_follow(cluster) -> None:
    """An exception to the generic spec: one ``register(FamilySpec(...))`` (what a file in
    ``models/families/`` holds). The in-process parties share this registry, so the swap it
    declares is seen running in them; the generic spec returns when it is removed."""
    from securetorch.models import families
    from securetorch.models.families.base import FamilySpec

    ran: list[tuple[int, ...]] = []

    class Traced(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ran.append(tuple(x.shape))
            return torch.nn.functional.gelu(x, approximate="tanh")

    spec = families.register(
        FamilySpec(
            name="traced-gpt2",
            classes=("GPT2LMHeadModel",),
            embeddings="wte",
            blocks="h",
            swaps={"NewGELUActivation": lambda module: Traced()},
            causal=True,
            token_types="vocab_size",
        )
    )
    try:
        with pytest.raises(ValueError, match="already belong to a registered family"):
            families.register(spec)
        model = build("GPT2LMHeadModel", DECODERS["GPT2LMHeadModel"])
        assert families.spec_for(model) is spec
        ids, mask = padded(left=True)
        secure_model = puma.secure(model, cluster=cluster)
        try:
            got = secure_model(input_ids=ids, attention_mask=mask).logits
        finally:
            secure_model.close()
    finally:
        families.FAMILIES.remove(spec)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    assert ran.count((2, 12, 128)) == 3 * 2  # each party ran the family's swap in both blocks
    assert float((got - want).abs()[mask.bool()].max()) <= 0.02
    assert families.spec_for(model).name == "GPT2LMHeadModel"  # generic again


@pytest.mark.parametrize(
    "name, extra",
    [
        ("Gemma2ForCausalLM", {"sliding_window": 4}),
        ("MistralForCausalLM", {"sliding_window": 4}),
        ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
    ],
    ids=["gemma2-sliding-window", "mistral-sliding-window", "llama3-rope-scaling"],
)  # fmt: skip
def test_public_position_variants_run_as_in_plaintext(cluster, name, extra) -> None:
    """Sliding windows and scaled rotary positions are public masks and tables: the secure
    model follows them (and they change the output, so the test sees them)."""
    config = DECODERS[name].__class__.from_dict({**DECODERS[name].to_dict(), **extra})
    model, plain = build(name, config), build(name, DECODERS[name])
    ids, mask = padded(left=True)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model(input_ids=ids, attention_mask=mask).logits
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        without = plain(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert float((got - want).abs()[real].max()) <= 0.02
    assert float((want - without).abs()[real].max()) > 5e-4


def test_activation_modules_are_recognised_by_what_they_compute() -> None:
    """GPT-2's gelu_new (the tanh form in pow and tanh) becomes the one-protocol tanh-GeLU; a
    GeLU clipped to [-10, 10] equals GeLU near zero but is not GeLU, so it stays as it is."""
    from securetorch.models.families.generic import Activation
    from securetorch.models.service import skeleton

    gpt2, _ = skeleton("GPT2LMHeadModel", DECODERS["GPT2LMHeadModel"].to_dict())
    assert all(
        isinstance(block.mlp.act, Activation) and block.mlp.act.function == "gelu_tanh" for block in gpt2.transformer.h
    )
    clipped = hf.BertConfig.from_dict({**ENCODERS["BertModel"].to_dict(), "hidden_act": "gelu_10"})
    bert, _ = skeleton("BertModel", clipped.to_dict())
    assert type(bert.encoder.layer[0].intermediate.intermediate_act_fn).__name__ == "ClippedGELUActivation"
