"""Time on a link: a BERT-base forward (16 tokens, 12 layers, seeded random weights) on
loopback and played on the ``lan`` and ``puma`` profiles by the link emulator, beside the
projection compute + rounds x RTT + bytes / bandwidth (compute: the loopback run's seconds;
rounds and bytes: the played run's, whose parties pick protocol variants for the profile;
bytes: the busiest party's, as each party sends on its own links); and GPT-2 base decode steps (from the generation rows of
``benchmarks.sampling``) projected onto ``lan``, ``puma`` and ``wan`` with the bytes of all
parties (an upper bound: each party sends about a third of them, on its own links).

    python -m benchmarks.network       # about two minutes; also stored by benchmarks.report
"""

from __future__ import annotations

import json
import time

import torch
import transformers

import securetorch as puma
from benchmarks.common import ROOT_RESULTS, emit
from securetorch.comm.profile import PRESETS

TOKENS = 16


def _forward(network: str | None) -> dict:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()
    ids = torch.randint(1000, 20000, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    with puma.LocalCluster(network=network) as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        secure_model(input_ids=ids)  # warm
        cluster.reset_stats()
        started = time.perf_counter()
        secure_model(input_ids=ids)
        seconds = time.perf_counter() - started
        stats = cluster.stats()
    return {"seconds": seconds, "rounds": stats[0].rounds, "busiest_party_bytes": max(s.bytes_sent for s in stats)}


def rows() -> list[dict]:
    loopback = _forward(None)
    out = [{"workload": f"BERT-base, {TOKENS} tokens, loopback", **_rounded(loopback)}]
    for name in ("lan", "puma"):
        profile = PRESETS[name]
        played = _forward(name)
        # the parties pick protocol variants for the profile: its rounds and bytes, loopback's compute
        projected = profile.projected_seconds(loopback["seconds"], played["rounds"], played["busiest_party_bytes"])
        out.append({
            "workload": f"BERT-base, {TOKENS} tokens, played on {profile}",
            **_rounded(played),
            "projected_seconds": round(projected, 2),
            "played_vs_projected": round(played["seconds"] / projected, 3),
        })  # fmt: skip
    return out


def decode_projections(results: dict) -> list[dict]:
    """GPT-2 base decode steps (greedy, sampled) moved onto each preset link."""
    out = []
    for row in results.get("sampling", []):
        if "per_token" not in row:
            continue
        step = row["per_token"]
        out.append({
            "workload": row["workload"].replace("32 -> 4 tokens, ", "decode step, "),
            **{
                name: round(profile.projected_seconds(step["seconds"], step["rounds"], step["bytes"]), 1)
                for name, profile in PRESETS.items()
            },
        })  # fmt: skip
    return out


def _rounded(row: dict) -> dict:
    return {**row, "seconds": round(row["seconds"], 2)}


def main() -> None:
    stored = json.loads(ROOT_RESULTS.read_text())
    measured = rows()
    emit("network", measured)
    stored["results"]["network"] = measured
    ROOT_RESULTS.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
