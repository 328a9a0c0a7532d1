"""Submitting a run to a deployed coordinator and reading its status, with the `flwr` CLI.

`flwr run <app> <connection> --format json` returns as soon as the run is queued; its
final status is read with `flwr ls` (Flower's `--stream` exits 0 even when a run failed).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petite_fl.console import one_line
from petite_fl.credentials import check_run_config
from petite_fl.deploy.processes import BIN, write_toml
from petite_fl.errors import PetiteError

#: `flwr ls` statuses of a run that has ended
FINISHED = "finished:"
COMPLETED = "finished:completed"


def submit(app: Path, connection: str, run_config: Mapping[str, Any], timeout: float = 300,
           what: str = "submitting the run") -> int:
    """`flwr run <app> <connection>` with this run-config; returns the run id. A credential in it is
    refused before it is written anywhere (the SuperLink would hand it to every site)."""
    check_run_config(run_config)
    fd, config = tempfile.mkstemp(suffix=".toml")
    os.close(fd)
    write_toml(Path(config), run_config)
    try:
        out = subprocess.run([str(BIN / "flwr"), "run", str(app), connection, "--run-config", config,
                              "--format", "json"], capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(config)
    try:
        if out.returncode == 0:
            return int(json.loads(out.stdout)["run-id"])
    except (ValueError, KeyError, TypeError):
        pass
    raise PetiteError(f"{what} failed: {_why(out)}") from None


def run_status(connection: str, run_id: int, timeout: float = 60) -> tuple[str, str]:
    """(status, details) of a run as `flwr ls` reports it, e.g. ('running', ''), ('finished:failed', '…')."""
    out = subprocess.run([str(BIN / "flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
                         capture_output=True, text=True, timeout=timeout)
    try:
        run = json.loads(out.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise PetiteError(f"could not read the status of run {run_id} at `{connection}`: {_why(out)}") from None
    return str(run.get("status")), str(run.get("status-details") or "")


def _why(out: subprocess.CompletedProcess) -> str:
    """flwr's own error message (its JSON's `error-message`), else the tail of what it printed, as one line."""
    try:
        return one_line(json.loads(out.stdout)["error-message"])
    except (ValueError, KeyError, TypeError):
        return one_line((out.stdout + out.stderr).strip()[-400:])
