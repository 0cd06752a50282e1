"""Benchmarks: each module prints JSON; ``python -m benchmarks`` runs them all."""
