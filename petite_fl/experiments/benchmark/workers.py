"""Timed measurements in fresh interpreters, so that one arm's peak memory never counts for another."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

RESULT = "BENCHMARK-RESULT "


def run_child(worker: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own peak memory, no warm caches)."""
    cmd = [sys.executable, "-m", "petite_fl.experiments.benchmark", "--worker", worker, "--job", json.dumps(job)]
    begin = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return {**json.loads(line[len(RESULT):]), "wall_seconds": wall}
    from petite_fl.errors import PetiteError

    raise PetiteError(f"benchmark worker '{worker}' failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def run_worker(name: str, job: dict[str, Any]) -> int:
    """The child's side: run the measurement and print its result on one line."""
    if name == "train":
        from petite_fl.experiments.benchmark.training import train_speed

        result = train_speed(*job["args"])
    elif name == "local":
        from petite_fl.experiments.benchmark.plain_loop import plain_loop

        result = plain_loop(job["overrides"])
    else:
        raise SystemExit(f"unknown worker {name}")
    print(RESULT + json.dumps(result), flush=True)
    return 0
