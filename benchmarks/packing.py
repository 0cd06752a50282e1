"""Packing on the CPU: securetorch's torch kernels (``protocols.boolean``, what every device
runs) against numpy's C loops (``packbits``/``unpackbits`` at every size, as securetorch
packed small tensors before; kept here as the baseline), on the packing calls of one GPT-2 base decode step (one
token over a 32-token KV cache). The calls are recorded (function and arguments) on three
in-process parties, then each distinct call is timed with both (single thread, median of
repeats) and weighted by how often the step makes it. Writes ``benchmarks/packing.json`` and
the table in ``docs/architecture.md`` between its markers.

    python -m benchmarks.packing      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import collections
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import securetorch as puma
from benchmarks.common import machine, write_between
from securetorch.protocols import boolean

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "packing.json"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- packing table: written by python -m benchmarks.packing from benchmarks/packing.json -->"
END = "<!-- end of the packing table -->"
FUNCTIONS = ("pack_bits", "unpack_bits", "high_bits_first", "bit_planes", "pack_uint", "unpack_uint")
REPEATS = 30
_SAMPLES: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # one set of arguments per distinct call


def _value_bits(x: torch.Tensor, bits: int) -> np.ndarray:
    raw = np.ascontiguousarray(x.reshape(-1).numpy()).view(np.uint8).reshape(-1, 8)
    return np.unpackbits(raw, axis=1, bitorder="little")[:, :bits]


def _unpack_uint(packed: torch.Tensor, bits: int, shape: Any) -> torch.Tensor:
    n = torch.Size(shape).numel()
    flat = np.unpackbits(packed.numpy(), count=n * bits, bitorder="little").reshape(n, bits)
    wide = np.zeros((n, 64), dtype=np.uint8)
    wide[:, :bits] = flat
    return torch.from_numpy(np.packbits(wide, axis=1, bitorder="little").view(np.int64).reshape(tuple(shape)))


NUMPY: dict[str, Callable[..., torch.Tensor]] = {
    "pack_bits": lambda b: torch.from_numpy(np.packbits(b.to(torch.uint8).numpy(), axis=-1, bitorder="little")),
    "unpack_bits": lambda p, n: torch.from_numpy(np.unpackbits(p.numpy(), axis=-1, count=n, bitorder="little")).long(),
    "high_bits_first": lambda x, bits: torch.from_numpy(_value_bits(x, bits)[:, ::-1].astype(np.int16)),
    "bit_planes": lambda x, bits: torch.from_numpy(
        np.packbits(np.ascontiguousarray(_value_bits(x, bits).T), axis=1, bitorder="little")
    ),
    "pack_uint": lambda v, bits: torch.from_numpy(
        np.packbits(_value_bits(v.long(), bits).reshape(-1), bitorder="little")
    ),
    "unpack_uint": _unpack_uint,
}


def _key(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A call's identity: its function, and each argument's shape and dtype (or value)."""
    return (name, *((tuple(a.shape), str(a.dtype)) if isinstance(a, torch.Tensor) else a for a in args))


@contextmanager
def _recording(calls: collections.Counter) -> Iterator[None]:
    """Count every packing call (in every module that imported the functions) meanwhile,
    keeping one set of arguments per distinct call for the replay."""
    modules = [m for n, m in list(sys.modules.items()) if n.startswith("securetorch.") and m is not None]
    originals = {name: getattr(boolean, name) for name in FUNCTIONS}

    def recorder(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            key = _key(name, args)
            calls[key] += 1
            _SAMPLES.setdefault(key, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
            return fn(*args)

        return call

    patched = []
    for module in modules:
        for name, fn in originals.items():
            if getattr(module, name, None) is fn:
                setattr(module, name, recorder(name, fn))
                patched.append((module, name, fn))
    try:
        yield
    finally:
        for module, name, fn in patched:
            setattr(module, name, fn)


def decode_step_calls() -> collections.Counter:
    """The packing calls of one decode step, all three parties: a two-token generation's less
    a one-token generation's (both start with the same prompt)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(1000, 20000, (1, 32))
    one, two = collections.Counter(), collections.Counter()
    with puma.InProcessCluster() as cluster:
        secure_model = puma.secure(model, cluster=cluster)
        secure_model.generate(ids, max_new_tokens=1)  # warm-up
        with _recording(one):
            secure_model.generate(ids, max_new_tokens=1)
        with _recording(two):
            secure_model.generate(ids, max_new_tokens=2)
    two.subtract(one)
    return +two


def _seconds(fn: Callable[..., torch.Tensor], args: tuple[Any, ...]) -> float:
    fn(*args)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def results() -> dict[str, Any]:
    calls = decode_step_calls()
    torch.set_num_threads(1)
    totals = {name: {"calls": 0, "torch_ms": 0.0, "numpy_ms": 0.0} for name in FUNCTIONS}
    for key, count in calls.items():
        name, args = key[0], _SAMPLES[key]
        ours, baseline = getattr(boolean, name)(*args), NUMPY[name](*args)
        if not torch.equal(ours, baseline):
            raise AssertionError(f"{name}: the numpy baseline disagrees on {key}")
        row = totals[name]
        row["calls"] += count
        row["torch_ms"] += 1e3 * count * _seconds(getattr(boolean, name), args) / 3  # per party
        row["numpy_ms"] += 1e3 * count * _seconds(NUMPY[name], args) / 3
    for row in totals.values():
        row["calls"] = round(row["calls"] / 3)
    return {"workload": "GPT-2 base decode step (32-token cache), per party", "functions": totals}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Packing on the CPU, {result['workload']} (`python -m benchmarks.packing`, single thread):",
        "",
        "| function | calls | torch (securetorch) | numpy's C loops |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows = result["functions"]
    for name, row in rows.items():
        lines.append(f"| `{name}` | {row['calls']:,} | {row['torch_ms']:.1f} ms | {row['numpy_ms']:.1f} ms |")
    ours = sum(r["torch_ms"] for r in rows.values())
    baseline = sum(r["numpy_ms"] for r in rows.values())
    lines.append(f"| all | {sum(r['calls'] for r in rows.values()):,} | {ours:.1f} ms | {baseline:.1f} ms |")
    return "\n".join(lines)


def main() -> None:
    result = results()
    OUTPUT.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    write_between(DOC, BEGIN, END, table(result))
    print(table(result))


if __name__ == "__main__":
    main()
