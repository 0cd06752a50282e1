"""The README's numbers come from benchmark output or cost functions, never typed by hand: its
performance table is what ``benchmarks.report`` writes from ``benchmarks/results.json``, its
table of supported classes what ``benchmarks.coverage`` writes from
``benchmarks/coverage.json``, which lists every class of the catalogue the model tests run,
and its cost table (also in ``docs/protocols.md``) what ``benchmarks.costs`` computes from
the protocols' exact cost functions."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import costs, coverage, packing
from benchmarks.report import README_BEGIN, README_END, readme_table

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_generated_from_the_stored_results() -> None:
    readme = (ROOT / "README.md").read_text()
    between = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)]
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())["results"]
    assert between.strip() == readme_table(results).strip()


def test_the_supported_classes_table_is_generated_and_covers_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    begin, end = coverage.README_BEGIN, coverage.README_END
    between = readme[readme.index(begin) + len(begin) : readme.index(end)]
    rows = json.loads(coverage.OUTPUT.read_text())["rows"]
    assert between.strip() == coverage.readme_table(rows).strip()
    measured = [(r["class"], r["kind"], r["variant"]) for r in rows]
    assert measured == [(e.name, e.kind, e.label) for e in coverage.catalogue()]
    assert all(r["max_error"] <= 0.02 for r in rows)


def test_the_cost_tables_are_generated_from_the_cost_functions() -> None:
    for path in costs.TARGETS:
        text = path.read_text()
        between = text[text.index(costs.BEGIN) + len(costs.BEGIN) : text.index(costs.END)]
        assert between.strip() == costs.table().strip(), path


def test_the_packing_table_is_generated_from_the_stored_measurement() -> None:
    doc = packing.DOC.read_text()
    between = doc[doc.index(packing.BEGIN) + len(packing.BEGIN) : doc.index(packing.END)]
    assert between.strip() == packing.table(json.loads(packing.OUTPUT.read_text())).strip()
