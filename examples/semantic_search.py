"""Secure semantic search with the real pretrained MiniLM-L6 sentence encoder.

The driver holds the model and a small collection of sentences; three local parties embed
the query and the sentences on secret shares (mean pooling, normalised embeddings) and the
driver ranks the sentences by cosine similarity. The script prints the secure and the
plaintext ranking side by side, with their scores, and the cost of the secure call.

Run (from the repository root; about 20-40 s on two cores, starting the parties included)::

    python examples/semantic_search.py
    python examples/semantic_search.py --query "Which sport has eleven players per team?"
"""

from __future__ import annotations

import argparse
import time

import torch

import securetorch as puma
from securetorch.comm.stats import total
from securetorch.demo import minilm_path

QUERY = "How can hospitals use AI without exposing patient data?"
SENTENCES = [
    "Multi-party computation computes on data that nobody sees.",
    "Homomorphic encryption computes on encrypted numbers.",
    "Differential privacy adds noise to protect individuals.",
    "Doctors keep medical records confidential.",
    "The recipe needs two eggs and some flour.",
    "Football teams have eleven players each.",
    "The train to Lisbon leaves at nine.",
    "Transformers use attention and softmax.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", default=QUERY, help="the search query")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer([args.query, *SENTENCES], padding=True, return_tensors="pt")
    print(f"secure semantic search: MiniLM-L6, query + {len(SENTENCES)} sentences ({batch['input_ids'].shape[1]} tokens each)")  # fmt: skip

    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        try:
            cluster.reset_stats()
            started = time.perf_counter()
            secure_out = secure_model(**batch)
            seconds = time.perf_counter() - started
            cost = total(cluster.stats())
        finally:
            secure_model.close()
    with torch.no_grad():
        plain_out = model(**batch)

    mask = batch["attention_mask"]
    secure_emb = puma.mean_pooling(secure_out.last_hidden_state, mask)
    plain_emb = puma.mean_pooling(plain_out.last_hidden_state, mask)
    secure_scores = (secure_emb[1:] @ secure_emb[0]).tolist()
    plain_scores = (plain_emb[1:] @ plain_emb[0]).tolist()
    secure_rank = sorted(range(len(SENTENCES)), key=lambda i: -secure_scores[i])
    plain_rank = sorted(range(len(SENTENCES)), key=lambda i: -plain_scores[i])

    print(f'\nquery: "{args.query}"\n')
    print(
        f"{'rank':>4}  {'secure':>7}  {'sentence (secure ranking)':<60}  {'plaintext':>9}  sentence (plaintext ranking)"
    )
    for place, (s, p) in enumerate(zip(secure_rank, plain_rank, strict=True), start=1):
        print(f"{place:>4}  {secure_scores[s]:7.4f}  {SENTENCES[s]:<60}  {plain_scores[p]:9.4f}  {SENTENCES[p]}")

    score_err = max(abs(s - p) for s, p in zip(secure_scores, plain_scores, strict=True))
    real = mask.bool()  # padding positions' states are computed too, but pooling ignores them
    hidden_err = float((secure_out.last_hidden_state - plain_out.last_hidden_state)[real].abs().max())
    print(f"\nsame ranking: {'yes' if secure_rank == plain_rank else 'no'}")
    print(f"max |secure - plaintext|: score {score_err:.2e}, hidden state (real tokens) {hidden_err:.2e}")
    print(f"secure call: {seconds:.2f} s, {cost.rounds} rounds, {cost.bytes_sent / 1e6:.1f} MB sent by the parties")


if __name__ == "__main__":
    main()
