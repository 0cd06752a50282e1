"""Helpers shared by the benchmarks: timing inside the parties, exact costs, JSON output."""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import securetorch as puma
from securetorch.comm.stats import total

ROOT_RESULTS = pathlib.Path(__file__).resolve().parent / "results.json"
"""Where ``benchmarks.report`` stores every benchmark's rows (the README and docs read it)."""

# SPU 0.9.5 with PUMA's settings on this machine kind (REFERENCE.md): loopback seconds, bytes
# of all parties, rounds, max abs error.
SPU_MODELS = {
    "BERT-base (12 layers), 16 tokens": (41.3, 704e6, 7329, 8.8e-2),
    "BERT-base (12 layers), 32 tokens": (59.1, 1465e6, 9545, 9.0e-2),
    "BERT-base (12 layers), 128 tokens": (171.1, 7213e6, 22429, 9.2e-2),
    "GPT-2 base (12 layers), 32 tokens -> logits": (91.3, 1586e6, 10290, 7.0e-2),
}


def measured(op: Callable[[], Any], repeat: int = 5) -> tuple[Any, float, puma.CommStats]:
    """Run ``op`` inside a party: once to warm up, then ``repeat`` times; return the result,
    this party's median seconds and the exact cost of one run. A secret result's shares are
    read inside the measurement (a product's owed truncation runs there)."""

    def settled() -> Any:
        result = op()
        if isinstance(result, puma.SharedTensor):
            _ = result.shares
        return result

    settled()
    before = puma.stats()
    result = settled()
    cost = puma.stats() - before
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        settled()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times), cost


def summarise(results: list[tuple[Any, float, puma.CommStats]]) -> dict[str, Any]:
    """Combine the three parties' (value, seconds, stats): the slowest party's median time,
    the bytes sent by all parties, the rounds."""
    cost = total([r[2] for r in results])
    return {"seconds": round(max(r[1] for r in results), 4), "bytes": cost.bytes_sent, "rounds": cost.rounds}


DECODE_STEPS = 3
"""Decode steps a benchmark averages (``mean_steps``): generated tokens 2 to 1 + DECODE_STEPS."""


def mean_steps(steps: Sequence[Any]) -> dict[str, Any]:
    """The mean seconds, bytes and rounds of ``generate``'s steps (its ``StepCost`` s): one
    decode step's seconds swing by 10-20 % on this machine. Rounds stay whole where the steps
    agree (a step over a longer cache may take another protocol variant)."""
    count = len(steps)
    rounds = sum(s.rounds for s in steps) / count
    return {
        "seconds": sum(s.seconds for s in steps) / count,
        "bytes": round(sum(s.bytes for s in steps) / count),
        "rounds": int(rounds) if rounds.is_integer() else round(rounds, 1),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (MB): Linux's VmHWM, the high-water mark of its own
    memory map. (``ru_maxrss`` would not do for a party: a process started by fork and exec
    keeps the larger of its own peak and its parent's resident set at the fork.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak RSS is read on Linux)")


def machine() -> dict[str, Any]:
    import os

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def emit(name: str, rows: list[dict[str, Any]]) -> None:
    print(json.dumps({"benchmark": name, "machine": machine(), "results": rows}, indent=2))


def write_between(path: pathlib.Path, begin: str, end: str, generated: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``path`` with
    ``generated`` (on lines of its own): how every generated table gets into the docs."""
    text = path.read_text()
    start, stop = text.index(begin) + len(begin), text.index(end)
    path.write_text(text[:start] + "\n" + generated + "\n" + text[stop:])
