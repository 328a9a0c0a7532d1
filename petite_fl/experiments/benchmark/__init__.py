"""petite-fl's benchmarks (`python -m petite_fl.experiments.benchmark`): one module per measurement.

`cli` runs the sections and writes the report (`report`); `comm`, `overhead`, `training`,
`inference` and `scaling` measure; `plain_loop` is the federated job without Flower that
`overhead` compares with; `workers` runs timed parts in fresh interpreters.
"""

from petite_fl.experiments.benchmark.cli import main

__all__ = ["main"]
