"""`petite compare`: local vs federated PEFT on the five synthetic scanners, one report.

Every arm (no fine-tuning, local PEFT, fedavg, shared-encoder, personalized, fedavg-ft,
split-lora, …) runs through the same Flower apps in one `flwr run` simulation, on the same
data, the same backbone (pretrained on the source scanner, cached) and the same
local-step budget, once per training seed; the centralised arms (`pooled`: one model;
`pooled-ft`: then local fine-tuning) run in this process. The sites report per-subject
test metrics; `compare_results` pairs them across arms into differences with confidence
intervals and `compare_report` writes the report (report.md, CSV, PNG figures).

The same arms run at a deployed coordinator with `--federation` (`compare_deployed`; the
centralised arms are refused there), `--evaluate` evaluates one adapter or the bare backbone
without training (`compare_evaluate`), and the folder records what `--report` needs to write
the report again (`compare_folder`). Sites may be manifests a consortium holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.atomic import write_json
from petite_fl.config import config_hash, expand_path, hydra_list, hydra_override
from petite_fl.console import console
from petite_fl.data.sites import is_scanner, resolve_site, split_counts
from petite_fl.deploy.connection import Connection, probe, read_connection
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.experiments.compare_deployed import run_deployed
from petite_fl.experiments.compare_endpoints import check_endpoints
from petite_fl.experiments.compare_evaluate import evaluation
from petite_fl.experiments.compare_folder import Plan, save
from petite_fl.experiments.compare_report import report
from petite_fl.experiments.flower_run import LocalSimulation, resources
from petite_fl.experiments.pooled import run_pooled
from petite_fl.experiments.pooled_ft import run_pooled_ft, split_budget
from petite_fl.federation.server.arms import arm_dir, arm_overrides, check_arms, compare_seeds
from petite_fl.federation.strategies import build_strategy, centralised
from petite_fl.runconfig import command_config, site_list, submitted
from petite_fl.training.jobs import backbone_for
from petite_fl.training.settings import check_settings

#: the arms that train on every site's scans in this process (simulation only), by strategy label
CENTRALISED_RUNS = {"pooled": run_pooled, "pooled-ft": run_pooled_ft}
#: the first lines of a preset that is not a measurement (compare.demonstration)
DEMONSTRATION = ("a demonstration, not a measurement: {seeds} training seed(s), {rounds} rounds × {steps} local steps, "
                 "sized to show every arm in minutes on a CPU; the measurement is `petite compare compare=study`.")
#: subjects a site needs per split for a comparison: training, per-round validation, a paired interval
MIN_SUBJECTS = {"train": 1, "val": 1, "test": 2}


def compare_overrides(overrides: list[str]) -> list[str]:
    """compare.overrides (the preset's sizing), then the user's own."""
    return [*[str(o) for o in command_config(overrides).compare.overrides], *overrides]


#: The config of a Flower run of these overrides, as the ServerApp composes it.
compare_config = command_config


def check_sites(cfg: DictConfig, sites: list[str]) -> None:
    """Every site has enough subjects for what the comparison does with each split."""
    for site in sites:
        counts, where = split_counts(cfg, site)
        short = [f"{counts.get(k, 0)} {k}" for k, n in MIN_SUBJECTS.items() if counts.get(k, 0) < n]
        if short:
            need = ", ".join(f"≥ {n} {k}" for k, n in MIN_SUBJECTS.items())
            raise ConfigError(f"site {site} has {', '.join(short)} subject(s) ({where}); a comparison needs {need} "
                              "(training, per-round validation, and two test subjects for a paired interval)")


@dataclass
class Setup:
    """A comparison checked and composed, before anything is generated, trained or submitted."""

    cfg: DictConfig
    overrides: list[str]            # the preset's sizing, the user's, and --evaluate's arm
    command: list[str]              # `petite compare …` that runs it again, arms spelled out (the report's first line)
    arms: list[str]
    seeds: list[int]
    sites: list[str]
    arm_cfgs: dict[str, DictConfig]
    pooled: list[str]               # arms trained in this process on every site's scans
    conn: Connection | None         # the deployed coordinator; None: Flower's simulation engine
    key: list[Any]                  # what names the default folder

    @property
    def federated(self) -> list[str]:
        return [a for a in self.arms if a not in self.pooled]


def prepare(user: list[str], arms: list[str] | None = None, federation: str | None = None,
            evaluate: str | None = None) -> Setup:
    """Every check of a comparison, each a one-line refusal, before any data, backbone or run."""
    conn = read_connection(federation) if federation else None  # an unknown connection: the first line
    overrides = compare_overrides(user)
    cfg = compare_config(overrides)
    key: list[Any] = [federation] if federation else []
    if evaluate:
        if arms:
            raise ConfigError("--evaluate evaluates without training: give no --arms")
        given = evaluation(cfg, evaluate)
        overrides, arms, key = [*overrides, *given.overrides], given.arms, [*key, *given.key]
        cfg = compare_config(overrides)
    arms = list(arms or [str(a) for a in cfg.compare.default_arms])
    check_arms(cfg, arms)
    seeds = compare_seeds(cfg)
    sites = site_list(cfg)
    if conn is None:  # (a deployed site checks its own data)
        # Flower runs the apps from a copy of the app elsewhere: a manifest is named by its absolute path
        absolute = [str(expand_path(s)) if Path(s).is_file() and not Path(s).is_absolute() else s for s in sites]
        if absolute != sites:
            overrides, sites = [*overrides, hydra_list("federation.sites", absolute)], absolute
            cfg = compare_config(overrides)
        check_sites(cfg, sites)
    # margin and primary endpoint; only simulated scanners have a ground truth (a deployed site never does)
    check_endpoints(cfg, arms, sites, truth_sites=[s for s in sites if is_scanner(s)] if conn is None else [])
    # Every arm's own config, composed now: a bad arm fails before anything is trained.
    arm_cfgs = {arm: compare_config([*overrides, *arm_overrides(cfg, arm)]) for arm in arms}
    pooled = [a for a in arms if centralised(arm_cfgs[a].strategy)]
    if conn is not None and pooled:
        raise ConfigError(f"arm(s) {', '.join(pooled)} train on every site's scans in one place, which a deployed "
                          f"federation does not have (--federation {conn.name}): drop them from --arms")
    for arm in arms:  # the scaling and the schedule of every arm, before any data
        check_settings(arm_cfgs[arm])
    for arm in arms:  # the strategy's own refusals (e.g. fedavg-ft with one round), before any data
        if arm not in pooled:
            build_strategy(arm_cfgs[arm].strategy).federated_rounds(int(arm_cfgs[arm].federation.rounds))
        elif str(arm_cfgs[arm].strategy.name) == "pooled-ft":  # fedavg-ft's split of the budget, its refusals
            split_budget(arm_cfgs[arm], len(sites))
    if conn is not None:
        probe(conn)  # a coordinator that does not answer: one line, before any data or backbone
    command = [*(["--federation", federation] if federation else []),
               *(["--evaluate", evaluate] if evaluate else ["--arms", ",".join(arms)]), *user]
    return Setup(cfg, overrides, command, arms, seeds, sites, arm_cfgs, pooled, conn, key)


def run(overrides: list[str], arms: list[str] | None = None, out: Path | None = None, federation: str | None = None,
        evaluate: str | None = None) -> Path:
    """Run the comparison (in simulation, or at the deployed coordinator `federation` names); returns the folder
    with report.md. `evaluate`: an adapter file or `backbone`, evaluated at every site without training."""
    begin = time.perf_counter()
    s = prepare(list(overrides), arms, federation, evaluate)
    cfg = s.cfg
    folder = Path(out) if out else expand_path(cfg.paths.cache) / "runs" / "compare" / config_hash(
        __version__, OmegaConf.to_container(cfg, resolve=True), s.arms, *s.key)
    folder.mkdir(parents=True, exist_ok=True)
    where = f" at the deployed federation `{s.conn.name}` ({s.conn.address})" if s.conn else ""
    console.print(f"comparison ({cfg.compare.name}) of {', '.join(s.arms)} on {', '.join(s.sites)}{where}, "
                  f"{len(s.seeds)} seed(s) → {folder}", markup=False)
    if cfg.compare.get("demonstration"):
        console.print(DEMONSTRATION.format(seeds=len(s.seeds), rounds=int(cfg.federation.rounds),
                                           steps=int(cfg.federation.local_steps)), markup=False)
    phases: dict[str, float] = {}
    clock = time.perf_counter()
    # Data and backbone first, here, with progress: the sites then find them cached.
    if s.conn is None:
        for site in s.sites:
            resolve_site(cfg, site)
    phases["data"], clock = time.perf_counter() - clock, time.perf_counter()
    backbone = backbone_for(cfg)
    phases["backbone"], clock = time.perf_counter() - clock, time.perf_counter()
    console.print(f"backbone: {backbone}", markup=False)
    plan = Plan(s.arms, s.seeds, str(backbone), s.command, federation)
    save(folder, plan, cfg)  # what --report DIR rebuilds the report from

    failed = _federated(s, plan, folder, backbone) if s.federated else []
    if s.federated:
        phases["Flower run" if s.conn is None else "deployed run"] = time.perf_counter() - clock
    for arm in s.pooled:
        for seed in s.seeds:
            clock = time.perf_counter()
            arm_cfg = compare_config([*s.overrides, *arm_overrides(cfg, arm, seed)])
            try:
                CENTRALISED_RUNS[str(arm_cfg.strategy.name)](arm_cfg, backbone, arm_dir(folder, arm, seed))
            except PetiteError as exc:  # like a failed Flower arm: kept out of the report, named, then fail
                write_json(arm_dir(folder, arm, seed) / "error.json", {"error": str(exc)})
                failed.append(f"{arm}/seed-{seed}: {exc}")
            phases[f"{arm} (centralised, seed {seed})"] = time.perf_counter() - clock
    plan.seconds = time.perf_counter() - begin
    save(folder, plan)
    clock = time.perf_counter()
    path = report(folder, cfg, s.arms, s.seeds, backbone, s.command, plan.seconds, deployed=federation)
    phases["report"] = time.perf_counter() - clock
    console.print(phase_line(phases, folder, s, time.perf_counter() - begin), markup=False)
    if failed:
        raise PetiteError(f"{'; '.join(failed)}; the report of the arms that finished is {path}")
    return folder


def phase_line(phases: dict[str, float], folder: Path, s: Setup, total: float) -> str:
    """What each phase of the comparison took, the federated arms' share of the Flower run from their
    summaries (hello, backbone, rounds and final evaluation; the rest is Flower's start and the apps')."""
    arms = []
    for arm in s.federated:
        took = [sum(json.loads(p.read_text()).get("phase_seconds", {}).values())
                for seed in s.seeds if (p := arm_dir(folder, arm, seed) / "summary.json").is_file()]
        if took:
            arms.append(f"{arm} {sum(took):.0f} s")
    parts = [f"{name} {seconds:.0f} s" + (f" ({', '.join(arms)})" if name.endswith(" run") and arms else "")
             for name, seconds in phases.items()]
    return "time: " + " · ".join(parts) + f" · total {total:.0f} s"


def _federated(s: Setup, plan: Plan, folder: Path, backbone: Path) -> list[str]:
    """The federated arms in one Flower run, at the deployed coordinator or in simulation; what failed."""
    extra = [*s.overrides, hydra_override("backbone", backbone), f"compare.run=[{','.join(s.federated)}]",
             hydra_override("compare.dir", folder)]
    if s.conn is None:
        return _simulate(s.cfg, extra, len(s.sites))

    def submitted_as(run_id: int) -> None:
        plan.run_id = run_id
        save(folder, plan)

    # an arm without rounds runs once, for the first seed (`arms.run_all`)
    expected = [(a, seed) for a in s.federated
                for seed in (s.seeds if int(s.arm_cfgs[a].federation.rounds) else s.seeds[:1])]
    return run_deployed(s.conn, submitted(extra), folder, expected, submitted_as)


def _simulate(cfg: DictConfig, extra: list[str], n_sites: int) -> list[str]:
    """The federated arms in one `flwr run` of Flower's simulation engine; what failed."""
    cpus, gpus = resources(str(cfg.train.device))
    try:
        with LocalSimulation() as sim:
            result = sim.run(submitted(extra), num_supernodes=n_sites, cpus_per_client=cpus, gpus_per_client=gpus)
        console.print(f"Flower run {result.run_id} {result.status} in {result.seconds:.0f} s", markup=False)
    except PetiteError as exc:  # report what did finish, then fail
        return [str(exc)]
    return []
