"""Experiments, simulations and benchmarks built on petite_fl (run from the repository root)."""
