"""Public-weight mode (``puma.secure(model, weights="public")``): secret against public weights
on GPT-2 base, an open 1B-class LLM generating on this machine, and Llama-3.1-8B projected.

    python -m benchmarks.public_weights             # GPT-2 and the 8B projection (about 5 minutes)
    python -m benchmarks.public_weights --llama-1b  # also the 1B-class run (about 10 more minutes;
                                                    # its 2.5 GB checkpoint is kept in benchmarks/.cache)

1. GPT-2 base (12 layers, seeded random weights), 32 -> 1 token, with secret and with public
   weights, each on a fresh ``LocalCluster`` (peak RSS is per mode): seconds, bytes, rounds,
   peak RSS per party, and per layer the bytes and rounds of each mode (cost report).
2. Llama-3.2-1B's shape (16 layers, hidden 2048, MLP 8192, 32 heads with 8 KV heads,
   vocabulary 128,256, tied embeddings) with seeded random bf16 weights in a safetensors
   checkpoint that the three parties memory-map: 32 -> 8 tokens, greedy, against plaintext
   greedy decoding in float32 from the same weights (tokens equal on every step whose
   plaintext top-2 margin is decisive); prefill and per-token seconds, bytes, rounds; peak
   RSS per party; each step projected onto the ``puma`` and ``wan`` profiles.
3. Llama-3.1-8B's shape (hidden 4096, MLP 14336, 32 heads with 8 KV heads, vocabulary 128,256,
   untied): the models with one and with two decoder layers decode tokens 2 to 4 over a
   32-token cache; one layer = the difference of their mean steps, the rest (embedding,
   final norm, LM head, argmax) = the one-layer step less a layer; a token of the whole
   model = rest + 32 layers, projected onto each profile. Memory per party = the 8B's bf16 weights (mapped once) + the
   one-layer run's peak RSS less its own checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

import securetorch as puma
from benchmarks.common import DECODE_STEPS, ROOT_RESULTS, emit, mean_steps, peak_rss_mb
from securetorch.comm.profile import PRESETS
from securetorch.comm.stats import total
from securetorch.models import checkpoint

transformers.logging.set_verbosity_error()

CACHE = pathlib.Path(__file__).resolve().parent / ".cache"
LLAMA_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
    max_position_embeddings=131072, pad_token_id=0,
)  # fmt: skip
LLAMA_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5,
    max_position_embeddings=131072, pad_token_id=0,
)  # fmt: skip
PROMPT = 32


def _prompt(vocab: int) -> torch.Tensor:
    return torch.randint(1000, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(0))


def _projections(seconds: float, rounds: int, nbytes: int) -> dict[str, float]:
    return {name: round(p.projected_seconds(seconds, rounds, nbytes), 1) for name, p in PRESETS.items()}


# ----------------------------------------------------------------------------- GPT-2 base


def gpt2_rows(layers: int = 12) -> list[dict]:
    """GPT-2 base 32 -> 1 token in each mode, each on its own cluster."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers)).eval()
    ids = _prompt(model.config.vocab_size)
    rows = []
    for weights in ("secret", "public"):
        with puma.LocalCluster() as cluster:
            secure_model = puma.secure(model, cluster=cluster, weights=weights)
            cluster.reset_stats()
            with cluster.cost_report() as report:
                started = time.perf_counter()
                tokens = secure_model.generate(ids, max_new_tokens=1)
                seconds = time.perf_counter() - started
            cost = total(cluster.stats())
            rss = cluster.run(peak_rss_mb)
            secure_model.close()
        rows.append({
            "workload": f"GPT-2 base ({layers} layers), 32 -> 1 token, {weights} weights",
            "weights": weights,
            "seconds": round(seconds, 2),
            "bytes": cost.bytes_sent,
            "rounds": cost.rounds,
            "peak_rss_mb_per_party": [round(r, 1) for r in rss],
            "token": int(tokens[0, -1]),
            "by_layer": [{k: r[k] for k in ("layer", "bytes", "rounds")} for r in report.by("layer")],
        })  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- Llama shapes


def _checkpoint(name: str, config: LlamaConfig, seed: int) -> tuple[pathlib.Path, str]:
    """A seeded random bf16 checkpoint of ``config`` in the cache (written once; a tied
    parameter stored once), with its SHA-256."""
    path = CACHE / f"{name}-seed{seed}.safetensors"
    digest_file = path.with_suffix(".sha256")
    if path.is_file() and digest_file.is_file():
        return path, digest_file.read_text().strip()
    CACHE.mkdir(exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config, torch_dtype=torch.bfloat16)
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            tensors[key] = value
    digest = checkpoint.write(tensors, path)
    digest_file.write_text(digest + "\n")
    return path, digest


