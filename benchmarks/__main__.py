"""Run every benchmark module in turn (each prints its JSON)."""

from benchmarks import engine, nonlinear

engine.main()
nonlinear.main()
