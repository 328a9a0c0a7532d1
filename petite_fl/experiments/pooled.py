"""The `pooled` arm of `petite compare` (centralised, one model), and what `pooled-ft` shares with it.

Every site's training scans in one place: what no real federation can have (the scans would
have to leave their hospitals), so it exists in simulation only and runs in the
comparison's own process, not through Flower. Not a bound on what federation can reach:
one adapter for every scanner, more steps in one place but fewer in each site's domain, no
personalisation (`pooled_ft` adds local fine-tuning). Same backbone, PEFT spec, optimiser
and evaluation as the federated arms; its step budget is the federation's total, `rounds ×
local_steps × sites`, with batches drawn from one site at a time in proportion to its
training scans. It writes the same `summary.json` as a federated arm, so the report treats
it alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from petite_fl.artifacts import load_backbone, save_adapter
from petite_fl.atomic import write_csv, write_json
from petite_fl.console import console
from petite_fl.data.patches import pooled_patch_dataset, site_patch_dataset
from petite_fl.data.sites import resolve_site, site_split
from petite_fl.errors import ConfigError
from petite_fl.federation.server.evaluation import read_final_metrics
from petite_fl.federation.site.worker import round_seed
from petite_fl.peft.apply import PeftModelState, adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.runconfig import site_list
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import evaluate_split
from petite_fl.training.objectives import Objective, make_objective
from petite_fl.training.schedule import Schedule
from petite_fl.training.settings import check_settings
from petite_fl.training.trainer import TrainResult, train


def budget(cfg: DictConfig) -> int:
    """The federation's total optimiser steps: what one pooled model may spend."""
    return int(cfg.federation.rounds) * int(cfg.federation.local_steps) * len(site_list(cfg))


