"""LLaMA-7B at full width (issue #5): one decoder layer on 8 tokens, measured here, and the
whole model's cost for 8 -> 1 tokens projected onto PUMA's network.

    python -m benchmarks.llama7b

Two secure runs with seeded random weights (LLaMA-7B's shapes: hidden 4096, 32 heads,
MLP 11008, vocabulary 32000):

1. ``LlamaModel`` with one decoder layer on 8 tokens: the layer's seconds, bytes, rounds and
   local compute seconds come from the cost report (``layers.0``);
2. ``LlamaForCausalLM`` with no decoder layer, generating 1 token from 8: the embedding
   lookup (secret one-hot x table), the final RMSNorm, the LM head on the last position and
   the secure argmax over 32000.

Projection for the full model (32 layers): per quantity, 32 x run 1 + run 2; time on a
network of 5 Gbps and 1 ms RTT = local compute + rounds x RTT + bytes / bandwidth, with the
local compute measured here (three parties sharing two cores). PUMA reports 200 s for
LLaMA-7B, 8 -> 1 tokens, on that network. Peak RSS of each party is reported per run.
"""

from __future__ import annotations

import gc

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

import securetorch as puma
from benchmarks.common import emit, peak_rss_mb

transformers.logging.set_verbosity_error()

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}  # fmt: skip
LAYERS = 32
VOCAB = 32000
TOKENS = 8
BANDWIDTH_BITS = 5e9
RTT = 1e-3
PUMA_SECONDS = 200.0


def _cost(rows: list[dict]) -> dict:
    keys = ("seconds", "compute_seconds", "bytes", "rounds")
    return {k: sum(r[k] for r in rows) for k in keys}


def layer_run(ids: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**LLAMA_7B, num_hidden_layers=1, vocab_size=256)).eval()
    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        with cluster.cost_report() as report:
            out = secure_model(input_ids=ids % 256)
        with torch.no_grad():
            ref = model(input_ids=ids % 256)
        rss = cluster.run(peak_rss_mb)
    layer = _cost([r for r in report.by("layer") if r["layer"] == "layers.0"])
    error = float((out.last_hidden_state - ref.last_hidden_state).abs().max())
    return {**layer, "max_error_last_hidden_state": error, "peak_rss_mb_per_party": [round(r) for r in rss]}


def head_run(ids: torch.Tensor) -> dict:
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_7B, num_hidden_layers=0, vocab_size=VOCAB)).eval()
    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        with cluster.cost_report() as report:
            tokens = secure_model.generate(ids, max_new_tokens=1)
        plain = model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        rss = cluster.run(peak_rss_mb)
    return {
        **_cost(report.by()),
        "token_equals_plaintext": bool(torch.equal(tokens, plain)),
        "by_op": report.by("op"),
        "peak_rss_mb_per_party": [round(r) for r in rss],
    }


def rows() -> list[dict]:
    ids = torch.randint(3, VOCAB, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    layer = layer_run(ids)
    gc.collect()
    head = head_run(ids)
    full = {k: LAYERS * layer[k] + head[k] for k in ("seconds", "compute_seconds", "bytes", "rounds")}
    projected = full["compute_seconds"] + full["rounds"] * RTT + full["bytes"] * 8 / BANDWIDTH_BITS
    return [
        {"workload": f"LLaMA-7B decoder layer (full width), {TOKENS} tokens", **layer},
        {"workload": f"LLaMA-7B embedding + final norm + LM head + argmax over {VOCAB}, {TOKENS} -> 1", **head},
        {
            "workload": f"LLaMA-7B projected, {LAYERS} layers, {TOKENS} -> 1 tokens, 5 Gbps / 1 ms RTT",
            "measured_here_seconds": round(full["seconds"], 1),
            "local_compute_seconds": round(full["compute_seconds"], 1),
            "bytes": int(full["bytes"]),
            "rounds": int(full["rounds"]),
            "projected_seconds": round(projected, 1),
            "puma_seconds": PUMA_SECONDS,
            "below_puma": projected < PUMA_SECONDS,
        },
    ]


def main() -> None:
    emit("llama7b", rows())


if __name__ == "__main__":
    main()
