"""`petite-server --resume`: submit an interrupted run again, with the run-config its journal
entry holds (`federation.flower.journal`); the coordinator continues from its checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from petite_fl.atomic import write_json
from petite_fl.deploy.submission import submit


def resubmit(folder: Path, entry: dict[str, Any], app: Path, connection: str, timeout: float = 300) -> int:
    """`flwr run <app> <connection>` with the interrupted run's run-config; returns the new run id.

    `app` is normally the packaged Flower app (`petite_fl.experiments.flower_run.app_dir`):
    the run continues with this installation's code whichever folder first submitted it.
    """
    new_id = submit(app, connection, entry["run_config"], timeout, what=f"resubmitting run {entry['run_id']}")
    write_json(folder / f"{entry['run_id']}.json", {**entry, "status": "resumed", "resumed_as": new_id,
                                                     "ended": time.time()})
    return new_id
