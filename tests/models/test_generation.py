"""``SecureModel.generate`` as HF's ``generate`` is called: settings from the model's
generation config updated by keyword arguments, a streamer, stopping criteria on the
revealed tokens, ``return_dict_in_generate``; sampling inside MPC whose first tokens follow
HF's distribution (chi-square, p = 0.01); settings it cannot honour are refused, naming
them, before anything is sent."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

import securetorch as puma
from benchmarks.coverage import DECODERS, GENERATION_SEEDS, SEQ2SEQ, V, build

from ..conftest import chi_square_critical


@pytest.fixture(scope="module")
def qwen(cluster):
    name = "Qwen2ForCausalLM"
    config = DECODERS[name].__class__.from_dict({**DECODERS[name].to_dict(), "initializer_range": 0.3})
    model = build(name, config, seed=GENERATION_SEEDS.get(name, 2))
    secure_model = puma.secure(model, cluster=cluster)
    yield model, secure_model
    secure_model.close()


def prompt() -> torch.Tensor:
    return torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(2))


def test_hf_keyword_arguments_give_hf_tokens_and_outputs(qwen) -> None:
    model, secure_model = qwen
    plain = model.generate(prompt(), max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    got = secure_model.generate(prompt(), max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert type(got).__name__ == type(plain).__name__ == "GenerateDecoderOnlyOutput"
    assert torch.equal(got.sequences, plain.sequences)
    config = hf.GenerationConfig(max_new_tokens=3, do_sample=False)
    assert torch.equal(secure_model.generate(prompt(), generation_config=config), plain.sequences[:, :-1])


def test_eos_lists_pad_the_finished_row_and_stop(qwen) -> None:
    model, secure_model = qwen
    free = secure_model.generate(prompt(), max_new_tokens=4)
    eos = [int(free[0, 7]), 119]  # the second new token, and one that never comes
    plain = model.generate(prompt(), max_new_tokens=4, eos_token_id=eos, pad_token_id=0, do_sample=False)
    got = secure_model.generate(prompt(), max_new_tokens=4, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, plain) and got.shape[1] == 8  # stopped after the eos


def test_a_streamer_gets_the_prompt_then_each_token_and_stopping_criteria_stop(qwen) -> None:
    _, secure_model = qwen

    class Recorder:
        def __init__(self) -> None:
            self.chunks: list[list[int]] = []
            self.ended = False

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value.flatten().tolist())

        def end(self) -> None:
            self.ended = True

    class AfterTwo(hf.StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
            assert scores is None  # the logits stay secret
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 8, dtype=torch.bool)

    streamer = Recorder()
    got = secure_model.generate(
        prompt(), max_new_tokens=5, streamer=streamer, stopping_criteria=hf.StoppingCriteriaList([AfterTwo()])
    )
    assert got.shape == (1, 8)
    assert streamer.chunks == [prompt()[0].tolist(), [int(got[0, 6])], [int(got[0, 7])]] and streamer.ended


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"no_repeat_ngram_size": 2}, "no_repeat_ngram_size=2"),
        ({"num_beams": 2}, "num_beams=2"),
        ({"output_scores": True}, "output_scores=True"),
        ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
        ({"min_new_tokens": 2}, "min_new_tokens=2"),
    ],
)
def test_settings_it_cannot_honour_are_refused_before_sending(cluster, qwen, settings, named) -> None:
    _, secure_model = qwen
    before = sum(s.messages for s in cluster.stats())
    with pytest.raises(NotImplementedError, match=f"cannot honour {named}"):
        secure_model.generate(prompt(), max_new_tokens=2, **settings)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        secure_model.generate(prompt(), max_new_tokens=2, no_such_setting=1)
    assert sum(s.messages for s in cluster.stats()) == before


def test_a_bart_with_its_default_forced_eos_generates_like_hf(cluster) -> None:
    name, config = SEQ2SEQ["bart"]
    config = config.__class__.from_dict({**config.to_dict(), "forced_eos_token_id": 1, "init_std": 0.4})
    torch.manual_seed(3)
    model = getattr(hf, name)(config).eval()
    ids = torch.randint(3, V, (2, 8), generator=torch.Generator().manual_seed(4))
    plain = model.generate(ids, max_new_tokens=4, do_sample=False)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model.generate(ids, max_new_tokens=4)
    finally:
        secure_model.close()
    assert bool((plain[:, -1] == 1).all())  # forced
    assert torch.equal(got, plain)


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 1.0}, {"temperature": 0.8, "top_k": 50, "top_p": 0.9}, {"temperature": 0.7, "top_k": 3}],
    ids=["t=1.0", "t=0.8,top-k=50,top-p=0.9", "t=0.7,top-k=3"],
)
def test_sampled_first_tokens_follow_hf_distribution(qwen, settings) -> None:
    """400 copies of one prompt in one batch: 400 independent secure draws of the first token,
    against the plaintext model's softmax with HF's own warpers (seeded: reproducible)."""
    model, secure_model = qwen
    rows = 400
    ids = prompt().repeat(rows, 1)
    got = secure_model.generate(ids, max_new_tokens=2, do_sample=True, seed=7, **settings)
    assert got.shape == (rows, 8) and torch.equal(got[:, :6], ids)
    with torch.no_grad():
        scores = model(input_ids=prompt()).logits[:, -1, :] / settings["temperature"]
    if "top_k" in settings:
        scores = hf.TopKLogitsWarper(settings["top_k"])(None, scores)
    if "top_p" in settings:
        scores = hf.TopPLogitsWarper(settings["top_p"])(None, scores)
    want = torch.softmax(scores.double(), dim=-1)[0]
    counts = torch.bincount(got[:, 6], minlength=V).double()
    assert float(counts[want == 0].sum()) == 0  # never a token the warpers drop
    expected = want * rows
    big = expected >= 5  # cells expected below 5 are pooled into one
    observed = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = expected > 0
    stat = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert int(keep.sum()) >= 3, "too few cells for a test"
    assert stat < chi_square_critical(int(keep.sum()) - 1)
    assert len(secure_model.generation_costs) == 2  # the second token was drawn from the secret cache
