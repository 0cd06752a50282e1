"""Choosing the next token over GPT-2's vocabulary (50,257 logits), once per decode step:
the secure argmax of greedy decoding against sampling inside MPC (``protocols.sampling``)
with a temperature, and with HF's usual top-k 50 and top-p 0.9 on top; then whole decode
steps of GPT-2 base (12 layers, seeded random weights, a 32-token prompt) greedy and sampled.

    python -m benchmarks.sampling      # about three minutes; also stored by benchmarks.report

Op rows: median seconds inside the parties (slowest party), bytes of all parties, rounds.
Generation rows: the mean of decode steps 2-4 on the driver's clock (step 1 is the prompt's).
"""

from __future__ import annotations

import json
import time

import torch
import transformers

import securetorch as puma
from benchmarks.common import ROOT_RESULTS, emit, measured, summarise
from securetorch.protocols import comparison as pc
from securetorch.protocols.sampling import SamplingSettings, sample
from securetorch.session.context import current

VOCAB = 50257
SETTINGS = {
    "secure argmax (greedy)": None,
    "sampling, temperature 0.8": SamplingSettings(0.8),
    "sampling, temperature 0.8, top-k 50, top-p 0.9": SamplingSettings(0.8, top_k=50, top_p=0.9),
}


def _secure(logits: torch.Tensor, settings: SamplingSettings | None, repeat: int):
    x = puma.share(logits if puma.rank() == 0 else None, owner=0)
    ctx = current()
    if settings is None:
        return measured(lambda: pc.argmax_onehot_last_dim(ctx, x.shares), repeat)
    return measured(lambda: sample(ctx, x.shares, settings), repeat)


def rows(repeat: int = 1) -> list[dict]:
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0)) * 3  # benchmark input only
    out = []
    with puma.LocalCluster() as cluster:
        for name, settings in SETTINGS.items():
            results = cluster.run(_secure, logits, settings, repeat)
            out.append({"op": f"next token over {VOCAB:,} logits: {name}", **summarise(results)})
    return out


def generation_rows(layers: int = 12, new_tokens: int = 4) -> list[dict]:
    """GPT-2 base decode steps, greedy and sampled (temperature 0.8, top-k 50, top-p 0.9,
    as the issue asks), with a streamer: cost per token of each and the ratio."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=layers)).eval()
    ids = torch.randint(1000, 20000, (1, 32), generator=torch.Generator().manual_seed(0))
    out = []

    class Counter:
        def __init__(self) -> None:
            self.tokens = 0

        def put(self, value: torch.Tensor) -> None:
            self.tokens += 1

        def end(self) -> None:
            pass

    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        for name, settings in [("greedy", {}), ("sampled", {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.9})]:  # fmt: skip
            streamer = Counter()
            started = time.perf_counter()
            secure_model.generate(ids, max_new_tokens=new_tokens, streamer=streamer, **settings)
            seconds = time.perf_counter() - started
            later = secure_model.generation_costs[1:]
            out.append({
                "workload": f"GPT-2 base ({layers} layers), 32 -> {new_tokens} tokens, {name}",
                "seconds": round(seconds, 2),
                "streamed_tokens": streamer.tokens - 1,
                "per_token": {
                    "seconds": round(sum(c.seconds for c in later) / len(later), 2),
                    "bytes": round(sum(c.bytes for c in later) / len(later)),
                    "rounds": round(sum(c.rounds for c in later) / len(later)),
                },
            })  # fmt: skip
        secure_model.close()
    greedy, sampled = out[0]["per_token"], out[1]["per_token"]
    out[1]["per_token_vs_greedy"] = {key: round(sampled[key] / greedy[key], 3) for key in greedy}
    return out


def main() -> None:
    measured_rows = rows() + generation_rows()
    emit("sampling", measured_rows)
    stored = json.loads(ROOT_RESULTS.read_text())
    stored["results"]["sampling"] = measured_rows
    ROOT_RESULTS.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
