"""The README's numbers come from benchmark output, never typed by hand: its performance table
is what ``benchmarks.report`` writes from ``benchmarks/results.json``."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import README_BEGIN, README_END, readme_table

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_generated_from_the_stored_results() -> None:
    readme = (ROOT / "README.md").read_text()
    between = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)]
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())["results"]
    assert between.strip() == readme_table(results).strip()
