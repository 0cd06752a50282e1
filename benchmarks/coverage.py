"""Every model class the project tests, with its error against plaintext and its cost per
token at one fixed small config (2 layers, hidden size 32, 4 heads, vocabulary 120, seeded
random weights), on three in-process parties. Writes ``benchmarks/coverage.json`` and the
README's table of supported classes.

    python -m benchmarks.coverage            # about two minutes on 2 cores
    python -m benchmarks.coverage --readme   # only rewrite the README's table from coverage.json

The catalogue below is also what ``tests/models`` run (one home for the configs): a class
listed here is a class the tests check against plaintext.

Columns: max abs error of the output (logits, or the last hidden state) against plaintext
float32 on 2 x 12 tokens, the second padded (real positions only; vision: two 32 x 32 images);
bytes (all parties) per token and rounds of a forward of 1 x 12 tokens (vision: per patch
token of one image); for models that generate, bytes and rounds of one decode step after a
12-token prompt. Costs are exact (they depend on shapes only); errors vary slightly between
runs (the secret sharing is random).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from dataclasses import dataclass
from typing import Any

import torch
import transformers as hf

import securetorch as puma
from benchmarks.common import write_between
from securetorch.comm.stats import total

hf.logging.set_verbosity_error()

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "coverage.json"
V = 120
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V)
ENCODER = dict(SMALL, pad_token_id=1)
DECODER = dict(SMALL, num_key_value_heads=2, pad_token_id=0)

# Text encoders and their task heads (padding token 1).
ENCODERS: dict[str, hf.PretrainedConfig] = {
    "BertModel": hf.BertConfig(**ENCODER),
    "BertForSequenceClassification": hf.BertConfig(**ENCODER, num_labels=3),
    "BertForMaskedLM": hf.BertConfig(**ENCODER),
    "BertForTokenClassification": hf.BertConfig(**ENCODER, num_labels=5),
    "BertForQuestionAnswering": hf.BertConfig(**ENCODER),
    "RobertaModel": hf.RobertaConfig(**ENCODER),
    "RobertaForMaskedLM": hf.RobertaConfig(**ENCODER),
    "DistilBertModel": hf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=V, pad_token_id=1),
    "DistilBertForSequenceClassification": hf.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=V, pad_token_id=1, num_labels=3
    ),
    "XLMRobertaModel": hf.XLMRobertaConfig(**ENCODER),
    "XLMRobertaForTokenClassification": hf.XLMRobertaConfig(**ENCODER, num_labels=4),
    "MPNetModel": hf.MPNetConfig(**ENCODER),
    "MPNetForMaskedLM": hf.MPNetConfig(**ENCODER),
    "AlbertModel": hf.AlbertConfig(**ENCODER, embedding_size=16),
    "AlbertForQuestionAnswering": hf.AlbertConfig(**ENCODER, embedding_size=16),
    "ElectraModel": hf.ElectraConfig(**ENCODER, embedding_size=16),
    "DebertaV2Model": hf.DebertaV2Config(**ENCODER),
    "DebertaV2ForSequenceClassification": hf.DebertaV2Config(**ENCODER, num_labels=3),
    "ModernBertModel": hf.ModernBertConfig(**ENCODER),
    "ModernBertForTokenClassification": hf.ModernBertConfig(**ENCODER, num_labels=4),
    "T5EncoderModel": hf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
}
# Causal language models (padding token 0); each also as a sequence classifier (CLASSIFIERS).
DECODERS: dict[str, hf.PretrainedConfig] = {
    "GPT2LMHeadModel": hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V),
    "LlamaForCausalLM": hf.LlamaConfig(**DECODER),
    "Qwen2ForCausalLM": hf.Qwen2Config(**DECODER),
    "Qwen3ForCausalLM": hf.Qwen3Config(**DECODER, head_dim=8),
    "MistralForCausalLM": hf.MistralConfig(**DECODER),
    "Phi3ForCausalLM": hf.Phi3Config(**dict(DECODER, num_key_value_heads=4)),
    "PhiForCausalLM": hf.PhiConfig(**SMALL, pad_token_id=0),
    "FalconForCausalLM": hf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=V),
    "GemmaForCausalLM": hf.GemmaConfig(**DECODER, head_dim=8),
    # soft-capping, post-norms. Its post-norms rescale the attention and MLP outputs, which
    # at the default init (0.02) of a 32-wide model are about 1e-3: 18 fractional bits keep
    # 8 significant bits of them, and the max error over a run varied 0.006-0.022. At 0.05
    # (outputs as large as a wide model's) it is 0.0035-0.0038.
    "Gemma2ForCausalLM": hf.Gemma2Config(**DECODER, head_dim=8, initializer_range=0.05),
    "Gemma3ForCausalLM": hf.Gemma3TextConfig(**DECODER, head_dim=8),  # q/k norms, sliding windows
    "GPTNeoXForCausalLM": hf.GPTNeoXConfig(**SMALL, pad_token_id=0),
    "OPTForCausalLM": hf.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=V, word_embed_proj_dim=32
    ),
    "BloomForCausalLM": hf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=V),  # ALiBi
}
# Seeds (default 2) of the generation tests whose five greedy steps all have plaintext top-2
# margins above 0.05 (weights at initializer_range 0.3).
GENERATION_SEEDS = {"PhiForCausalLM": 3, "Gemma3ForCausalLM": 3, "GPT2LMHeadModel": 5}
# Decoder sequence classifiers -> the causal LM whose config they take.
CLASSIFIERS: dict[str, str] = {
    "Gemma3TextForSequenceClassification": "Gemma3ForCausalLM",  # the multimodal Gemma 3 takes a vision config
    "GPT2ForSequenceClassification": "GPT2LMHeadModel",
    **{
        n.replace("ForCausalLM", "ForSequenceClassification"): n
        for n in DECODERS
        if n.endswith("ForCausalLM") and not n.startswith("Gemma3")
    },
}
VISION: dict[str, hf.PretrainedConfig] = {
    name: hf.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    for name in ("ViTModel", "ViTForImageClassification")
}
T5 = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
SEQ2SEQ: dict[str, tuple[str, hf.PretrainedConfig]] = {
    "t5": ("T5ForConditionalGeneration", hf.T5Config(**T5)),
    "t5-v1.1": (
        "T5ForConditionalGeneration",
        hf.T5Config(**T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    ),
    "bart": (
        "BartForConditionalGeneration",
        hf.BartConfig(
            vocab_size=V,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            decoder_start_token_id=2,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            forced_eos_token_id=None,
        ),
    ),
}


def build(name: str, config: hf.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """The class ``name`` on ``config`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return getattr(hf, name)(config).eval()


def classifier_config(name: str) -> hf.PretrainedConfig:
    """The config of decoder sequence classifier ``name``: its causal LM's, 3 labels, padding 1."""
    base = DECODERS[CLASSIFIERS[name]]
    return base.__class__.from_dict({**base.to_dict(), "num_labels": 3, "pad_token_id": 1})


def padded(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 12 tokens, the second with 4 padding positions (token 1)."""
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 12, dtype=torch.long)
    pad = slice(0, 4) if left else slice(8, 12)
    mask[1, pad] = 0
    ids[1, pad] = 1
    return ids, mask


def images(batch: int = 2) -> torch.Tensor:
    """Normalised images, as an image processor returns them (about -2..2)."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3)).clamp(-2, 2)


def output_of(out: Any) -> torch.Tensor:
    """The output a class's accuracy is measured on: QA start and end logits, logits, or the
    last hidden state."""
    if out.get("start_logits") is not None:
        return torch.stack([out["start_logits"], out["end_logits"]], dim=-1)
    return out["logits"] if out.get("logits") is not None else out["last_hidden_state"]


@dataclass(frozen=True)
class Entry:
    """One catalogue row: the class, what it is, and how to build and call it."""

    name: str
    kind: str  # "encoder", "decoder", "classifier", "vision", "seq2seq"
    config: hf.PretrainedConfig
    label: str = ""

    @property
    def generates(self) -> bool:
        return self.kind in ("decoder", "seq2seq")


def catalogue() -> list[Entry]:
    entries = [Entry(n, "encoder", c) for n, c in ENCODERS.items()]
    entries += [Entry(n, "decoder", c) for n, c in DECODERS.items()]
    entries += [Entry(n, "classifier", classifier_config(n)) for n in CLASSIFIERS]
    entries += [Entry(n, "vision", c) for n, c in VISION.items()]
    entries += [Entry(n, "seq2seq", c, label) for label, (n, c) in SEQ2SEQ.items()]
    return entries


def inputs_for(entry: Entry, batch: int) -> dict[str, torch.Tensor]:
    if entry.kind == "vision":
        return {"pixel_values": images(batch)}
    ids, mask = padded(left=entry.kind == "decoder")
    inputs = {"input_ids": ids[:batch], "attention_mask": mask[:batch]}
    if entry.kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.randint(3, V, (batch, 5), generator=torch.Generator().manual_seed(6))
    return inputs


def error_against(entry: Entry, got: Any, want: Any, mask: torch.Tensor | None) -> float:
    error = (output_of(got) - output_of(want)).abs()
    if mask is not None and entry.kind != "seq2seq" and error.shape[:2] == mask.shape:
        error = error[mask.bool()]  # padding positions of a decoder attend to nothing
    return float(error.max())


def measure(cluster: puma.Cluster, entry: Entry) -> dict[str, Any]:
    """One catalogue row's error against plaintext and its costs."""
    model = build(entry.name, entry.config)
    secure_model = puma.secure(model, cluster=cluster)
    try:
        inputs = inputs_for(entry, 2)
        got = secure_model(**inputs)
        with torch.no_grad():
            want = model(**inputs)
        row: dict[str, Any] = {
            "class": entry.name,
            "kind": entry.kind,
            "variant": entry.label,
            "max_error": error_against(entry, got, want, inputs.get("attention_mask")),
        }
        one = inputs_for(entry, 1)
        cluster.reset_stats()
        secure_model(**one)
        cost = total(cluster.stats())
        tokens = (
            (entry.config.image_size // entry.config.patch_size) ** 2 + 1
            if entry.kind == "vision"
            else one["input_ids"].shape[1]
        )
        row |= {"forward_bytes_per_token": cost.bytes_sent // tokens, "forward_rounds": cost.rounds}
        if entry.generates:
            secure_model.generate(one["input_ids"], max_new_tokens=2)
            step = secure_model.generation_costs[1]
            row |= {"decode_step_bytes": step.bytes, "decode_step_rounds": step.rounds}
        return row
    finally:
        secure_model.close()


README_BEGIN = "<!-- supported classes: written by python -m benchmarks.coverage from benchmarks/coverage.json -->"
README_END = "<!-- end of the supported classes -->"
KINDS = {
    "encoder": "text encoders and their heads",
    "decoder": "causal language models (greedy `generate`)",
    "classifier": "decoder sequence classifiers (pooled at the last non-padding token)",
    "vision": "vision (secret `pixel_values`)",
    "seq2seq": "encoder-decoder (greedy `generate`)",
}


def readme_table(rows: list[dict[str, Any]]) -> str:
    """The README's table of supported classes, from ``coverage.json``'s rows."""
    lines = [
        "| class | max abs error | forward: bytes/token, rounds | decode step: KB, rounds |",
        "| --- | --- | --- | --- |",
    ]
    for kind, title in KINDS.items():
        lines.append(f"| ***{title}*** | | | |")
        for row in (r for r in rows if r["kind"] == kind):
            name = f"{row['class']} ({row['variant']})" if row["variant"] else row["class"]
            decode = (
                f"{row['decode_step_bytes'] / 1e3:,.0f} KB, {row['decode_step_rounds']}"
                if "decode_step_bytes" in row
                else ""
            )
            lines.append(
                f"| `{name}` | {row['max_error']:.1e} | {row['forward_bytes_per_token'] / 1e3:,.0f} KB, "
                f"{row['forward_rounds']} | {decode} |"
            )
    return "\n".join(lines)


def update_readme(rows: list[dict[str, Any]]) -> None:
    write_between(ROOT / "README.md", README_BEGIN, README_END, readme_table(rows))


def run() -> list[dict[str, Any]]:
    """Measure every catalogue row on three in-process parties; write ``coverage.json`` and
    the README's table."""
    rows = []
    with puma.InProcessCluster() as cluster:
        for entry in catalogue():
            rows.append(measure(cluster, entry))
            print(json.dumps(rows[-1]), flush=True)
    OUTPUT.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    update_readme(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help="only rewrite the README's table from coverage.json")
    if parser.parse_args().readme:
        update_readme(json.loads(OUTPUT.read_text())["rows"])
        return
    run()
    print(f"wrote {OUTPUT} and the README's table of supported classes")


if __name__ == "__main__":
    main()
