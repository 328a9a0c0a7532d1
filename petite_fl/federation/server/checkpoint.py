"""The coordinator's checkpoint: after every round, atomically, so a killed run resumes.

Only tensors and plain values are stored, and they are read back with
`torch.load(weights_only=True)`: a checkpoint file cannot run code when it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from petite_fl import __version__
from petite_fl.atomic import atomic_path
from petite_fl.errors import PetiteError
from petite_fl.federation.server.runlog import RunLog


@dataclass
class Checkpoint:
    round: int
    global_tensors: dict[str, torch.Tensor]
    log: RunLog
    privacy: list[Any]


def save_checkpoint(path: Path, rnd: int, global_tensors: dict[str, torch.Tensor], sha: str,
                    strategy: dict[str, Any], log: RunLog, privacy: list[Any]) -> None:
    payload = {"round": rnd, "global": global_tensors, "rng": torch.get_rng_state(), "backbone_sha256": sha,
               "strategy": strategy, "log": log.to_dict(), "privacy": [list(e) for e in privacy],
               "version": __version__}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, sha: str, names: list[str]) -> Checkpoint:
    """The checkpoint of this backbone and shared set; restores torch's RNG as it was saved."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line, not a pickle traceback
        raise PetiteError(f"{path}: not a readable petite-fl checkpoint ({type(exc).__name__}); use another run "
                          "folder or federation.resume=false") from None
    if payload.get("backbone_sha256") != sha or sorted(payload.get("global", {})) != sorted(names):
        raise PetiteError(f"{path}: checkpoint of another backbone or PEFT spec; use another run folder "
                          "or federation.resume=false")
    torch.set_rng_state(payload["rng"])
    return Checkpoint(int(payload["round"]), payload["global"], RunLog.from_dict(payload["log"]),
                      list(payload.get("privacy", [])))
