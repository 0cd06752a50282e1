"""Run every benchmark and write ``benchmarks/results.json`` and ``docs/benchmarks.md``.

    python -m benchmarks.report          # about 10 minutes on 2 cores
    scripts/dev.sh bench                 # the same, in the project's virtualenv

The markdown puts SPU 0.9.5 (PUMA's settings, measured on this machine kind; REFERENCE.md)
beside our numbers and marks each of issue #5's targets (half of SPU's time and bytes).
"""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

from benchmarks import engine, llama7b, models, nonlinear
from benchmarks.common import machine

ROOT = pathlib.Path(__file__).resolve().parent.parent

# SPU 0.9.5 with PUMA's settings on this machine kind: seconds, bytes, rounds, max abs error.
SPU_MODELS = {
    "BERT-base (12 layers), 16 tokens": (41.3, 704e6, 7329, 8.8e-2),
    "BERT-base (12 layers), 32 tokens": (59.1, 1465e6, 9545, 9.0e-2),
    "BERT-base (12 layers), 128 tokens": (171.1, 7213e6, 22429, 9.2e-2),
    "GPT-2 base (12 layers), 32 tokens -> logits": (91.3, 1586e6, 10290, 7.0e-2),
}
SPU_MATMUL = (0.46, 5.1e6, 3, 2.7e-4)
GPT2_16_TARGET_SECONDS = 150.0
RING_MATMUL_TARGET = 6.0
COMMANDS = {
    "engine": "python -m benchmarks.engine",
    "nonlinear": "python -m benchmarks.nonlinear",
    "models": "python -m benchmarks.models",
    "llama7b": "python -m benchmarks.llama7b",
}


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f}"


