"""What a comparison folder records when the comparison starts, so that its report can be rebuilt.

`petite compare` writes `compare.json` (arms, seeds, backbone, the command, where it ran)
and `config.yaml` (the resolved configuration the report reads) before anything is
submitted; `petite compare --report DIR` rebuilds report.md and its tables and figures from
them and the arms' results (`arms/<arm>/seed-<s>/summary.json`) without running anything:
after a deployed comparison the command was interrupted from, or after a change to the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.atomic import atomic_path, write_json
from petite_fl.errors import PetiteError

PLAN = "compare.json"
CONFIG = "config.yaml"
FORMAT = "petite-fl/comparison"


@dataclass
class Plan:
    """A comparison as it was asked for; `run_id` and `seconds` are added as it goes."""

    arms: list[str]
    seeds: list[int]
    backbone: str
    command: list[str]
    federation: str | None = None        # the `flwr` connection of a deployed coordinator; None: simulation
    run_id: int | None = None            # the deployed run's id at the coordinator
    seconds: float | None = None         # wall time, once the comparison has ended
    petite_fl: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)


def save(folder: Path, plan: Plan, cfg: DictConfig | None = None) -> None:
    """compare.json (and config.yaml, when given), each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    write_json(folder / PLAN, {"format": FORMAT, **asdict(plan)})


def load(folder: Path) -> tuple[Plan, DictConfig]:
    """The plan and configuration of a comparison folder; one line if it is none."""
    path = folder / PLAN
    if not folder.is_dir():
        raise PetiteError(f"--report {folder}: no such folder")
    try:
        data = json.loads(path.read_text())
        cfg = OmegaConf.load(folder / CONFIG)
    except FileNotFoundError as exc:
        raise PetiteError(f"--report {folder}: not a comparison folder ({Path(exc.filename).name} is missing; "
                          "`petite compare` writes it when a comparison starts)") from None
    except (OSError, ValueError) as exc:
        raise PetiteError(f"--report {folder}: {path.name} or {CONFIG} is unreadable ({exc})") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise PetiteError(f"--report {folder}: {path.name} is not a petite-fl comparison record")
    try:
        plan = Plan(**data)
    except TypeError as exc:
        raise PetiteError(f"--report {folder}: {path.name} does not hold a comparison's plan ({exc})") from None
    if not isinstance(cfg, DictConfig):
        raise PetiteError(f"--report {folder}: {CONFIG} is not a configuration mapping")
    return plan, cfg


def rebuild(folder: Path) -> Path:
    """report.md (and every file beside it) again, from the folder alone; returns its path."""
    from petite_fl.experiments.compare_report import report

    plan, cfg = load(folder)
    return report(folder, cfg, plan.arms, plan.seeds, Path(plan.backbone), plan.command, plan.seconds,
                  deployed=plan.federation)
