"""Public-weight mode (``puma.secure(model, weights="public")``): every catalogued class
matches plaintext within the bound of secret-weight mode; decoders generate HF's tokens; the
install deals nothing (no share, no weight crosses a socket: the parties open a checkpoint
whose SHA-256 they check); a public weight times a secret activation is local, so a forward
costs exactly the token-embedding product's round and bytes less than with secret weights."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from benchmarks import coverage
from benchmarks.coverage import DECODERS, GENERATION_SEEDS, V, build
from securetorch.comm.stats import total
from securetorch.errors import PartyError
from securetorch.models import checkpoint
from securetorch.runtime.verbs import Verb
from securetorch.tensor.payload import SharePayload

ENTRIES = {f"{e.name}{'-' + e.label if e.label else ''}": e for e in coverage.catalogue()}


@pytest.mark.parametrize("key", list(ENTRIES))
def test_every_catalogued_class_matches_plaintext_with_public_weights(cluster, key) -> None:
    entry = ENTRIES[key]
    model = build(entry.name, entry.config)
    inputs = coverage.inputs_for(entry, 2)
    secure_model = puma.secure(model, cluster=cluster, weights="public")
    try:
        assert secure_model.weights == "public"
        got = secure_model(**inputs)
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(**inputs)
    assert coverage.error_against(entry, got, want, inputs.get("attention_mask")) <= 0.02


@pytest.mark.parametrize("name", ["GPT2LMHeadModel", "LlamaForCausalLM"])
def test_decoders_generate_hf_tokens_with_public_weights(cluster, name) -> None:
    config = DECODERS[name].__class__.from_dict({**DECODERS[name].to_dict(), "initializer_range": 0.3})
    model = build(name, config, seed=GENERATION_SEEDS.get(name, 2))
    ids = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(2))
    secure_model = puma.secure(model, cluster=cluster, weights="public")
    try:
        got = secure_model.generate(ids, max_new_tokens=5)
        sampled = secure_model.generate(ids, max_new_tokens=2, do_sample=True, top_k=5, seed=3)
    finally:
        secure_model.close()
    assert torch.equal(got, model.generate(ids, max_new_tokens=5, do_sample=False))
    assert sampled.shape == (1, 8)


def test_only_the_token_embedding_product_differs_in_cost(cluster) -> None:
    """With public weights the one-hot x table product is local; every other product keeps
    its one truncation, so a forward costs exactly one round and that product's resharing
    (24 bytes per output element) less."""
    model = build("GPT2LMHeadModel", DECODERS["GPT2LMHeadModel"])
    ids = torch.randint(3, V, (1, 12), generator=torch.Generator().manual_seed(1))
    costs = {}
    for weights in ("secret", "public"):
        secure_model = puma.secure(model, cluster=cluster, weights=weights)
        try:
            cluster.reset_stats()
            secure_model(input_ids=ids)
            costs[weights] = total(cluster.stats())
        finally:
            secure_model.close()
    hidden = model.config.n_embd
    assert costs["secret"].rounds - costs["public"].rounds == 1
    assert costs["secret"].bytes_sent - costs["public"].bytes_sent == 24 * 12 * hidden


def test_installing_deals_nothing_and_weights_never_cross_a_socket(cluster, monkeypatch) -> None:
    """The install request carries no share and no parameter, only the architecture, the
    public buffers and the checkpoint's name and digest; the parties exchange nothing while
    they install; and what a forward sends does not depend on the weights' values."""
    model = build("LlamaForCausalLM", DECODERS["LlamaForCausalLM"])
    other = build("LlamaForCausalLM", DECODERS["LlamaForCausalLM"], seed=9)
    requests = []
    call = cluster.call

    def spy(verb, args):
        if verb is Verb.INSTALL:
            requests.append(args)
        return call(verb, args)

    monkeypatch.setattr(cluster, "call", spy)
    ids = torch.randint(3, V, (1, 8), generator=torch.Generator().manual_seed(1))
    sent = []
    for weights in (model, other):
        cluster.reset_stats()
        secure_model = puma.secure(weights, cluster=cluster, weights="public")
        assert all(s.bytes_sent == 0 for s in cluster.stats())  # installing: nothing between the parties
        try:
            secure_model(input_ids=ids)
            sent.append([(s.bytes_sent, s.messages, s.rounds) for s in cluster.stats()])
        finally:
            secure_model.close()
    assert sent[0] == sent[1]
    for request in requests:
        assert "params" not in request and request["weights"] == "public" and len(request["sha256"]) == 64
        tensors = []

        def collect(value, found=tensors):
            if isinstance(value, SharePayload):
                raise AssertionError("a share in the install request")
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, dict):
                for v in value.values():
                    collect(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    collect(v)

        collect(request)
        buffers = [b[2] for b in request["buffers"]]
        assert len(tensors) == len(buffers) and all(any(t is b for b in buffers) for t in tensors)


def test_a_checkpoint_saved_by_hf_serves_as_the_public_weights(cluster, tmp_path) -> None:
    """``save_pretrained``'s safetensors (a tied LM head stored once, under its own name) is
    opened by the parties from its path, its digest read by the driver; an altered file is
    refused by every party before it builds anything."""
    model = build("GPT2LMHeadModel", DECODERS["GPT2LMHeadModel"], seed=5)
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    ids = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(2))
    secure_model = puma.secure(model, cluster=cluster, weights="public", checkpoint=path)
    try:
        got = secure_model(input_ids=ids).logits
    finally:
        secure_model.close()
    with torch.no_grad():
        assert float((got - model(input_ids=ids).logits).abs().max()) <= 0.02
    digest = checkpoint.sha256(path)
    with open(path, "r+b") as handle:  # one byte of a weight changed after the digest was published
        handle.seek(-3, 2)
        byte = handle.read(1)
        handle.seek(-3, 2)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(PartyError, match="SHA-256"):
        puma.secure(model, cluster=cluster, weights="public", checkpoint=path, sha256=digest)


