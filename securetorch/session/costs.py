"""Where the cost goes: exact bytes and rounds, and seconds, per module and per op.

Party side: while a session's ``CostRecorder`` is active (``PartyContext.recorder``), every outermost secure op (a torch function
dispatched on ``SharedTensor``, or a protocol wrapped in ``measured``) adds its cost to an
entry keyed by (module path, op). Module paths come from forward hooks that
``secure()`` installs on every module of a party's model. Bytes and rounds are exact
(the party's ``CommStats``); seconds are this party's wall clock, and ``wait_seconds`` the
part of it spent inside protocol rounds (sending, and waiting for peers).

Driver side: ``Cluster.cost_report()`` starts recorders on the three parties and returns a
``CostReport`` of pandas-friendly records, with bytes summed over the parties, rounds (equal
on all parties), party 0's seconds, and local compute seconds (the largest over the parties
of wall minus round time), plus projections onto a network of given bandwidth and latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from securetorch.comm.links import Links
from securetorch.session.context import PartyContext, current_or_none


@dataclass
class OpCost:
    """One party's accumulated cost of one (module, op) entry."""

    calls: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    bytes_sent: int = 0
    rounds: int = 0


class CostRecorder:
    """Accumulates ``OpCost`` per (module path, op) on one party."""

    def __init__(self, net: Links) -> None:
        self.net = net
        self.entries: dict[tuple[str, str], OpCost] = {}
        self.modules: list[str] = []
        self.depth = 0

    def measure(self, op: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` and book its cost under the current module and ``op`` (outermost only:
        the torch functions a handler calls on shares are part of its op)."""
        if self.depth:
            return call()
        self.depth += 1
        before = self.net.stats.copy()
        start = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = time.perf_counter() - start
            self.depth -= 1
            spent = self.net.stats - before
            entry = self.entries.setdefault((self.modules[-1] if self.modules else "", op), OpCost())
            entry.calls += 1
            entry.seconds += elapsed
            entry.wait_seconds += spent.seconds
            entry.bytes_sent += spent.bytes_sent
            entry.rounds += spent.rounds


def active() -> CostRecorder | None:
    """The recorder of the session whose job runs now (None when no cost report runs)."""
    ctx = current_or_none()
    return None if ctx is None else ctx.recorder


def start(ctx: PartyContext) -> None:
    """Start recording the session's costs."""
    ctx.recorder = CostRecorder(ctx.net)


def stop(ctx: PartyContext) -> list[dict[str, Any]]:
    """End recording; this party's entries as records."""
    recorder, ctx.recorder = ctx.recorder, None
    if recorder is None:
        return []
    return [{"module": module, "op": op, **asdict(cost)} for (module, op), cost in recorder.entries.items()]


def measured(op: str, call: Callable[[], Any]) -> Any:
    """Run a protocol that is not a torch function (e.g. the secure argmax of ``generate``)
    as one recorded op."""
    recorder = active()
    return call() if recorder is None else recorder.measure(op, call)


def enter_module(name: str) -> None:
    recorder = active()
    if recorder is not None:
        recorder.modules.append(name)


def exit_module() -> None:
    recorder = active()
    if recorder is not None and recorder.modules:
        recorder.modules.pop()


def op_name(qualified: str) -> str:
    """``torch.Tensor.__matmul__`` -> ``matmul``; ``torch.nn.functional.softmax`` -> ``softmax``."""
    return qualified.rsplit(".", 1)[-1].strip("_") or qualified


# ----------------------------------------------------------------------------- driver side


@dataclass
class CostRecord:
    """The cost of one (module, op) entry over the three parties."""

    module: str
    layer: str
    op: str
    calls: int
    seconds: float  # party 0's wall clock
    compute_seconds: float  # max over parties of wall minus time in rounds
    bytes: int  # sent by all parties
    rounds: int


@dataclass
class CostReport:
    """Per-module, per-op costs of the secure calls made while it was recording.

    ``records`` are plain dicts (``pandas.DataFrame(report.records)`` works); ``by("layer")``
    or ``by("op")`` sums them over the other keys. ``projected_seconds`` applies
    time = compute + rounds x RTT + bytes / bandwidth to each record.
    """

    entries: list[CostRecord] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.entries]

    def by(self, *keys: str) -> list[dict[str, Any]]:
        """Records summed over everything but ``keys`` (module, layer, op), in first-seen order."""
        names = [f.name for f in fields(CostRecord)]
        unknown = [k for k in keys if k not in ("module", "layer", "op")]
        if unknown:
            raise ValueError(f"group by module, layer or op, not {unknown}")
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in self.records:
            key = tuple(record[k] for k in keys)
            group = groups.setdefault(key, {k: record[k] for k in keys} | {n: 0 for n in names if n not in _LABELS})
            for n in names:
                if n not in _LABELS:
                    group[n] += record[n]
        return list(groups.values())

    def total(self) -> dict[str, Any]:
        (row,) = self.by() or [{n: 0 for n in _NUMBERS}]
        return row

    def projected_seconds(self, bandwidth_bits_per_s: float, rtt_s: float) -> float:
        """Projected time of the recorded calls on a network of this bandwidth and round-trip
        time: local compute + rounds x RTT + bytes / bandwidth."""
        total = self.total()
        return total["compute_seconds"] + total["rounds"] * rtt_s + total["bytes"] * 8 / bandwidth_bits_per_s

    def table(self, by: Sequence[str] = ("layer", "op")) -> str:
        """A markdown table of ``by(*by)``."""
        rows = self.by(*by)
        head = [*by, *_NUMBERS]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [str(row[k]) for k in by] + [
                f"{row[n]:.3f}" if isinstance(row[n], float) else f"{row[n]:,}" for n in _NUMBERS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


_LABELS = ("module", "layer", "op")
_NUMBERS = ("calls", "seconds", "compute_seconds", "bytes", "rounds")


def layer_of(module: str) -> str:
    """The numbered block a module belongs to (``transformer.h.3.attn.c_attn`` ->
    ``transformer.h.3``), else its top-level module (``lm_head``), or ``""`` outside any."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def combine(per_party: list[list[dict[str, Any]]]) -> CostReport:
    """Merge the three parties' records (they hold the same keys: every party runs every op)."""
    merged: dict[tuple[str, str], CostRecord] = {}
    for rank, records in enumerate(per_party):
        for r in records:
            key = (r["module"], r["op"])
            entry = merged.get(key)
            if entry is None:
                entry = merged[key] = CostRecord(
                    r["module"], layer_of(r["module"]), r["op"], r["calls"], 0.0, 0.0, 0, r["rounds"]
                )
            if rank == 0:
                entry.seconds = r["seconds"]
            entry.compute_seconds = max(entry.compute_seconds, r["seconds"] - r["wait_seconds"])
            entry.bytes += r["bytes_sent"]
    return CostReport(list(merged.values()))
