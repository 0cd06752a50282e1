"""Secure text classification with ``BertForSequenceClassification``.

A small BERT classifier with seeded random weights (no download) is secret-shared to three
local parties; a batch of token-id rows (one of them padded, with its attention mask) is
classified on secret shares. The script prints the secure and plaintext logits side by
side, the predicted classes, and the max error.

Run (from the repository root; about 15 s on two cores with the defaults, starting the parties included)::

    python examples/bert_classification.py
    python examples/bert_classification.py --layers 4 --batch 6 --tokens 32
"""

from __future__ import annotations

import argparse
import time

import torch

import securetorch as puma
from securetorch.comm.stats import total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (default 2)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size, a multiple of 4 (default 128)")
    parser.add_argument("--labels", type=int, default=3, help="number of classes (default 3)")
    parser.add_argument("--batch", type=int, default=4, help="rows in the batch (default 4)")
    parser.add_argument("--tokens", type=int, default=12, help="tokens per row (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    return parser.parse_args(argv)


def random_bert(args: argparse.Namespace):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=2000,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=128,
        num_labels=args.labels,
        initializer_range=0.2,  # a wider init than BERT's 0.02: logits of order 1, not 0.01
    )
    torch.manual_seed(args.seed)  # plaintext model weights only: the protocols use their own AES streams
    return BertForSequenceClassification(config).eval()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    model = random_bert(args)
    g = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, model.config.vocab_size, (args.batch, args.tokens), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if args.batch > 1:  # the last row is shorter: padding after two thirds of it
        cut = max(1, 2 * args.tokens // 3)
        input_ids[-1, cut:] = model.config.pad_token_id
        attention_mask[-1, cut:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    print(
        f"secure BertForSequenceClassification: {args.layers} layers, hidden {args.hidden}, {args.labels} classes, "
        f"batch of {args.batch} x {args.tokens} tokens"
    )

    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        try:
            cluster.reset_stats()
            started = time.perf_counter()
            secure_logits = secure_model(**inputs).logits
            seconds = time.perf_counter() - started
            cost = total(cluster.stats())
        finally:
            secure_model.close()
    with torch.no_grad():
        plain_logits = model(**inputs).logits

    width = 8 * args.labels
    print(f"\n{'row':>3}  {'secure logits':<{width}}  {'plaintext logits':<{width}}  secure class  plaintext class")
    for i in range(args.batch):
        s = " ".join(f"{v:7.4f}" for v in secure_logits[i].tolist())
        p = " ".join(f"{v:7.4f}" for v in plain_logits[i].tolist())
        print(f"{i:>3}  {s:<{width}}  {p:<{width}}  {int(secure_logits[i].argmax()):>12}  {int(plain_logits[i].argmax()):>15}")  # fmt: skip
    same = torch.equal(secure_logits.argmax(-1), plain_logits.argmax(-1))
    err = float((secure_logits - plain_logits).abs().max())
    print(f"\nsame predicted classes: {'yes' if same else 'no'}")
    print(f"max |secure - plaintext| logit: {err:.2e}")
    print(f"secure call: {seconds:.2f} s, {cost.rounds} rounds, {cost.bytes_sent / 1e6:.1f} MB sent by the parties")


if __name__ == "__main__":
    main()
