"""How long a ``LocalCluster`` takes to start: its parties forked from the driver's launcher
(Linux's default) against fresh interpreters (elsewhere's, and Linux's before the launcher).
Each way runs in a fresh driver process: the first cluster (the launcher's own start
included), then the median of further clusters, each started, asked for one shipped
function's answer, and closed. Writes ``benchmarks/startup.json`` and the line in
``docs/architecture.md`` between its markers.

    python -m benchmarks.startup      # about a minute on 2 cores
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys

from benchmarks.common import machine, write_between

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "startup.json"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- startup line: written by python -m benchmarks.startup from benchmarks/startup.json -->"
END = "<!-- end of the startup line -->"
CLUSTERS = 6

_DRIVER = """
import json, sys, time
import securetorch as puma
from securetorch.runtime import launcher
launcher.FORKS = sys.argv[1] == "fork"
seconds = []
for _ in range({clusters}):
    started = time.perf_counter()
    with puma.LocalCluster() as cluster:
        assert cluster.run(lambda: puma.rank()) == [0, 1, 2]
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""


def _starts(way: str) -> list[float]:
    script = _DRIVER.format(clusters=CLUSTERS)
    out = subprocess.run([sys.executable, "-c", script, way], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    results = {}
    for way in ("fork", "spawn"):
        seconds = _starts(way)
        results[way] = {"first_s": round(seconds[0], 3), "next_median_s": round(statistics.median(seconds[1:]), 3)}
    OUTPUT.write_text(json.dumps({"clusters": CLUSTERS, "results": results, "machine": machine()}, indent=1) + "\n")
    fork, spawn = results["fork"], results["spawn"]
    line = (
        f"A `LocalCluster` started, asked one shipped function's answer and closed (`python -m benchmarks.startup`, "
        f"{machine()['cores']} cores): forked from the launcher, {fork['first_s']:.2f} s for the driver's first "
        f"(the launcher's start included) and {fork['next_median_s']:.2f} s for each after it; as fresh "
        f"interpreters, {spawn['first_s']:.2f} s and {spawn['next_median_s']:.2f} s."
    )
    write_between(DOC, BEGIN, END, line)
    print(line)


if __name__ == "__main__":
    main()