def test_a_checkpoint_without_a_parameter_is_refused_by_name(cluster, tmp_path) -> None:
    model = build("LlamaForCausalLM", DECODERS["LlamaForCausalLM"])
    tensors = {k: v for k, v in model.state_dict().items() if k != "model.norm.weight"}
    digest = checkpoint.write(tensors, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"model\.norm\.weight"):
        puma.secure(
            model, cluster=cluster, weights="public", checkpoint=tmp_path / "partial.safetensors", sha256=digest
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "open"}, "weights is 'secret'"),
        ({"checkpoint": "m.safetensors"}, "checkpoint= and sha256="),
        ({"weights": "public", "checkpoint": "/nowhere/m.safetensors"}, "sha256= is needed"),
    ],
)
def test_mode_arguments_are_checked_before_anything_is_sent(cluster, monkeypatch, kwargs, message) -> None:
    model = build("GPT2LMHeadModel", DECODERS["GPT2LMHeadModel"])
    monkeypatch.setattr(cluster, "call", lambda *a: pytest.fail("sent"))
    with pytest.raises(ValueError, match=message):
        puma.secure(model, cluster=cluster, **kwargs)


def test_a_public_weight_model_is_saved_without_weights_and_reloads(cluster, tmp_path) -> None:
    """Its share files hold the architecture and buffers and name the checkpoint; loading
    opens and checks the checkpoint again. A model installed from the driver's temporary
    checkpoint cannot be saved (nothing to reopen), and says so."""
    model = build("LlamaForCausalLM", DECODERS["LlamaForCausalLM"], seed=4)
    digest = checkpoint.write(dict(model.state_dict()), tmp_path / "llama.safetensors")
    ids = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(2))
    secure_model = puma.secure(model, cluster=cluster, weights="public", checkpoint=tmp_path / "llama.safetensors")
    want = secure_model.generate(ids, max_new_tokens=3)
    paths = puma.save_shares(secure_model, tmp_path / "shares")
    from safetensors import safe_open

    with safe_open(paths[0], framework="pt") as handle:
        assert all(key.startswith("buffer/") for key in handle.keys())
        assert digest in handle.metadata()["checkpoint"]
    secure_model.close()
    again = puma.load_shares(cluster, directory=tmp_path / "shares")
    try:
        assert again.weights == "public"
        assert torch.equal(again.generate(ids, max_new_tokens=3), want)
    finally:
        again.close()
    temporary = puma.secure(model, cluster=cluster, weights="public")
    try:
        with pytest.raises(ValueError, match="checkpoint that is gone"):
            puma.save_shares(temporary, tmp_path / "again")
    finally:
        temporary.close()


def test_hf_generation_config_is_kept_in_public_mode(cluster) -> None:
    model = build("Qwen2ForCausalLM", DECODERS["Qwen2ForCausalLM"])
    model.generation_config = hf.GenerationConfig(max_new_tokens=2, do_sample=False)
    secure_model = puma.secure(model, cluster=cluster, weights="public")
    try:
        assert secure_model.generate(torch.tensor([[5, 6, 7]])).shape == (1, 5)
    finally:
        secure_model.close()
