"""A comparison's arms at a deployed coordinator (`petite compare --federation NAME`).

The same packaged Flower app and run-config as in simulation (`compare.run`, `compare.dir`,
the backbone), submitted with `flwr run <app> NAME` to the `petite-server` the connection
names. The ServerApp runs on the coordinator's machine and writes each arm's results into
the comparison folder, so progress is read from there; the run's end and final status from
`flwr ls` (Flower's `--stream` exits 0 even when a run failed). Interrupting the wait leaves
the run going: `petite compare --report DIR` writes the report once it has finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from petite_fl.console import console, err_console
from petite_fl.deploy.connection import Connection
from petite_fl.deploy.submission import COMPLETED, FINISHED, run_status, submit
from petite_fl.federation.server.arms import arm_dir
from petite_fl.runconfig import app_dir

POLL = 2.0          # seconds between looks at the comparison folder (a file read)
STATUS_EVERY = 15.0  # seconds between `flwr ls` (a CLI start) while arms are still running
HEARTBEAT = 60.0     # seconds between "still running" lines


def run_deployed(conn: Connection, run_config: Mapping[str, Any], folder: Path, expected: list[tuple[str, int]],
                 on_submit: Callable[[int], None]) -> list[str]:
    """Submit the arms, wait for the run with progress; returns what failed (empty: all went well)."""
    since = time.time()  # results older than this are an earlier run's
    run_id = submit(app_dir(), conn.name, run_config, what=f"submitting the comparison to `{conn.name}`")
    on_submit(run_id)
    console.print(f"submitted as run {run_id} to the coordinator at {conn.address} (`{conn.name}`); waiting for "
                  f"its {len(expected)} arm run(s) (Ctrl-C stops waiting, not the run)", markup=False)
    try:
        status, details = _wait(conn, run_id, folder, expected, since)
    except KeyboardInterrupt:
        err_console.print(f"run {run_id} goes on at the coordinator: `flwr stop {run_id} {conn.name}` stops it; "
                          f"`petite compare --report {folder}` writes the report once it has finished",
                          markup=False)
        raise
    failed = [f"{arm}/seed-{seed}: {_error(folder, arm, seed, since)}" for arm, seed in expected
              if _error(folder, arm, seed, since) is not None]
    if status != COMPLETED and not failed:
        failed.append(f"run {run_id} ended as '{status}'{f' ({details})' if details else ''}; "
                      f"`flwr log {run_id} {conn.name}` shows the coordinator's log")
    return failed


def _wait(conn: Connection, run_id: int, folder: Path, expected: list[tuple[str, int]],
          since: float) -> tuple[str, str]:
    begin = last_status = last_beat = time.monotonic()
    seen: set[tuple[str, int]] = set()
    status, details = "submitted", ""
    while True:
        for arm, seed in expected:
            if (arm, seed) in seen or not _ended(folder, arm, seed, since):
                continue
            seen.add((arm, seed))
            error = _error(folder, arm, seed, since)
            console.print(f"  {arm}/seed-{seed} {'failed: ' + error if error else 'done'} ({len(seen)}/"
                          f"{len(expected)}, {_minutes(begin)})", markup=False)
        now = time.monotonic()
        if len(seen) == len(expected) or now - last_status >= STATUS_EVERY:
            last_status = now
            new, details = run_status(conn.name, run_id)
            if new != status:
                status = new
                console.print(f"  run {run_id}: {status} ({_minutes(begin)})", markup=False)
            if status.startswith(FINISHED):
                return status, details
        if now - last_beat >= HEARTBEAT:
            last_beat = now
            console.print(f"  run {run_id} {status}: {len(seen)}/{len(expected)} arm run(s) ended "
                          f"({_minutes(begin)})", markup=False)
        time.sleep(POLL)


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since - 1.0  # file times may round down
    except OSError:
        return False


def _ended(folder: Path, arm: str, seed: int, since: float) -> bool:
    out = arm_dir(folder, arm, seed)
    return _fresh(out / "summary.json", since) or _fresh(out / "error.json", since)


def _error(folder: Path, arm: str, seed: int, since: float) -> str | None:
    path = arm_dir(folder, arm, seed) / "error.json"
    if not _fresh(path, since) or _fresh(arm_dir(folder, arm, seed) / "summary.json", since):
        return None
    try:
        return str(json.loads(path.read_text()).get("error"))
    except (OSError, ValueError):
        return "error.json unreadable"


def _minutes(begin: float) -> str:
    return f"{(time.monotonic() - begin) / 60:.1f} min"
