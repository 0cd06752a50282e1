"""Issue #14's round targets, as exact counters: a GPT-2 base decode step (one token over a
32-token KV cache, the secure argmax included) and a 32-token forward to the logits, on
parties that pick their protocols for the ``wan`` profile (in one process, the profile's
choices without its waits); and BERT-base's rounds per layer at 128 tokens, whose target
(at most 1,200 for 12 layers) is not met yet."""

from __future__ import annotations

import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import securetorch as puma

transformers.logging.set_verbosity_error()

DECODE_STEP_ROUNDS = 848  # with wan's choices; issue #14's target: at most 1000
FORWARD_32_ROUNDS = 1087  # 32 tokens -> logits; the target: at most 1200


def test_gpt2_base_rounds_under_wan() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(1000, 20000, (1, 32), generator=torch.Generator().manual_seed(0))
    with puma.InProcessCluster(network="wan", play_network=False) as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        tokens = secure_model.generate(ids, max_new_tokens=2)
        step = secure_model.generation_costs[1]
        cluster.reset_stats()
        secure_model(input_ids=ids)
        forward = cluster.stats()[0].rounds
    plain = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, plain)
    assert step.rounds == DECODE_STEP_ROUNDS <= 1000
    assert forward == FORWARD_32_ROUNDS <= 1200


# One BERT-base layer at 128 tokens with its embeddings and pooler (12 layers: 1296 rounds)
BERT_LAYER_128_ROUNDS = 135


def test_bert_base_layer_rounds_at_128_tokens_under_wan() -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=1)).eval()
    ids = torch.randint(1000, 20000, (1, 128), generator=torch.Generator().manual_seed(0))
    with puma.InProcessCluster(network="wan", play_network=False) as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        cluster.reset_stats()
        out = secure_model(input_ids=ids)
        rounds = cluster.stats()[0].rounds
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    assert float((out.last_hidden_state - want).abs().max()) < 2e-3
    assert rounds == BERT_LAYER_128_ROUNDS
