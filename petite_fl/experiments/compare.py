"""`petite compare`: local vs federated PEFT on the five synthetic scanners, one report.

Every arm (no fine-tuning, local PEFT, fedavg, shared-encoder, personalized, fedavg-ft,
split-lora, …) runs through the same Flower apps in one `flwr run` simulation, on the same
data, the same backbone (pretrained on the source scanner, cached) and the same
local-step budget, once per training seed; the pooled bound runs in this process. The
sites report per-subject test metrics; `compare_results` pairs them across arms into
differences with confidence intervals and `compare_report` writes the report (report.md,
CSV, PNG figures).
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.atomic import write_json
from petite_fl.config import config_hash, expand_path, hydra_override
from petite_fl.console import console
from petite_fl.data.manifest import read_manifest
from petite_fl.data.sites import resolve_site
from petite_fl.data.synthetic import SynthSpec
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.experiments.compare_report import report
from petite_fl.experiments.flower_run import LocalSimulation, resources
from petite_fl.experiments.pooled import run_pooled
from petite_fl.federation.server.arms import arm_dir, arm_overrides, check_arms, compare_seeds
from petite_fl.federation.strategies import build_strategy
from petite_fl.runconfig import command_config, site_list, submitted
from petite_fl.scanners import available_scanners
from petite_fl.training.jobs import backbone_for
from petite_fl.training.settings import check_settings

#: subjects a site needs per split for a comparison: training, per-round validation, a paired interval
MIN_SUBJECTS = {"train": 1, "val": 1, "test": 2}


def compare_overrides(overrides: list[str]) -> list[str]:
    """compare.overrides (the preset's sizing), then the user's own."""
    return [*[str(o) for o in command_config(overrides).compare.overrides], *overrides]


#: The config of a Flower run of these overrides, as the ServerApp composes it.
compare_config = command_config


def split_counts(cfg: DictConfig, site: str) -> tuple[dict[str, int], str]:
    """(subjects per split, where they are set) of a site, before any data is generated."""
    if site in available_scanners() and not Path(site).is_file():
        spec = SynthSpec.from_config(cfg.data.synth)
        where = f"data.synth.sizes.{site}" if site in dict(spec.sizes) else "data.synth.splits"
        return dict(spec.splits_for(site)), where
    manifest = resolve_site(cfg, site)
    return read_manifest(manifest).counts(), str(manifest)


def check_sites(cfg: DictConfig, sites: list[str]) -> None:
    """Every site has enough subjects for what the comparison does with each split."""
    for site in sites:
        counts, where = split_counts(cfg, site)
        short = [f"{counts.get(k, 0)} {k}" for k, n in MIN_SUBJECTS.items() if counts.get(k, 0) < n]
        if short:
            need = ", ".join(f"≥ {n} {k}" for k, n in MIN_SUBJECTS.items())
            raise ConfigError(f"site {site} has {', '.join(short)} subject(s) ({where}); a comparison needs {need} "
                              "(training, per-round validation, and two test subjects for a paired interval)")


def run(overrides: list[str], arms: list[str] | None = None, out: Path | None = None) -> Path:
    """Run the comparison; returns the folder with report.md."""
    begin = time.perf_counter()
    user = list(overrides)
    overrides = compare_overrides(user)
    cfg = compare_config(overrides)
    arms = list(arms or [str(a) for a in cfg.compare.default_arms])
    check_arms(cfg, arms)
    seeds = compare_seeds(cfg)
    sites = site_list(cfg)
    check_sites(cfg, sites)
    # Every arm's own config, composed now: a bad arm fails before anything is trained.
    arm_cfgs = {arm: compare_config([*overrides, *arm_overrides(cfg, arm)]) for arm in arms}
    pooled = [a for a in arms if str(arm_cfgs[a].strategy.name) == "pooled"]
    federated = [a for a in arms if a not in pooled]
    for arm in arms:  # the scaling and the schedule of every arm, before any data
        check_settings(arm_cfgs[arm])
    for arm in federated:  # the strategy's own refusals (e.g. fedavg-ft with one round), before any data
        build_strategy(arm_cfgs[arm].strategy).federated_rounds(int(arm_cfgs[arm].federation.rounds))
    folder = Path(out) if out else expand_path(cfg.paths.cache) / "runs" / "compare" / config_hash(
        __version__, OmegaConf.to_container(cfg, resolve=True), arms)
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"comparison ({cfg.compare.name}) of {', '.join(arms)} on {', '.join(sites)}, "
                  f"{len(seeds)} seed(s) → {folder}", markup=False)

    # Data and backbone first, here, with progress: the sites then find them cached.
    for site in sites:
        resolve_site(cfg, site)
    backbone = backbone_for(cfg)
    console.print(f"backbone: {backbone}", markup=False)

    failed = []
    if federated:
        extra = [*overrides, hydra_override("backbone", backbone), f"compare.run=[{','.join(federated)}]",
                 hydra_override("compare.dir", folder)]
        cpus, gpus = resources(str(cfg.train.device))
        try:
            with LocalSimulation() as sim:
                result = sim.run(submitted(extra), num_supernodes=len(sites), cpus_per_client=cpus,
                                 gpus_per_client=gpus)
            console.print(f"Flower run {result.run_id} {result.status} in {result.seconds:.0f} s", markup=False)
        except PetiteError as exc:  # report what did finish, then fail
            failed.append(str(exc))
    for arm in pooled:
        for seed in seeds:
            arm_cfg = compare_config([*overrides, *arm_overrides(cfg, arm, seed)])
            try:
                run_pooled(arm_cfg, backbone, arm_dir(folder, arm, seed))
            except PetiteError as exc:  # like a failed Flower arm: kept out of the report, named, then fail
                write_json(arm_dir(folder, arm, seed) / "error.json", {"error": str(exc)})
                failed.append(f"{arm}/seed-{seed}: {exc}")
    path = report(folder, cfg, arms, seeds, backbone, user, time.perf_counter() - begin)
    if failed:
        raise PetiteError(f"{'; '.join(failed)}; the report of the arms that finished is {path}")
    return folder
