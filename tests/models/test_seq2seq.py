"""Encoder-decoder models (T5, and BART read the same way): the encoder's output stays secret
in the parties, the decoder reads it through secret cross-attention caches, relative position
buckets are public. Forward calls take the decoder's tokens as a second secret; greedy
generation is token-equal to HF's on every decisive step."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from benchmarks.coverage import ENCODERS, SEQ2SEQ, V


def build(name: str, config, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    config = config.__class__.from_dict({**config.to_dict(), "initializer_factor": scale, "init_std": 0.02 * scale})
    torch.manual_seed(seed)
    return getattr(hf, name)(config).eval()


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 8 tokens, the second right-padded after 5."""
    ids = torch.randint(3, V, (2, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    return ids, mask


@pytest.mark.parametrize("kind", list(SEQ2SEQ))
def test_an_encoder_decoder_forward_matches_plaintext(cluster, kind) -> None:
    name, config = SEQ2SEQ[kind]
    model = build(name, config)
    ids, mask = prompts()
    decoder_ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(6))
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        with pytest.raises(puma.InputError, match="needs decoder_input_ids"):
            secure_model(input_ids=ids, attention_mask=mask)
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    assert set(got.keys()) == {"logits"}  # never the encoder's output or the caches
    assert got.logits.shape == want.logits.shape
    assert float((got.logits - want.logits).abs().max()) <= 0.02


# larger weights than the default init, and seeds whose every step is decisive: tokens that vary
@pytest.mark.parametrize("kind, seed, scale", [("t5", 2, 3.0), ("t5-v1.1", 2, 3.0), ("bart", 3, 20.0)])
def test_an_encoder_decoder_generates_like_hf(cluster, kind, seed, scale) -> None:
    name, config = SEQ2SEQ[kind]
    model = build(name, config, seed, scale)
    ids, mask = prompts()
    plain = model.generate(
        ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    top2 = torch.stack(plain.scores, dim=1).topk(2, dim=-1).values
    finished = torch.cat([torch.zeros(2, 1, dtype=torch.bool), (plain.sequences[:, 1:-1] == 1).cummax(1).values], 1)
    decisive = ((top2[..., 0] - top2[..., 1]) > 0.05) | finished  # rows past their EOS only pad
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.generate(ids, attention_mask=mask, max_new_tokens=5)
    finally:
        secure_model.close()
    assert bool(decisive.all()), "a step whose plaintext top two are closer than the secure error"
    assert len(set(plain.sequences[:, 1:].flatten().tolist())) > 2, "a degenerate sequence tests little"
    assert torch.equal(got, plain.sequences)


def test_t5_encoder_alone_is_an_encoder(cluster) -> None:
    model = build("T5EncoderModel", ENCODERS["T5EncoderModel"])
    ids, mask = prompts()
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert float((got - want).abs().max()) <= 0.02


def test_a_decoder_input_that_is_not_one_hot_is_refused_and_steps_take_no_inputs(cluster) -> None:
    """A client that skips its driver's checks: the parties check the decoder's one-hot in MPC
    as they check the encoder's, and a decoding step takes no public inputs at all."""
    from securetorch.runtime.verbs import Verb

    name, config = SEQ2SEQ["t5"]
    secure_model = puma.secure(build(name, config), cluster=cluster)
    ids, mask = prompts()
    try:
        bad = torch.nn.functional.one_hot(torch.randint(3, V, (2, 3)), V) * 2
        request = {"model": secure_model.key, "onehot": secure_model.onehot(ids), "inputs": {"attention_mask": mask}}
        with pytest.raises(puma.InputError, match="one-hot"):
            cluster.call(Verb.FORWARD, {**request, "decoder_onehot": puma.private(bad, dtype=torch.int64)})
        cluster.call(Verb.GENERATE_START, request)
        for inputs in ({"attention_mask": mask}, {"position_ids": torch.zeros(2, 1, dtype=torch.long)}):
            with pytest.raises(puma.InputError, match="takes its secret input and no public inputs"):
                cluster.call(Verb.GENERATE_STEP, {"model": secure_model.key, "inputs": inputs})
        cluster.call(Verb.GENERATE_END, {"model": secure_model.key})
    finally:
        secure_model.close()