def _holds(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


def _target_rows(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| workload | ours: s / MB / rounds / error | SPU-PUMA: s / MB / rounds / error | time ≤ ½ SPU | bytes ≤ ½ SPU | command |",
        "|---|---|---|---|---|---|",
    ]

    def add(name: str, ours: tuple, spu: tuple, command: str) -> None:
        s, b, r, e = ours
        ss, sb, sr, se = spu
        lines.append(
            f"| {name} | {s:.2f} / {_mb(b)} / {r} / {e:.1e} | {ss} / {_mb(sb)} / {sr} / {se:.1e} "
            f"| {_holds(s, ss / 2)} | {_holds(b, sb / 2)} | `{command}` |"
        )

    matmul = next(r for r in results["engine"] if r["op"].startswith("secure matmul"))
    add(
        "matmul 128×768×768",  # noqa: RUF001
        (matmul["seconds"], matmul["bytes"], matmul["rounds"], matmul["max_abs_error"]),
        SPU_MATMUL,
        COMMANDS["engine"],
    )
    for row in results["nonlinear"]:
        spu = row["spu"]
        add(
            f"{row['op']} {row['shape']}",
            (row["seconds"], row["bytes"], row["rounds"], row["max_error"]),
            (spu["seconds"], spu["bytes"], spu["rounds"], spu["max_error"]),
            COMMANDS["nonlinear"],
        )
    for row in results["models"]:
        spu = SPU_MODELS.get(row["workload"])
        if spu is None:
            continue
        error = row.get("max_error_last_hidden_state", row.get("max_error_logits"))
        add(row["workload"], (row["seconds"], row["bytes"], row["rounds"], error), spu, COMMANDS["models"])
    return lines


def _generation_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for row in results["models"]:
        if "per_token" not in row:
            continue
        lines += [
            f"**{row['workload']}**: {row['seconds']} s in all, {_mb(row['bytes'])} MB, {row['rounds']} rounds; "
            f"tokens equal plaintext greedy decoding: {row['tokens_equal_plaintext']}.",
            "",
        ]
        if len(row["per_token"]) > 1:
            lines += [
                "| token | seconds | MB | rounds | seconds vs token 1 | bytes vs token 1 |",
                "|---|---|---|---|---|---|",
            ]
            for i, t in enumerate(row["per_token"], 1):
                lines.append(
                    f"| {i} | {t['seconds']} | {_mb(t['bytes'])} | {t['rounds']} | {t['seconds_vs_token_1']:.1%} "
                    f"| {t['bytes_vs_token_1']:.1%} |"
                )
            lines.append("")
    return lines


def _profile_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    row = next((r for r in results["models"] if "profile_by_op" in r), None)
    if row is None:
        return []
    lines = [f"Profile of **{row['workload']}** (party 0's seconds; bytes of all parties; exact rounds).", ""]
    for key in ("op", "layer"):
        lines += [
            f"| {key} | calls | seconds | compute seconds | MB | rounds |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(row[f"profile_by_{key}"], key=lambda r: -r["seconds"]):
            if r["bytes"] or r["rounds"]:
                lines.append(
                    f"| {r[key] or '(outside modules)'} | {r['calls']} | {r['seconds']:.3f} | "
                    f"{r['compute_seconds']:.3f} | {_mb(r['bytes'])} | {r['rounds']} |"
                )
        lines.append("")
    return lines


def markdown(results: dict[str, list[dict[str, Any]]], info: dict[str, Any]) -> str:
    ring_rows = [r for r in results["engine"] if "ratio_to_float64" in r]
    llama = results["llama7b"]
    projected = llama[-1]
    gpt2_16 = next(r for r in results["models"] if "32 -> 16" in r["workload"])
    rss = [r for r in results["models"] if "peak_rss_mb_per_party" in r]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m benchmarks.report` on {info['date']} ({info['machine']['cores']} cores, "
        f"torch {info['machine']['torch']}, Python {info['machine']['python']}); three local parties over "
        "loopback, as SPU was measured (REFERENCE.md). Raw numbers: `benchmarks/results.json`. "
        "Seconds vary by about ±10 % between runs; bytes and rounds do not.",
        "",
        "## Issue #5's targets: half of SPU-PUMA's time and bytes",
        "",
        *_target_rows(results),
        "",
        "Other targets:",
        "",
        f"- GPT-2 base, 32 → 16 tokens: {gpt2_16['seconds']} s in all (target ≤ {GPT2_16_TARGET_SECONDS:.0f} s: "
        f"{_holds(gpt2_16['seconds'], GPT2_16_TARGET_SECONDS)}).",
    ]
    for r in ring_rows:
        lines.append(
            f"- {r['op']}: {r['ratio_to_float64']}× a float64 matmul of the same shape "  # noqa: RUF001
            f"(target ≤ {RING_MATMUL_TARGET:.0f}×: {_holds(r['ratio_to_float64'], RING_MATMUL_TARGET)}; "  # noqa: RUF001
            f"`auto` uses the faster kernel)."
        )
    for r in rss:
        lines.append(f"- {r['workload']}: {', '.join(f'{m:,.0f}' for m in r['peak_rss_mb_per_party'])} MB.")
    lines += [
        "",
        "## LLaMA-7B (`python -m benchmarks.llama7b`)",
        "",
        "| run | seconds here | local compute s | MB | rounds | peak RSS per party (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in llama[:2]:
        lines.append(
            f"| {r['workload']} | {r['seconds']:.2f} | {r['compute_seconds']:.2f} | {_mb(r['bytes'])} | {r['rounds']} "
            f"| {', '.join(f'{m:,}' for m in r['peak_rss_mb_per_party'])} |"
        )
    lines += [
        "",
        f"Projected, the whole model (32 layers + embedding, LM head, argmax), 8 → 1 tokens on PUMA's network "
        f"(5 Gbps, 1 ms RTT): local compute {projected['local_compute_seconds']} s + {projected['rounds']} rounds × 1 ms "  # noqa: RUF001
        f"+ {_mb(projected['bytes'])} MB ÷ 5 Gbps = **{projected['projected_seconds']} s** "
        f"(PUMA reports {projected['puma_seconds']:.0f} s). Measured here the same work would take "
        f"{projected['measured_here_seconds']} s.",
        "",
        "## Secure generation, per token (`python -m benchmarks.models`)",
        "",
        *_generation_lines(results),
        "## Where the time goes",
        "",
        *_profile_lines(results),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = {
        "engine": engine.rows(),
        "nonlinear": nonlinear.rows(),
        "models": models.rows(),
        "llama7b": llama7b.rows(),
    }
    info = {"date": datetime.date.today().isoformat(), "machine": machine()}
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps({**info, "results": results}, indent=1) + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text(markdown(results, info))
    print(f"wrote {ROOT / 'benchmarks' / 'results.json'} and {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
