"""A run-config's federated jobs: one run, or the arms × seeds of a comparison in turn.

`petite compare` submits one Flower run whose config names the arms (`compare.run`);
each arm is its own coordinator run (own config, own run name, own hello to the sites)
over the same transport and backbone. One failing arm does not lose the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from petite_fl.atomic import write_json
from petite_fl.config import hydra_override
from petite_fl.console import console
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.federation.strategies.registry import centralised
from petite_fl.runconfig import compose_run
from petite_fl.training.jobs import backbone_for


def compare_seeds(cfg: DictConfig) -> list[int]:
    """The training seeds of a comparison: `seed`, `seed + 1`, … (`compare.seeds` of them)."""
    n = cfg.compare.seeds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"compare.seeds must be a whole number ≥ 1 (how many training seeds per arm), got {n!r}")
    return [int(cfg.seed) + i for i in range(n)]


def check_arms(cfg: DictConfig, arms: list[str], where: str = "--arms or compare.default_arms") -> None:
    """Every arm is defined in compare.arms, and there is at least one."""
    if not arms:
        raise ConfigError(f"no arms to compare ({where})")
    unknown = [a for a in arms if a not in cfg.compare.arms]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)} ({where}); "
                          f"defined in compare.arms: {', '.join(cfg.compare.arms)}")


def arm_overrides(cfg: DictConfig, arm: str, seed: int | None = None) -> list[str]:
    """The Hydra overrides that make a comparison's config one arm's (compare.arms.<arm>), then its seed:
    the one place an arm's config is built, for the simulation, a deployment and the pooled arms alike."""
    check_arms(cfg, [arm])
    return [*[str(o) for o in cfg.compare.arms[arm]], *([f"seed={seed}"] if seed is not None else [])]


def arm_dir(folder: Path, arm: str, seed: int) -> Path:
    """Where one arm's run with one seed writes: <compare dir>/arms/<arm>/seed-<seed>."""
    return folder / "arms" / arm / f"seed-{seed}"


def refuse_centralised(run_config: Mapping[str, Any], cfg: DictConfig, arms: list[str], where: str) -> None:
    """Arms whose data must be in one place (`pooled`, `pooled-ft`) cannot run over a federation:
    one line, before any arm trains."""
    central = [a for a in arms if centralised(compose_run(run_config, arm_overrides(cfg, a)).strategy)]
    if central:
        raise ConfigError(f"arm(s) {', '.join(central)} ({where}) train on every site's scans in one place: "
                          "they run only in `petite compare`'s simulation, not over a federation, whose data "
                          "stays at its sites")


def run_all(cfg: DictConfig, run_config: Mapping[str, Any], transport: Any) -> dict[str, Any]:
    arms = [str(a) for a in (cfg.compare.run or [])]
    if not arms:
        return Coordinator(cfg, transport).run()
    if not cfg.compare.dir:
        raise ConfigError("compare.run is set but compare.dir is not")
    check_arms(cfg, arms, "compare.run")
    refuse_centralised(run_config, cfg, arms, "compare.run")
    runs = [(arm, seed) for seed in compare_seeds(cfg) for arm in arms]
    backbone = backbone_for(cfg)  # one backbone for every arm and seed: seeds vary the fine-tuning only
    results, failed = {}, {}
    for i, (arm, seed) in enumerate(runs, 1):
        out = arm_dir(Path(str(cfg.compare.dir)), arm, seed)
        overrides = [*arm_overrides(cfg, arm, seed), hydra_override("backbone", backbone),
                     hydra_override("out", out), "compare.run=null"]
        label = f"{arm}/seed-{seed}"
        try:
            arm_cfg = compose_run(run_config, overrides)
            if not int(arm_cfg.federation.rounds) and seed != runs[0][1]:
                continue  # nothing is trained: the first seed's run stands for every seed
            console.print(f"server · run {i}/{len(runs)}: {label} ({' '.join(overrides[:-3])})", markup=False)
            results[label] = Coordinator(arm_cfg, transport, label=label).run()
        except PetiteError as exc:  # one arm failing does not lose the others
            failed[label] = str(exc)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "error.json", {"arm": arm, "seed": seed, "error": str(exc)})
            console.print(f"server · {label} failed: {exc}", markup=False)
    if failed:
        raise PetiteError("arms failed: " + "; ".join(f"{a}: {e}" for a, e in failed.items()))
    return results
