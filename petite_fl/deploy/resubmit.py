"""`petite-server --resume`: submit an interrupted run again, with the run-config its journal
entry holds (`federation.flower.journal`); the coordinator continues from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from petite_fl.atomic import write_json
from petite_fl.deploy.processes import BIN, write_toml
from petite_fl.errors import PetiteError


def resubmit(folder: Path, entry: dict[str, Any], app: Path, connection: str, timeout: float = 300) -> int:
    """`flwr run <app> <connection>` with the interrupted run's run-config; returns the new run id.

    `app` is normally the packaged Flower app (`petite_fl.experiments.flower_run.app_dir`):
    the run continues with this installation's code whichever folder first submitted it.
    """
    fd, config = tempfile.mkstemp(suffix=".toml")
    os.close(fd)
    write_toml(Path(config), entry["run_config"])
    try:
        out = subprocess.run([str(BIN / "flwr"), "run", str(app), connection, "--run-config", config,
                              "--format", "json"], capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(config)
    if out.returncode != 0:
        raise PetiteError(f"resubmitting run {entry['run_id']} failed: {(out.stdout + out.stderr).strip()[-400:]}")
    new_id = int(json.loads(out.stdout)["run-id"])
    write_json(folder / f"{entry['run_id']}.json", {**entry, "status": "resumed", "resumed_as": new_id,
                                                     "ended": time.time()})
    return new_id
