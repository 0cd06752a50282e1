"""Run every benchmark and write ``benchmarks/results.json``, ``docs/benchmarks.md`` and the
README's performance table (between its markers); then ``benchmarks.coverage`` (every
supported class: ``benchmarks/coverage.json`` and the README's table of them),
``benchmarks.costs`` (the cost table of the README and ``docs/protocols.md``),
``benchmarks.precision`` (error against the fixed-point setting, in ``docs/protocols.md``) and
``benchmarks.packing`` (the packing kernels on a decode step, in ``docs/architecture.md``).

    python -m benchmarks.report          # about 10 minutes on 2 cores
    scripts/dev.sh bench                 # the same, in the project's virtualenv
    python -m benchmarks.report --readme # only rewrite the README's table from results.json

The markdown puts SPU 0.9.5 (PUMA's settings, measured on this machine kind; REFERENCE.md)
beside our numbers and marks each of issue #5's targets (half of SPU's time and bytes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
from typing import Any

from benchmarks import (
    costs,
    coverage,
    engine,
    llama7b,
    models,
    network,
    nonlinear,
    packing,
    precision,
    public_weights,
    sampling,
)
from benchmarks.common import ROOT_RESULTS, SPU_MODELS, machine, write_between

ROOT = pathlib.Path(__file__).resolve().parent.parent

SPU_MATMUL = (0.46, 5.1e6, 3, 2.7e-4)
GPT2_16_TARGET_SECONDS = 150.0
RING_MATMUL_TARGET = 6.0
COMMANDS = {
    "engine": "python -m benchmarks.engine",
    "nonlinear": "python -m benchmarks.nonlinear",
    "models": "python -m benchmarks.models",
    "llama7b": "python -m benchmarks.llama7b",
    "sampling": "python -m benchmarks.sampling",
    "network": "python -m benchmarks.network",
    "public_weights": "python -m benchmarks.public_weights",
}


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f}"


def _count(value: float) -> str:
    """A count that may be a mean of steps (rounds): whole, or to one decimal."""
    value = round(value, 1)
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


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


def _sampling_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Choosing a token: the secure argmax against sampling inside MPC (``benchmarks.sampling``)."""
    if not results.get("sampling"):
        return []
    lines = [
        f"## Choosing the next token: argmax or sampling (`{COMMANDS['sampling']}`)",
        "",
        "| op | seconds | MB | rounds |",
        "|---|---|---|---|",
    ]
    ops = [r for r in results["sampling"] if "op" in r]
    lines += [f"| {r['op']} | {r['seconds']} | {_mb(r['bytes'])} | {r['rounds']} |" for r in ops]
    steps = [r for r in results["sampling"] if "per_token" in r]
    if steps:
        lines += [
            "",
            "| decode step (mean of steps 2 onwards) | seconds | MB | rounds | vs greedy: s / bytes / rounds |",
        ]
        lines.append("|---|---|---|---|---|")
        for r in steps:
            t, ratio = r["per_token"], r.get("per_token_vs_greedy")
            versus = f"{ratio['seconds']} / {ratio['bytes']} / {ratio['rounds']}" if ratio else ""
            lines.append(f"| {r['workload']} | {t['seconds']} | {_mb(t['bytes'])} | {t['rounds']} | {versus} |")
    return [*lines, ""]


def _profiles(projected: dict[str, float]) -> str:
    return " / ".join(f"{projected[name]}" for name in ("lan", "puma", "wan"))


