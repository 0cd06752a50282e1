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
    assert isinstance(got, type(plain)) and type(plain).__name__ == "GenerateDecoderOnlyOutput"
    assert torch.equal(got.sequences, plain.sequences)
    assert got.costs == secure_model.generation_costs and len(got.costs) == 4 and got.costs[1].rounds > 0
    config = hf.GenerationConfig(max_new_tokens=3, do_sample=False)
    assert torch.equal(secure_model.generate(prompt(), generation_config=config), plain.sequences[:, :-1])


def test_eos_lists_pad_the_finished_row_and_stop(qwen) -> None:
    model, secure_model = qwen
    free = secure_model.generate(prompt(), max_new_tokens=4)
    eos = [int(free[0, 7]), 119]  # the second new token, and one that never comes
    plain = model.generate(prompt(), max_new_tokens=4, eos_token_id=eos, pad_token_id=0, do_sample=False)
    got = secure_model.generate(prompt(), max_new_tokens=4, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, plain) and got.shape[1] == 8  # stopped after the eos


class Recorder:
    """A streamer (HF's interface) that keeps what it is given."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.chunks.append(value.flatten().tolist())

    def end(self) -> None:
        self.ended = True


def test_a_streamer_gets_the_prompt_then_each_token_and_stopping_criteria_stop(qwen) -> None:
    _, secure_model = qwen

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


def test_sampling_with_hf_usual_settings_streams_each_drawn_token(qwen) -> None:
    """HF's usual chat settings (temperature 0.8, top-k 50, top-p 0.9) with a streamer on a
    LLaMA-family model: each drawn token streams as it comes, and the drawn tokens are ones
    the plaintext warpers keep."""
    model, secure_model = qwen
    streamer = Recorder()
    got = secure_model.generate(
        prompt(), max_new_tokens=3, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, streamer=streamer
    )
    assert got.shape == (1, 9) and streamer.ended
    assert streamer.chunks == [prompt()[0].tolist()] + [[int(t)] for t in got[0, 6:]]
    with torch.no_grad():
        scores = model(input_ids=prompt()).logits[:, -1, :] / 0.8
    kept = hf.TopPLogitsWarper(0.9)(None, hf.TopKLogitsWarper(50)(None, scores)) > -float("inf")
    assert bool(kept[0, got[0, 6]])


REFUSED = {  # a value for every setting generate refuses (UNSUPPORTED_GENERATION)
    "num_beams": 2, "num_beam_groups": 2, "penalty_alpha": 0.6, "num_return_sequences": 2, "output_scores": True,
    "output_logits": True, "output_attentions": True, "output_hidden_states": True, "repetition_penalty": 1.3,
    "encoder_repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "encoder_no_repeat_ngram_size": 2,
    "bad_words_ids": [[5]], "forced_bos_token_id": 5, "sequence_bias": {(5,): -1.0},
    "exponential_decay_length_penalty": (2, 1.5), "guidance_scale": 1.5, "watermarking_config": {"greenlist_ratio": 0.25},
    "stop_strings": ["x"], "max_time": 5.0, "prompt_lookup_num_tokens": 3,
}  # fmt: skip


def test_every_refused_setting_has_a_value_here() -> None:
    from securetorch.secure import UNSUPPORTED_GENERATION

    assert set(REFUSED) == set(UNSUPPORTED_GENERATION)


@pytest.mark.parametrize("name", list(REFUSED))
def test_settings_it_cannot_honour_are_refused_before_sending(cluster, qwen, name) -> None:
    _, secure_model = qwen
    extra = {"do_sample": True} if name == "num_return_sequences" else {}  # HF refuses it for greedy itself
    before = sum(s.messages for s in cluster.stats())
    with pytest.raises(NotImplementedError, match=f"cannot honour {name}="):
        secure_model.generate(prompt(), max_new_tokens=2, **{name: REFUSED[name]}, **extra)
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


@pytest.mark.parametrize(
    "settings",
    [{"min_new_tokens": 3}, {"suppress_tokens": "first"}, {"begin_suppress_tokens": "first"}],
    ids=["min_new_tokens", "suppress_tokens", "begin_suppress_tokens"],
)
def test_minimum_lengths_and_suppressed_tokens_are_public_masks_as_in_hf(qwen, settings) -> None:
    """HF's logits processors that only mask public token ids: eos before a minimum length,
    suppressed tokens always or at the first step. The parties take the ids as public inputs."""
    model, secure_model = qwen
    free = secure_model.generate(prompt(), max_new_tokens=4)
    first = int(free[0, 6])
    name, value = next(iter(settings.items()))
    kwargs = {name: [first] if value == "first" else value, "eos_token_id": first, "pad_token_id": 0}
    plain = model.generate(
        prompt(), max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs
    )
    top2 = torch.stack(plain.scores, dim=1).topk(2, dim=-1).values
    assert bool(((top2[..., 0] - top2[..., 1]) > 0.05).all()), "an indecisive step"
    assert int(plain.sequences[0, 6]) != first  # the mask changed the first token
    got = secure_model.generate(prompt(), max_new_tokens=4, **kwargs)
    assert torch.equal(got, plain.sequences)


def test_a_suppress_list_that_is_not_token_ids_is_refused_by_the_parties(cluster, qwen) -> None:
    from securetorch.runtime.verbs import Verb

    _, secure_model = qwen
    request = {"model": secure_model.key, "onehot": secure_model.onehot(prompt()), "inputs": {}}
    for bad, error in ([V], puma.InputError), ([3, 3], puma.InputError), (list(range(V)), puma.InputError), (["1"], ValueError):  # fmt: skip
        with pytest.raises(error, match="suppress"):
            cluster.call(Verb.GENERATE_START, {**request, "suppress": bad})


def test_sampling_a_left_padded_batch_is_reproducible_and_each_row_stops_at_its_eos(qwen) -> None:
    _, secure_model = qwen
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # left padding
    settings = {"do_sample": True, "temperature": 0.9, "top_k": 20, "seed": 11, "attention_mask": mask}
    first = secure_model.generate(ids, max_new_tokens=4, **settings)
    assert torch.equal(secure_model.generate(ids, max_new_tokens=4, **settings), first)
    eos = int(first[0, 6])  # row 0's first sampled token
    stopped = secure_model.generate(ids, max_new_tokens=4, eos_token_id=eos, pad_token_id=0, **settings)
    assert torch.equal(stopped[0, 6:], torch.tensor([eos, 0, 0, 0]))  # row 0 padded after its eos
    row1 = first[1, 6:].tolist()
    cut = row1.index(eos) + 1 if eos in row1 else 4
    assert stopped[1, 6 : 6 + cut].tolist() == row1[:cut]  # row 1 draws as before, until its own eos
