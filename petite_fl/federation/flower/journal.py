"""The coordinator's run journal: which runs were in progress when the server stopped.

`petite-server` points its ServerApps at a journal folder (an environment variable
inherited through Flower's SuperLink); each run records its run-config when it starts and
its outcome when it ends, atomically (the hooks the ServerApp calls, here at the Flower
edge). A run still marked `running` was interrupted: the server was killed mid-run.
`petite-server --resume` (`deploy.resubmit`) submits it again with the same run-config, and
the coordinator continues from its last checkpointed round (the run's name, and so its
checkpoint, follow from its configuration).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from petite_fl.atomic import write_json

ENV = "PETITE_FL_SERVER_JOURNAL"


def journal_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def record_start(run_id: int, run_config: dict[str, Any]) -> None:
    folder = journal_dir()
    if folder is None:  # a simulation or a SuperLink not started by petite-server
        return
    write_json(folder / f"{run_id}.json", {"run_id": run_id, "status": "running", "started": time.time(),
                                            "run_config": run_config})


def record_end(run_id: int, status: str, detail: str = "") -> None:
    folder = journal_dir()
    path = folder / f"{run_id}.json" if folder else None
    if path is None or not path.is_file():
        return
    entry = json.loads(path.read_text())
    write_json(path, {**entry, "status": status, "ended": time.time(), "detail": detail})


def interrupted(folder: Path) -> list[dict[str, Any]]:
    """Runs that started and never ended, oldest first."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # written atomically, so only a foreign file can be unreadable
        if entry.get("status") == "running":
            out.append(entry)
    return sorted(out, key=lambda e: e.get("started", 0))