def _public_weights_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Secret against public weights, the 1B-class run and the 8B projection
    (``benchmarks.public_weights``)."""
    rows = results.get("public_weights", [])
    if not rows:
        return []
    gpt2 = [r for r in rows if "weights" in r]
    lines = [
        f"## Secret or public weights (`{COMMANDS['public_weights']}`)",
        "",
        "| workload | seconds | MB | rounds | peak RSS per party (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in gpt2:
        rss = ", ".join(f"{m:,.0f}" for m in r["peak_rss_mb_per_party"])
        lines.append(f"| {r['workload']} | {r['seconds']} | {_mb(r['bytes'])} | {r['rounds']} | {rss} |")
    if len(gpt2) == 2:
        secret, public = gpt2
        lines += [
            "",
            "| layer | secret weights: MB / rounds | public weights: MB / rounds |",
            "|---|---|---|",
        ]
        by_public = {r["layer"]: r for r in public["by_layer"]}
        for r in secret["by_layer"]:
            other = by_public.get(r["layer"], {"bytes": 0, "rounds": 0})
            name = r["layer"] or "(top level: one-hot check, token embedding, argmax)"
            lines.append(f"| {name} | {_mb(r['bytes'])} / {r['rounds']} | {_mb(other['bytes'])} / {other['rounds']} |")
    for r in results.get("llama1b_public", []):
        rss = ", ".join(f"{m:,.0f}" for m in r["peak_rss_mb_per_party"])
        lines += [
            "",
            f"**{r['workload']}** (checkpoint {r['checkpoint_mb']:,.0f} MB, mapped by each party; peak RSS per party "
            f"{rss} MB; install {r['install_seconds']} s):",
            "",
            "| step | seconds here | MB | rounds | projected s: lan / puma / wan |",
            "|---|---|---|---|---|",
            f"| prefill, 32 tokens | {r['prefill']['seconds']} | {_mb(r['prefill']['bytes'])} | {r['prefill']['rounds']} "
            f"| {_profiles(r['prefill_projected_seconds'])} |",
            f"| each later token | {r['per_token']['seconds']} | {_mb(r['per_token']['bytes'])} | "
            f"{r['per_token']['rounds']} | {_profiles(r['per_token_projected_seconds'])} |",
            "",
            f"Tokens equal plaintext float32 greedy decoding: {'all' if r['tokens_equal_plaintext'] else 'not all'} "
            f"(differing steps {r['steps_differing']}; plaintext top-2 margins {r['plaintext_top2_margins']}; "
            f"decisive steps, margin > 0.05, {r['decisive_steps']}, all equal: {r['decisive_steps_equal']}).",
        ]
    for r in rows:
        if "layer" not in r:
            continue
        layer, rest, token = r["layer"], r["rest"], r["per_token"]
        lines += [
            "",
            f"**{r['workload']}** ({r['parameters'] / 1e9:.2f} B parameters): one layer {layer['seconds']} s, "
            f"{_mb(layer['bytes'])} MB, {_count(layer['rounds'])} rounds; embedding, head and argmax {rest['seconds']} s, "
            f"{_mb(rest['bytes'])} MB, {_count(rest['rounds'])} rounds; a token {token['seconds']} s here, "
            f"{_mb(token['bytes'])} MB, {_count(token['rounds'])} rounds, projected {_profiles(r['per_token_projected_seconds'])} s "
            f"on lan / puma / wan; memory per party about {r['memory_mb_per_party'] / 1e3:.1f} GB (the bf16 weights, "
            "mapped once, and the working set).",
        ]
    return [*lines, ""]


def _network_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Time on a link: played by the emulator against projected, and projected against SPU-PUMA."""
    rows = results.get("network") or []
    played = [r for r in rows if "spu_projected_seconds" not in r]
    against = [r for r in rows if "spu_projected_seconds" in r]
    if not played:
        return []
    lines = [
        f"## Time on a link (`{COMMANDS['network']}`)",
        "",
        "Played: the parties' links play the profile (and the parties pick protocol variants for it); "
        "projected: the seconds of a run with the profile's protocol variants but without its waits "
        "+ the played run's rounds × RTT + its bytes ÷ bandwidth "  # noqa: RUF001
        "(BERT: the busiest party's bytes; decode: a third of all parties').",
        "",
        "| workload | profile | seconds | compute seconds | rounds | MB (all parties) | projected seconds "
        "| played / projected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in played:
        lines.append(
            f"| {r['workload']} | {r['profile']} | {r['seconds']} | {r.get('compute_seconds', '')} | {r['rounds']} "
            f"| {_mb(r['bytes'])} | {r.get('projected_seconds', '')} | {r.get('played_vs_projected', '')} |"
        )
    ratios = [r["played_vs_projected"] for r in played if "played_vs_projected" in r]
    decode = next((r for r in played if r["profile"] == "loopback" and "decode" in r["workload"]), None)
    if ratios and decode is not None:
        tolerance = network.PLAYED_TOLERANCE
        within = all(abs(ratio - 1) <= tolerance for ratio in ratios)
        lines += [
            "",
            f"Issue #14's targets: played against projected {min(ratios)} to {max(ratios)} (target within "
            f"{tolerance:.0%}: {'yes' if within else '**no**'}); the decode step on loopback {decode['seconds']} s "
            f"(target ≤ {network.DECODE_TARGET_SECONDS} s: {_holds(decode['seconds'], network.DECODE_TARGET_SECONDS)}).",
        ]
    if against:
        lines += [
            "",
            "Against SPU-PUMA: our parties pick variants for the profile without playing it; both systems' "
            "loopback seconds + rounds × RTT + bytes of all parties ÷ bandwidth (REFERENCE.md's projection; "  # noqa: RUF001
            f"target ≤ {against[0]['target_vs_spu']}× SPU's).",  # noqa: RUF001
            "",
            "| workload | profile | ours: s / MB / rounds | projected s | SPU-PUMA projected s | ours / SPU | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in against:
            lines.append(
                f"| {r['workload']} | {r['profile']} | {r['seconds']} / {_mb(r['bytes'])} / {r['rounds']} "
                f"| {r['projected_seconds']} | {r['spu_projected_seconds']} | {r['vs_spu']} "
                f"| {_holds(r['vs_spu'], r['target_vs_spu'])} |"
            )
    return [*lines, ""]


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
    for r in results["engine"]:
        if "speedup_over_torch_mv" in r:
            lines.append(
                f"- {r['op']}, one party's two products: row kernel {r['row_kernel_seconds'] * 1e3:.2f} ms, "
                f"torch's int64 mv {r['torch_mv_seconds'] * 1e3:.2f} ms ({r['speedup_over_torch_mv']}{TIMES} "
                f"faster; exact: {'yes' if r['exact'] else '**no**'}), float64 mv {r['float64_mv_seconds'] * 1e3:.2f} ms."
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
        *_sampling_lines(results),
        *_network_lines(results),
        *_public_weights_lines(results),
        "## Where the time goes",
        "",
        *_profile_lines(results),
    ]
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- performance table: written by python -m benchmarks.report from benchmarks/results.json -->"
README_END = "<!-- end of the performance table -->"
_OPS = {"gelu": "GeLU", "layernorm": "LayerNorm", "rsqrt": "rsqrt"}


DASH, TIMES = "\u2013", "\u00d7"  # typeset ranges and products


def _span(values: list[float], fmt: str = "{}") -> str:
    """The range (min to max) of ``values``, each formatted with ``fmt``."""
    return f"{fmt.format(min(values))}{DASH}{fmt.format(max(values))}"


def _short_mb(b: float) -> str:
    mb = b / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}"


def _sci(x: float) -> str:
    """``x`` as 2.0e-4 (no padded exponent)."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _cells(seconds: float, nbytes: float, rounds: int, error: float | None = None, digits: int = 2) -> str:
    cells = f"{seconds:.{digits}f} / {_short_mb(nbytes)} / {rounds}"
    return cells if error is None else f"{cells} / {_sci(error)}"


def _workload(name: str) -> str:
    """A model workload's name as the README shows it (full-size models, typeset arrows)."""
    return name.replace(" (12 layers)", "").replace(" -> ", " \u2192 ")


def readme_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The README's performance table and the facts under it, from one run's results."""
    rows = [
        "| workload (command) | securetorch: s / MB / rounds / max error | SPU 0.9.5, PUMA's settings |",
        "| --- | --- | --- |",
    ]
    matmul = next(r for r in results["engine"] if r["op"].startswith("secure matmul"))
    rows.append(
        f"| matmul [128,768]×[768,768] (`{COMMANDS['engine']}`) | "  # noqa: RUF001
        f"{_cells(matmul['seconds'], matmul['bytes'], matmul['rounds'], matmul['max_abs_error'])} | "
        f"{_cells(*SPU_MATMUL)} |"
    )
    for i, row in enumerate(results["nonlinear"]):
        spu = row["spu"]
        name = f"{_OPS.get(row['op'], row['op'])} {str(row['shape']).replace(' ', '')}"
        if row["op"] == "rsqrt":
            name += ", relative error"
        command = f"`{COMMANDS['nonlinear']}`" if i == 0 else "same"
        rows.append(
            f"| {name} ({command}) | {_cells(row['seconds'], row['bytes'], row['rounds'], row['max_error'])} | "
            f"{_cells(spu['seconds'], spu['bytes'], spu['rounds'], spu['max_error'])} |"
        )
    first = True
    gpt2_spu = next(v for k, v in SPU_MODELS.items() if k.startswith("GPT-2"))
    facts: list[str] = []
    for row in results["models"]:
        command = f"`{COMMANDS['models']}`" if first else "same"
        name = _workload(row["workload"])
        if "peak_rss_mb_per_party" in row:
            rss = row["peak_rss_mb_per_party"]
            facts.append(f"{name.removesuffix(': peak RSS per party')} {_span([m / 1e3 for m in rss], '{:.1f}')} GB")
            continue
        first = False
        if "per_token" in row:
            steps = row["per_token"]
            if len(steps) == 1:
                rows.append(
                    f"| {name} ({command}) | {_cells(row['seconds'], row['bytes'], row['rounds'], digits=1)} | {_cells(*gpt2_spu[:3], digits=1)} |"
                )
                continue
            later = steps[1:]
            rows.append(
                f"| {name} ({command}) | {row['seconds']:.1f} s in all; token 1: {steps[0]['seconds']:.1f} s; "
                f"tokens 2{DASH}{len(steps)}: {_span([t['seconds'] for t in later], '{:.2f}')} s "
                f"({_span([100 * t['seconds_vs_token_1'] for t in later], '{:.0f}')} % of token 1's), "
                f"{_span([t['bytes'] / 1e6 for t in later], '{:.1f}')} MB "
                f"({_span([100 * t['bytes_vs_token_1'] for t in later], '{:.1f}')} %) each | ≈ {len(steps)} {TIMES} the above |"
            )
            facts.insert(
                0,
                f"all {len(steps)} generated tokens equal plaintext greedy decoding"
                if row["tokens_equal_plaintext"]
                else f"generated tokens differ from plaintext greedy decoding at steps {row['steps_differing']}",
            )
            continue
        error = row.get("max_error_last_hidden_state", row.get("max_error_logits"))
        spu = SPU_MODELS.get(row["workload"])
        spu_cells = "—" if spu is None else _cells(*spu, digits=1)
        rows.append(
            f"| {name} ({command}) | {_cells(row['seconds'], row['bytes'], row['rounds'], error, digits=1)} | {spu_cells} |"
        )
    layer, _, projected = results["llama7b"]
    rows.append(
        f"| LLaMA-7B, one decoder layer at full width, 8 tokens (`{COMMANDS['llama7b']}`) | "
        f"{_cells(layer['seconds'], layer['bytes'], layer['rounds'], layer['max_error_last_hidden_state'], digits=1)} | — |"
    )
    rows.append(
        f"| LLaMA-7B, 8 → 1 tokens, projected to 5 Gbps / 1 ms RTT (same) | {projected['projected_seconds']:.0f} s "
        f"({projected['local_compute_seconds']:.0f} s local compute + {projected['rounds']} rounds + "
        f"{projected['bytes'] / 1e9:.2f} GB) | PUMA reports {projected['puma_seconds']:.0f} s |"
    )
    rows += _public_weights_rows(results)
    checks = [r for r in results["models"] if r.get("one_hot_check_bytes")]
    ring = next(r for r in results["engine"] if r["op"].endswith("(native)"))
    summary = (
        f"In the same run {'; '.join(facts[:1])}. The ring matmul (exact int64) takes "
        f"{ring['ratio_to_float64']}{TIMES} a float64 matmul of the same shape. Peak RSS per party: "
        f"{', '.join(facts[1:])}."
    )
    if checks:
        spent = "; ".join(
            f"{_workload(r['workload'])}: {_short_mb(r['one_hot_check_bytes'])} MB, {r['one_hot_check_rounds']} rounds"
            for r in checks
        )
        summary += f" Each forward call includes the parties' check of the client's one-hot input ({spent})."
    lines = [*rows, "", summary]
    return "\n".join(lines)


def _public_weights_rows(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The README's rows of public-weight mode: GPT-2 base with either kind of weights, the
    1B-class run, the 8B projection."""
    rows, command = [], f"`{COMMANDS['public_weights']}`"
    for r in results.get("public_weights", []):
        if "weights" in r:
            rss = _span([m / 1e3 for m in r["peak_rss_mb_per_party"]], "{:.2f}")
            rows.append(
                f"| {_workload(r['workload'])} ({command}) | {_cells(r['seconds'], r['bytes'], r['rounds'], digits=1)}; "
                f"peak RSS per party {rss} GB | — |"
            )
            command = "same"
    for r in results.get("llama1b_public", []):
        rss = _span([m / 1e3 for m in r["peak_rss_mb_per_party"]], "{:.1f}")
        rows.append(
            f"| {_workload(r['workload'])} (same, `--llama-1b`) | prefill {r['prefill']['seconds']:.0f} s, then "
            f"{r['per_token']['seconds']:.1f} s / {_short_mb(r['per_token']['bytes'])} MB / {r['per_token']['rounds']} "
            f"rounds per token; peak RSS per party {rss} GB; decisive steps equal plaintext: "
            f"{'yes' if r['decisive_steps_equal'] else '**no**'} | — |"
        )
    for r in results.get("public_weights", []):
        if "layer" in r:
            projected = r["per_token_projected_seconds"]
            rows.append(
                f"| {_workload(r['workload'])} (same) | {r['per_token']['seconds']:.0f} s per token here, "
                f"{projected['puma']:.0f} s on puma, {projected['wan']:.0f} s on wan; about "
                f"{r['memory_mb_per_party'] / 1e3:.0f} GB per party | — |"
            )
    return rows


def update_readme(results: dict[str, list[dict[str, Any]]]) -> None:
    write_between(ROOT / "README.md", README_BEGIN, README_END, readme_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--readme", action="store_true", help="only rewrite the README's table and docs/benchmarks.md from results.json"
    )
    if parser.parse_args().readme:
        stored = json.loads(ROOT_RESULTS.read_text())
        info = {key: value for key, value in stored.items() if key != "results"}
        (ROOT / "docs" / "benchmarks.md").write_text(markdown(stored["results"], info))
        update_readme(stored["results"])
        costs.update()
        return
    results = {
        "engine": engine.rows(),
        "nonlinear": nonlinear.rows(),
        "models": models.rows(),
        "llama7b": llama7b.rows(),
        "sampling": sampling.rows() + sampling.generation_rows(),
        "network": network.rows(),
        "public_weights": public_weights.gpt2_rows() + public_weights.llama_8b_rows(),
        "llama1b_public": public_weights.llama_1b_rows(),
    }
    info = {"date": datetime.date.today().isoformat(), "machine": machine()}
    ROOT_RESULTS.write_text(json.dumps({**info, "results": results}, indent=1) + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text(markdown(results, info))
    update_readme(results)
    print(f"wrote {ROOT_RESULTS}, {ROOT / 'docs' / 'benchmarks.md'} and the README's table")
    coverage.run()
    print(f"wrote {coverage.OUTPUT} and the README's table of supported classes")
    costs.update()
    print("wrote the cost table (README, docs/protocols.md) from the protocols' cost functions")
    precision.main()
    packing.main()


if __name__ == "__main__":
    main()
