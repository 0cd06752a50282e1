"""Precision against cost: GPT-2 base (12 layers, seeded random weights) on 32 tokens -> logits
on loopback at several fixed-point settings, f fractional bits and l = f + 26 compared bits
(so comparisons stay exact for reals below 2^25 at every f, as at the default f = 18,
l = 44). Per setting: the max abs error of the logits vs the plaintext float32 model, the
bytes (all parties), rounds and seconds of the secure call. Writes
``benchmarks/precision.json`` and the table in ``docs/protocols.md`` between its markers.

    python -m benchmarks.precision      # about 3 minutes on 2 cores
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import securetorch as puma
from benchmarks.common import machine, write_between
from benchmarks.models import forward_row
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "precision.json"
DOC = ROOT / "docs" / "protocols.md"
BEGIN = "<!-- precision table: written by python -m benchmarks.precision from benchmarks/precision.json -->"
END = "<!-- end of the precision table -->"
FRAC_BITS = (16, 18, 20, 22)
RANGE_BITS = DEFAULT_COMPARE_BITS - DEFAULT_FRAC_BITS
WORKLOAD = "GPT-2 base (12 layers), 32 tokens -> logits"


def rows() -> list[dict[str, Any]]:
    """One secure forward per setting, the model and tokens as in ``benchmarks.models``."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(1000, 20000, (1, 32))
    out = []
    for frac_bits in FRAC_BITS:
        compare_bits = frac_bits + RANGE_BITS
        with puma.LocalCluster(frac_bits=frac_bits, compare_bits=compare_bits) as cluster:
            secure_model = puma.secure(model, cluster=cluster)
            row = forward_row(cluster, secure_model, model, ids, WORKLOAD, "logits")
            secure_model.close()
        out.append({"frac_bits": frac_bits, "compare_bits": compare_bits, **row})
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{WORKLOAD}, on loopback (`python -m benchmarks.precision`):",
        "",
        "| f (fractional bits) | l (compared bits) | max error of the logits | MB (all parties) | rounds | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        default = " (default)" if r["frac_bits"] == DEFAULT_FRAC_BITS else ""
        lines.append(
            f"| {r['frac_bits']}{default} | {r['compare_bits']} | {r['max_error_logits']:.1e} "
            f"| {r['bytes'] / 1e6:,.1f} | {r['rounds']} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    results = rows()
    OUTPUT.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    write_between(DOC, BEGIN, END, table(results))
    print(table(results))
    print(f"wrote {OUTPUT.relative_to(ROOT)} and the precision table in {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
