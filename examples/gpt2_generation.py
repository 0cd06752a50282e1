"""Secure GPT-2 greedy generation with a secret KV cache (``SecureModel.generate``).

Three local parties hold the weights, the prompt and every generated token secret-shared;
each new token costs one token's pass over the secret KV cache and a secure argmax over the
vocabulary, and only the driver learns the tokens. The script prints the tokens, whether
they equal plaintext greedy decoding (``model.generate(..., do_sample=False)``), and each
step's cost (seconds, bytes sent by all parties, rounds).

By default the model is a small GPT-2 built from ``GPT2Config`` with seeded random weights
and the prompt is random token ids; ``--model NAME`` loads a pretrained GPT-2 and its
tokenizer from the local Hugging Face cache instead (nothing is downloaded).

Run (from the repository root; about 15 s on two cores with the defaults, starting the parties included)::

    python examples/gpt2_generation.py --layers 2 --new-tokens 8 --prompt-tokens 16
    python examples/gpt2_generation.py --model gpt2 --prompt "Secure computation lets"
"""

from __future__ import annotations

import argparse
import time

import torch

import securetorch as puma

PROMPT = "Secure multi-party computation lets three parties"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="blocks of the random GPT-2 (default 2)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="random prompt length (default 16)")
    parser.add_argument(
        "--seed",
        type=int,
        default=3,
        help="seed of the random weights and prompt (default 3: no near-ties on the greedy path)",
    )
    parser.add_argument("--model", help="a pretrained GPT-2 in the local Hugging Face cache, e.g. gpt2")
    parser.add_argument("--prompt", default=PROMPT, help="the prompt text (with --model)")
    return parser.parse_args(argv)


def random_gpt2(layers: int, seed: int):
    """A small GPT-2 with seeded random weights (a wide init: well-separated greedy choices)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=1024,
        n_embd=128,
        n_head=4,
        n_layer=layers,
        n_positions=256,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)  # plaintext model weights only: the protocols use their own AES streams
    return GPT2LMHeadModel(config).eval()


def pretrained_gpt2(name: str):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(name, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError as exc:
        raise SystemExit(
            f"error: {name!r} is not in the local Hugging Face cache and this example downloads nothing.\n"
            f"Fetch it once where the hub is reachable (e.g. `hf download {name}`), or run without --model "
            f"to use a random GPT-2.\n({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.model:
        model, tokenizer = pretrained_gpt2(args.model)
        input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
        describe = f"{args.model} ({model.config.n_layer} layers)"
    else:
        model, tokenizer = random_gpt2(args.layers, args.seed), None
        g = torch.Generator().manual_seed(args.seed)
        input_ids = torch.randint(2, model.config.vocab_size, (1, args.prompt_tokens), generator=g)
        describe = f"random GPT-2 ({args.layers} layers, width {model.config.n_embd}, vocabulary {model.config.vocab_size}, seed {args.seed})"  # fmt: skip
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    pad = eos if model.generation_config.pad_token_id is None else model.generation_config.pad_token_id
    print(f"secure greedy generation: {describe}, prompt of {input_ids.shape[1]} tokens, {args.new_tokens} new tokens")

    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        try:
            started = time.perf_counter()
            secure_tokens = secure_model.generate(
                input_ids, max_new_tokens=args.new_tokens, eos_token_id=eos, pad_token_id=pad
            )
            seconds = time.perf_counter() - started
            steps = list(secure_model.generation_costs)
        finally:
            secure_model.close()
    with torch.no_grad():
        plain = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=args.new_tokens, do_sample=False,
            pad_token_id=pad, output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    plain_tokens = plain.sequences
    top2 = torch.stack(plain.scores).topk(2, dim=-1).values  # [steps, batch, 2]
    margin = float((top2[..., 0] - top2[..., 1]).min())

    new_secure = secure_tokens[0, input_ids.shape[1] :].tolist()
    new_plain = plain_tokens[0, input_ids.shape[1] :].tolist()
    print(f"\nprompt tokens:        {input_ids[0].tolist()}")
    print(f"secure new tokens:    {new_secure}")
    print(f"plaintext new tokens: {new_plain}")
    if tokenizer is not None:
        print(f"secure text:    {tokenizer.decode(secure_tokens[0])!r}")
        print(f"plaintext text: {tokenizer.decode(plain_tokens[0])!r}")
    print(f"equal to plaintext greedy: {'yes' if torch.equal(secure_tokens, plain_tokens) else 'no'}")
    print(
        f"smallest top-2 logit margin on the greedy path: {margin:.3f} (the secure fixed-point error is of order 1e-3)"
    )

    print("\ncost per generated token (bytes: sent by all three parties)")
    print(f"{'step':>13}  {'token':>6}  {'seconds':>8}  {'bytes':>12}  {'rounds':>6}")
    for i, (token, cost) in enumerate(zip(new_secure, steps, strict=True), start=1):
        label = "1 (+ prompt)" if i == 1 else str(i)
        print(f"{label:>13}  {token:>6}  {cost.seconds:8.3f}  {cost.bytes:>12,}  {cost.rounds:>6,}")
    later = steps[1:]
    if later:
        mean = [sum(getattr(c, key) for c in later) / len(later) for key in ("seconds", "bytes", "rounds")]
        print(f"tokens 2-{len(steps)}: {mean[0]:.3f} s, {mean[1] / 1e6:.2f} MB, {mean[2]:.0f} rounds each on average")
    print(f"total: {seconds:.2f} s for {len(steps)} tokens")


if __name__ == "__main__":
    main()
