"""Secure model benchmark (issues #4, #5): BERT-base on 16, 32 and 128 tokens, GPT-2 base
32 -> logits, 32 -> 1 and 32 -> 16 tokens, at full size with seeded random weights.

    python -m benchmarks.models [--quick]

Seconds on the driver's clock (the whole secure call); bytes sent by all parties; rounds;
peak RSS of each party process (lifetime maximum, one cluster per model); max abs error of
the last hidden state / logits vs the plaintext float32 model. For generation, each token's
seconds and bytes and their ratio to token 1's. The GPT-2 32 -> 1 call also runs under a
cost report: its cost per layer and per op. ``--quick`` runs 4-layer models instead.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import securetorch as puma
from benchmarks.common import emit, peak_rss_mb
from securetorch.comm.stats import total

transformers.logging.set_verbosity_error()


def _timed(cluster: puma.LocalCluster, call):
    """Run ``call`` on the driver; its result, seconds, and the bytes and rounds it cost."""
    cluster.reset_stats()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, round(seconds, 2), total(cluster.stats())


def forward_row(cluster: puma.LocalCluster, secure_model, model, ids: torch.Tensor, workload: str, output: str) -> dict:
    """One secure forward call: its cost (and the part of it that checks the client's one-hot
    input), and the max error of ``output`` vs plaintext."""
    with cluster.cost_report() as report:
        out, seconds, cost = _timed(cluster, lambda: secure_model(input_ids=ids))
    check = next((r for r in report.by("op") if r["op"] == "one_hot_check"), {"bytes": 0, "rounds": 0})
    with torch.no_grad():
        ref = model(input_ids=ids)
    return {
        "workload": workload,
        "seconds": seconds,
        "bytes": cost.bytes_sent,
        "rounds": cost.rounds,
        "one_hot_check_bytes": check["bytes"],
        "one_hot_check_rounds": check["rounds"],
        f"max_error_{output}": float((getattr(out, output) - getattr(ref, output)).abs().max()),
    }


def bert_rows(cluster: puma.LocalCluster, layers: int) -> list[dict]:
    torch.manual_seed(0)  # plaintext weights and inputs
    model = BertModel(BertConfig(num_hidden_layers=layers)).eval()
    secure_model = puma.secure(model, cluster=cluster)
    rows = []
    for tokens in (16, 32, 128):
        ids = torch.randint(1000, 20000, (1, tokens))
        workload = f"BERT-base ({layers} layers), {tokens} tokens"
        rows.append(forward_row(cluster, secure_model, model, ids, workload, "last_hidden_state"))
    secure_model.close()
    return rows


def gpt2_rows(cluster: puma.LocalCluster, layers: int) -> list[dict]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers)).eval()
    secure_model = puma.secure(model, cluster=cluster)
    ids = torch.randint(1000, 20000, (1, 32))
    rows = [
        forward_row(cluster, secure_model, model, ids, f"GPT-2 base ({layers} layers), 32 tokens -> logits", "logits")
    ]
    for new_tokens in (1, 16):
        with cluster.cost_report() as report:
            start = time.perf_counter()
            tokens = secure_model.generate(ids, max_new_tokens=new_tokens)
            seconds = time.perf_counter() - start
        greedy = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)  # fmt: skip
        plain = greedy.sequences
        steps = secure_model.generation_costs
        margins = [float(s.topk(2).values[0, 0] - s.topk(2).values[0, 1]) for s in greedy.scores]
        row = {
            "workload": f"GPT-2 base ({layers} layers), 32 -> {new_tokens} tokens (KV cache, secure argmax)",
            "seconds": round(seconds, 2),
            "bytes": sum(s.bytes for s in steps),
            "rounds": sum(s.rounds for s in steps),
            "tokens_equal_plaintext": bool(torch.equal(tokens, plain)),
            "steps_differing": [i for i in range(new_tokens) if int(tokens[0, 32 + i]) != int(plain[0, 32 + i])],
            "plaintext_top2_margins": [round(m, 4) for m in margins],
            "per_token": [
                {
                    "seconds": round(s.seconds, 2),
                    "bytes": s.bytes,
                    "rounds": s.rounds,
                    "seconds_vs_token_1": round(s.seconds / steps[0].seconds, 3),
                    "bytes_vs_token_1": round(s.bytes / steps[0].bytes, 3),
                }
                for s in steps
            ],
        }
        if new_tokens == 1:
            row["profile_by_layer"] = _rounded(report.by("layer"))
            row["profile_by_op"] = _rounded(report.by("op"))
        rows.append(row)
    secure_model.close()
    return rows


def _rounded(records: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in records]


def rows(quick: bool = False) -> list[dict]:
    """Every row, BERT and GPT-2 each on a fresh cluster (so peak RSS is per model)."""
    layers = 4 if quick else 12
    out = []
    for name, build in (("BERT-base", bert_rows), ("GPT-2 base", gpt2_rows)):
        with puma.LocalCluster() as cluster:
            out.extend(build(cluster, layers))
            rss = cluster.run(peak_rss_mb)
        out.append(
            {
                "workload": f"{name} ({layers} layers): peak RSS per party",
                "peak_rss_mb_per_party": [round(r, 1) for r in rss],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="4-layer models")
    emit("models", rows(parser.parse_args().quick))


if __name__ == "__main__":
    main()