@dataclass
class Centralised:
    """A centralised arm's model and every site's training data, in this process."""

    cfg: DictConfig
    sites: list[str]
    device: torch.device
    amp: bool
    model: torch.nn.Module
    meta: dict[str, Any]
    state: PeftModelState
    manifests: dict[str, Path]
    train_data: dict[str, tuple[Any, Any]]  # site → (its training split, its patch size)
    objective: Objective
    begin: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, cfg: DictConfig, backbone: Path, arm: str) -> Centralised:
        """The backbone with a fresh adapter (seeded as the federated arms') and every site's training split."""
        if str(cfg.strategy.name) != arm:
            raise ConfigError(f"the {arm} arm needs strategy={arm}, got {cfg.strategy.name}")
        check_settings(cfg)
        begin = time.perf_counter()
        sites = site_list(cfg)
        device, amp = device_and_amp(cfg)
        model, meta = load_backbone(backbone, device)
        torch.manual_seed(int(cfg.seed))  # the federated arms initialise the same way
        state = apply_peft(model, spec_from_config(cfg.peft, model))
        model.to(device)
        manifests = {site: resolve_site(cfg, site) for site in sites}
        data = {site: site_split(cfg, m, "train", model.size_multiple, site) for site, m in manifests.items()}
        objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), device)
        return cls(cfg, sites, device, amp, model, meta, state, manifests, data, objective, begin)

    def train_pooled(self, steps: int, schedule_total: int, quiet: bool) -> TrainResult:
        """`steps` on every site's scans in one place, batches from one site at a time in proportion to
        its scans, along a warm-up + cosine schedule of `schedule_total` steps."""
        cfg = self.cfg
        datasets = [site_patch_dataset(data, "train", cfg.data.loader, patch=patch,
                                       seed=round_seed(int(cfg.seed), site, 1) % 2**31)
                    for site, (data, patch) in self.train_data.items()]
        dataset, batches = pooled_patch_dataset(datasets, int(cfg.train.batch_size), seed=int(cfg.seed))
        return train(self.model, dataset, self.objective, steps=steps, lr=float(cfg.peft.lr), train_cfg=cfg.train,
                     device=self.device, amp=self.amp, quiet=quiet, batch_sampler=batches,
                     schedule_total=schedule_total, label=f"{cfg.strategy.name} {self.state.spec.label} "
                                                          f"on {len(self.sites)} sites")

    def adapter(self) -> dict[str, torch.Tensor]:
        return adapter_state_dict(self.model, self.state)

    def save(self, path: Path, tensors: dict[str, torch.Tensor], **extra: Any) -> str:
        save_adapter(path, tensors, self.state.spec.to_dict(), self.meta,
                     extra={"strategy": str(self.cfg.strategy.name), **extra})
        return str(path)

    def evaluate(self, site: str) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]]:
        """The model as it is now on `site`'s validation and test splits: (means by split, test subjects)."""
        cfg, manifest = self.cfg, self.manifests[site]
        metrics = {**evaluate_split(cfg, site, manifest, self.model, "val", self.device, self.amp, per_round=True),
                   **evaluate_split(cfg, site, manifest, self.model, "test", self.device, self.amp, per_subject=True)}
        read = read_final_metrics(metrics, ("val", "test"))
        if isinstance(read, str):  # our own evaluation: a bug, not a site to leave out
            raise RuntimeError(f"{cfg.strategy.name} arm, site {site}: {read}")
        return read

    def finish(self, out: Path, results: dict[str, tuple[dict, list, str]], describe: str, steps: dict[str, int],
               train_loss: float, quiet: bool) -> dict[str, Any]:
        """metrics.csv, subjects.csv and summary.json as a federated arm writes them, from
        {site: (means by split, test subjects, its adapter's path)}; `steps` is the budget's own
        entries, `total_steps` (every optimiser step of the arm) among them."""
        cfg, name = self.cfg, str(self.cfg.strategy.name)
        rounds, local = int(cfg.federation.rounds), int(cfg.federation.local_steps)
        per_site, eval_rows, subject_rows = {}, [], []
        for site, (means, subjects, adapter) in results.items():
            eval_rows += [{"round": rounds, "site": site, "split": k, **v} for k, v in means.items()]
            subject_rows += [{"site": site, "split": "test", "position": i, **row} for i, row in enumerate(subjects)]
            per_site[site] = {"test": {"split": "test", **means["test"]},
                              "test_subjects": [{"position": i, **row} for i, row in enumerate(subjects)],
                              "adapter": adapter, "backbone_bytes": 0,
                              "upload_bytes_per_round": 0, "download_bytes_per_round": 0}
        summary = {"run": name, "run_dir": str(out), "strategy": name, "describe": describe,
                   "peft": self.state.spec.label, "rounds": rounds, "local_steps": local,
                   "total_steps": steps["total_steps"],
                   "budget": {"rounds": rounds, "local_steps": local, **steps,
                              "batch_size": int(cfg.train.batch_size),
                              "patches_per_volume": int(cfg.data.loader.patches_per_volume),
                              "lr": float(cfg.peft.lr), "seed": int(cfg.seed),
                              "schedule": Schedule.from_config(cfg.train, steps["total_steps"]).describe()},
                   "backbone_sha256": self.meta["sha256"], "protection": "none", "privacy": None, "rejected": [],
                   "sites": per_site, "train_loss": train_loss, "seconds": time.perf_counter() - self.begin}
        write_csv(out / "metrics.csv", eval_rows)
        write_csv(out / "subjects.csv", subject_rows)
        write_json(out / "summary.json", summary)
        if not quiet:
            console.print(f"{name}: {steps['total_steps']} steps on {', '.join(self.sites)} in "
                          f"{summary['seconds']:.0f} s", markup=False)
        return summary


def run_pooled(cfg: DictConfig, backbone: Path, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Train one adapter on all sites' training scans, evaluate it unchanged on each site's splits."""
    arm = Centralised.start(cfg, backbone, "pooled")
    steps = budget(cfg)
    result = arm.train_pooled(steps, steps, quiet)
    out.mkdir(parents=True, exist_ok=True)
    adapter = arm.save(out / "adapter.safetensors", arm.adapter(), sites=arm.sites, steps=steps)
    results = {site: (*arm.evaluate(site), adapter) for site in arm.sites}
    describe = (f"pooled: centralised, one model — one adapter trained on all {len(arm.sites)} sites' training "
                f"scans in one place ({steps} steps = rounds × local steps × sites; simulation only)")
    return arm.finish(out, results, describe, {"total_steps": steps}, result.final_loss, quiet)
