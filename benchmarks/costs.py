"""The cost table: exact rounds and bytes of the protocols a transformer runs, computed from
the protocols' cost functions (the ``*_cost`` functions beside each protocol, which
``tests/protocols/test_workload_costs.py`` checks against the counters) for the shapes of a
GPT-2 base decode step and of 128-token forwards, without a network (the size rules tuned on
loopback) and with the choices the parties make for each preset profile. Written into the
README and ``docs/protocols.md`` between their markers.

    python -m benchmarks.costs
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable

from benchmarks.common import write_between
from securetorch.comm.profile import PRESETS, Cost, NetworkProfile, total_cost
from securetorch.protocols import approx as ap
from securetorch.protocols import arithmetic as pa
from securetorch.protocols import comparison as pc
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN = "<!-- cost table: written by python -m benchmarks.costs from the protocols' cost functions -->"
END = "<!-- end of the cost table -->"
TARGETS = (ROOT / "README.md", ROOT / "docs" / "protocols.md")
F, L = DEFAULT_FRAC_BITS, DEFAULT_COMPARE_BITS

CostOf = Callable[[NetworkProfile | None], Cost]


def _rows() -> list[tuple[str, str, int, CostOf]]:
    """(protocol, where it runs, elements, cost on a network)."""
    rows: list[tuple[str, str, int, CostOf]] = []

    def add(name: str, where: str, shape: tuple[int, ...], cost: Callable[[tuple[int, ...], NetworkProfile | None], Cost]) -> None:  # fmt: skip
        rows.append((name, f"{where}: {' x '.join(map(str, shape))}", math.prod(shape), lambda net: cost(shape, net)))

    n = math.prod
    for shape, where in (((1, 768), "decode, hidden"), ((128, 3072), "128 tokens, MLP")):
        add("`[x < 0]` (integer 0/1)", where, shape, lambda s, net: pc.less_than_zero_cost(n(s), L, net))
    add("msb (XOR bit)", "decode row max, pairs", (12, 528), lambda s, net: pc.msb_cost(n(s), L, net))
    for shape, where in (((1, 768), "decode"), ((128, 768), "128 tokens")):
        add("truncation (fixed-point product)", where, shape, lambda s, net: pa.truncation_cost(n(s), F, net))
    add("bit injection", "128 tokens, MLP", (128, 3072), lambda s, net: pc.bit_to_arith_cost(n(s), 64, net))
    for shape, where in (((12, 1, 33), "decode, scores"), ((12, 128, 128), "128 tokens, scores")):
        add("row max", where, shape, lambda s, net: pc.max_last_dim_cost(s, False, L, net))
        add("exp", where, shape, lambda s, net: ap.exp_cost(n(s), F, net))
        add("softmax (max, exp, clip, reciprocal)", where, shape, lambda s, net: ap.softmax_cost(s, F, L, net))
        add(
            "softmax then @ V (head dim 64), divided in the policy's order, truncated",
            where,
            shape,
            _softmax_times_value,
        )
    for shape, where in (((1, 3072), "decode"), ((128, 3072), "128 tokens")):
        add("GeLU", where, shape, lambda s, net: ap.activation_cost("gelu", n(s), F, L, net))
    for shape, where in (((1, 768), "decode"), ((128, 768), "128 tokens")):
        add("LayerNorm (weight and bias)", where, shape, lambda s, net: ap.layer_norm_cost(s[0], s[1], True, False, F, L, net))  # fmt: skip
    for shape, where in (((12,), "decode, softmax rows"), ((1536,), "128 tokens, softmax rows")):
        add("reciprocal", where, shape, lambda s, net: ap.reciprocal_cost(n(s), F, L, net))
    add("tanh", "BERT's pooler", (1, 768), lambda s, net: ap.activation_cost("tanh", n(s), F, L, net))
    add("argmax (secure, index and one-hot)", "GPT-2 logits", (1, 50257), lambda s, net: pc.argmax_cost(s, L, net))
    return rows


def _softmax_times_value(shape: tuple[int, ...], network: NetworkProfile | None) -> Cost:
    """A softmax times V (64 wide, already settled), divided in the order the policy picks
    (``ap.division_order``): the numerators, then the division and the product, truncated."""
    rows = math.prod(shape[:-1])
    division = ap.division_cost(rows, shape[-1], rows * 64, (0, 0), F, L, network)
    return total_cost([ap.softmax_numerators_cost(shape, F, L, network), division])


def _cell(cost: Cost, elements: int) -> str:
    rounds, nbytes = cost
    per = nbytes / elements
    return f"{rounds} / {per:,.0f} B" if per >= 10 else f"{rounds} / {per:.2f} B"


def table() -> str:
    """The markdown table: rounds / bytes per element (all parties) per protocol and shape,
    without a network and with each preset's choices."""
    profiles: list[tuple[str, NetworkProfile | None]] = [("loopback (no profile)", None)]
    profiles += [(f"`{name}` ({profile.bandwidth_bps / 1e9:g} Gbps, {profile.rtt_s * 1e3:g} ms)", profile) for name, profile in PRESETS.items()]  # fmt: skip
    lines = [
        "| protocol | shape | " + " | ".join(label for label, _ in profiles) + " |",
        "|---|---|" + "---|" * len(profiles),
    ]
    for name, where, elements, cost in _rows():
        cells = [_cell(cost(profile), elements) for _, profile in profiles]
        lines.append(f"| {name} | {where} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update() -> None:
    generated = table()
    for path in TARGETS:
        write_between(path, BEGIN, END, generated)


def main() -> None:
    update()
    print("wrote the cost table into " + ", ".join(str(p.relative_to(ROOT)) for p in TARGETS))


if __name__ == "__main__":
    main()
