"""``python -m benchmarks``: run every benchmark, write benchmarks/results.json and docs/benchmarks.md."""

from benchmarks import report

report.main()
