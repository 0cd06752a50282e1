"""Public-weight mode on a deployment over CURVE: the owner names a checkpoint file that each
party finds in the ``checkpoints_dir`` of its own cluster file and checks against the SHA-256
the owner sends; the owner deals nothing, a client only calls. A path, a path that climbs
out of the directory, or a party whose copy differs is refused by the parties."""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers

import securetorch as puma
from securetorch.models import checkpoint

transformers.logging.set_verbosity_error()
CONFIG = transformers.LlamaConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    intermediate_size=32, pad_token_id=0,
)  # fmt: skip


def connect(deployment, name: str) -> puma.Cluster:
    return puma.Cluster.from_config(deployment.config, key=deployment.keys[name])


@pytest.fixture(scope="module")
def published(deployment, tmp_path_factory):
    """A small Llama whose checkpoint the owner keeps and each party holds in its
    checkpoints_dir: (model, the owner's copy)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(CONFIG).eval()
    own = tmp_path_factory.mktemp("owner") / "tiny-llama.safetensors"
    checkpoint.write(dict(model.state_dict()), own)
    for r in range(3):
        (deployment.checkpoints / f"party{r}").mkdir(parents=True, exist_ok=True)
        shutil.copy(own, deployment.checkpoints / f"party{r}" / own.name)
    return model, own


def test_an_owner_names_a_checkpoint_and_a_client_calls_it(deployment, published) -> None:
    model, own = published
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    with connect(deployment, "owner") as owner:
        puma.secure(model, cluster=owner, name="open-llama", clients=["client"], weights="public", checkpoint=own)
    with connect(deployment, "client") as client:
        secure_model = puma.SecureModel.by_name("open-llama", client)
        assert secure_model.weights == "public"
        got = secure_model(input_ids=ids).logits
        tokens = secure_model.generate(ids, max_new_tokens=2)
    with torch.no_grad():
        assert float((got - model(input_ids=ids).logits).abs().max()) <= 0.02
    assert tokens.shape == (1, 7)


@pytest.mark.parametrize("name", ["/etc/passwd", "../party0/tiny-llama.safetensors", "sub/tiny-llama.safetensors"])
def test_only_a_file_name_in_checkpoints_dir_is_opened_for_an_owner(deployment, published, monkeypatch, name) -> None:
    """The driver sends a file name; one that sends a path instead (its own check bypassed)
    is refused by the parties."""
    model, own = published
    digest = checkpoint.sha256(own)
    monkeypatch.setattr(puma.SecureModel, "_public_checkpoint", lambda *_: (name, digest, None))
    with connect(deployment, "owner") as owner:
        with pytest.raises(puma.AccessError, match="only an admin driver names a checkpoint by its path"):
            puma.secure(model, cluster=owner, weights="public", checkpoint=own)
        assert all(s.bytes_sent == 0 for s in owner.stats())  # refused before the parties exchanged a byte


def test_a_party_whose_copy_differs_refuses_and_nothing_is_installed(deployment, published) -> None:
    model, own = published
    altered = deployment.checkpoints / "party2" / "altered.safetensors"
    for r in range(3):
        shutil.copy(own, deployment.checkpoints / f"party{r}" / altered.name)
    data = bytearray(altered.read_bytes())
    data[-1] ^= 1
    altered.write_bytes(data)
    with connect(deployment, "owner") as owner:
        with pytest.raises(puma.PartyError, match="SHA-256"):
            puma.secure(
                model, cluster=owner, name="altered", weights="public", checkpoint=altered,
                sha256=checkpoint.sha256(own),
            )  # fmt: skip
        assert all(s.bytes_sent == 0 for s in owner.stats())
    with connect(deployment, "owner") as owner:
        with pytest.raises(Exception, match="altered"):
            puma.SecureModel.by_name("altered", owner)
