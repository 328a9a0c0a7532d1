"""Timed measurements in fresh interpreters, so that one arm's peak memory never counts for another.

The parent's side (`run_child`); the child is this benchmark's own command with `--worker`
(`cli.run_worker`), which prints its result on one line after `RESULT`.
"""

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