def _mapped_model(config: LlamaConfig, path: pathlib.Path, digest: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """The model with the checkpoint's weights: mapped as they are (bf16), or widened."""
    tensors = checkpoint.open_checkpoint(path, digest)
    with no_init_weights():
        model = LlamaForCausalLM._from_config(config, torch_dtype=dtype)
    state = {k: v if dtype == torch.bfloat16 else v.to(dtype) for k, v in tensors.items()}
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    return model.eval()


def _plaintext_greedy(config: LlamaConfig, path: pathlib.Path, digest: str, new_tokens: int) -> tuple:
    """Greedy tokens in float32 from the checkpoint's weights, and each step's top-2 margin."""
    model = _mapped_model(config, path, digest, torch.float32)
    with torch.no_grad():
        out = model.generate(
            _prompt(config.vocab_size), max_new_tokens=new_tokens, do_sample=False,
            output_scores=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    margins = [float(s.topk(2).values[0, 0] - s.topk(2).values[0, 1]) for s in out.scores]
    del model
    gc.collect()
    return out.sequences, margins


def llama_1b_rows(new_tokens: int = 8) -> list[dict]:
    config = LlamaConfig(**LLAMA_1B)
    path, digest = _checkpoint("llama-3.2-1b-shape", config, seed=0)
    plain, margins = _plaintext_greedy(config, path, digest, new_tokens)
    model = _mapped_model(config, path, digest, torch.bfloat16)
    ids = _prompt(config.vocab_size)
    with puma.LocalCluster() as cluster:
        started = time.perf_counter()
        secure_model = puma.secure(model, cluster=cluster, weights="public", checkpoint=path, sha256=digest)
        install = time.perf_counter() - started
        tokens = secure_model.generate(ids, max_new_tokens=new_tokens)
        steps = secure_model.generation_costs
        rss = cluster.run(peak_rss_mb)
        secure_model.close()
    later = steps[1:]
    per_token = {
        "seconds": round(sum(s.seconds for s in later) / len(later), 2),
        "bytes": round(sum(s.bytes for s in later) / len(later)),
        "rounds": round(sum(s.rounds for s in later) / len(later)),
    }
    decisive = [i for i, m in enumerate(margins) if m > 0.05]
    return [{
        "workload": f"Llama-3.2-1B shape (16 layers, bf16 checkpoint), 32 -> {new_tokens} tokens, public weights",
        "install_seconds": round(install, 2),
        "prefill": {"seconds": round(steps[0].seconds, 2), "bytes": steps[0].bytes, "rounds": steps[0].rounds},
        "per_token": per_token,
        "prefill_projected_seconds": _projections(steps[0].seconds, steps[0].rounds, steps[0].bytes),
        "per_token_projected_seconds": _projections(per_token["seconds"], per_token["rounds"], per_token["bytes"]),
        "peak_rss_mb_per_party": [round(r, 1) for r in rss],
        "checkpoint_mb": round(path.stat().st_size / 1e6, 1),
        "tokens_equal_plaintext": bool(torch.equal(tokens, plain)),
        "steps_differing": [i for i in range(new_tokens) if int(tokens[0, PROMPT + i]) != int(plain[0, PROMPT + i])],
        "decisive_steps": decisive,
        "decisive_steps_equal": all(int(tokens[0, PROMPT + i]) == int(plain[0, PROMPT + i]) for i in decisive),
        "plaintext_top2_margins": [round(m, 4) for m in margins],
    }]  # fmt: skip


def _decode_step(layers: int) -> tuple[dict, float, float]:
    """A token of an 8B-shaped model with ``layers`` decoder layers over a 32-token cache (the
    mean of tokens 2 to 1 + ``DECODE_STEPS``, ``mean_steps``: the layer's cost is a difference
    of two such steps, which single steps left to chance): (its cost, the parties' largest
    peak RSS in MB, the checkpoint's MB)."""
    config = LlamaConfig(**LLAMA_8B, num_hidden_layers=layers)
    path, digest = _checkpoint(f"llama-3.1-8b-shape-{layers}-layers", config, seed=1)
    model = _mapped_model(config, path, digest, torch.bfloat16)
    with puma.LocalCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster, weights="public", checkpoint=path, sha256=digest)
        secure_model.generate(_prompt(config.vocab_size), max_new_tokens=1 + DECODE_STEPS)
        step = mean_steps(secure_model.generation_costs[1:])
        rss = cluster.run(peak_rss_mb)
        secure_model.close()
    return step, max(rss), path.stat().st_size / 1e6


def llama_8b_rows(layers: int = 32) -> list[dict]:
    one, rss, checkpoint_mb = _decode_step(1)
    two, _, _ = _decode_step(2)
    layer = {k: two[k] - one[k] for k in one}
    rest = {k: one[k] - layer[k] for k in one}
    whole = {k: rest[k] + layers * layer[k] for k in one}
    for part in (layer, rest, whole):  # means of steps: whole bytes, rounds to a tenth
        part["bytes"], part["rounds"] = round(part["bytes"]), round(part["rounds"], 1)
    config = LlamaConfig(**LLAMA_8B, num_hidden_layers=layers)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    weights_mb = 2 * parameters / 1e6
    return [{
        "workload": f"Llama-3.1-8B shape ({layers} layers), one token over a 32-token cache, public weights (projected)",
        "layer": {k: round(v, 2) if k == "seconds" else v for k, v in layer.items()},
        "rest": {k: round(v, 2) if k == "seconds" else v for k, v in rest.items()},
        "per_token": {k: round(v, 2) if k == "seconds" else v for k, v in whole.items()},
        "per_token_projected_seconds": _projections(whole["seconds"], whole["rounds"], whole["bytes"]),
        "parameters": parameters,
        "memory_mb_per_party": round(weights_mb + rss - checkpoint_mb),
    }]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-1b", action="store_true", help="also run the 1B-class model (about 10 minutes)")
    args = parser.parse_args()
    rows = gpt2_rows() + llama_8b_rows()
    stored = json.loads(ROOT_RESULTS.read_text())
    stored["results"]["public_weights"] = rows
    if args.llama_1b:
        stored["results"]["llama1b_public"] = llama_1b_rows()
    emit("public_weights", rows + stored["results"].get("llama1b_public", []))
    ROOT_RESULTS.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
