"""The `pooled` arm of `petite compare`: every site's training scans in one place.

The centralised upper bound that no real federation can have (the scans would have to
leave their hospitals), so it exists in simulation only and runs in the comparison's own
process, not through Flower. Same backbone, PEFT spec, optimiser and evaluation as the
federated arms; its step budget is the federation's total, `rounds × local_steps ×
sites`, with batches drawn from one site at a time in proportion to its training scans.
It writes the same `summary.json` as a federated arm, so the report treats it alike.
"""

from __future__ import annotations

import time
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
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.runconfig import site_list
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import evaluate_split
from petite_fl.training.objectives import make_objective
from petite_fl.training.schedule import Schedule
from petite_fl.training.settings import check_settings
from petite_fl.training.trainer import train


def budget(cfg: DictConfig) -> int:
    """The federation's total optimiser steps: what one pooled model may spend."""
    return int(cfg.federation.rounds) * int(cfg.federation.local_steps) * len(site_list(cfg))


def run_pooled(cfg: DictConfig, backbone: Path, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Train one adapter on all sites' training scans, evaluate it on each site's splits."""
    if str(cfg.strategy.name) != "pooled":
        raise ConfigError(f"run_pooled needs strategy=pooled, got {cfg.strategy.name}")
    check_settings(cfg)
    begin = time.perf_counter()
    sites = site_list(cfg)
    device, amp = device_and_amp(cfg)
    model, meta = load_backbone(backbone, device)
    torch.manual_seed(int(cfg.seed))  # the federated arms initialise the same way
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    model.to(device)
    manifests = {site: resolve_site(cfg, site) for site in sites}
    datasets = []
    for site, manifest in manifests.items():
        data, patch = site_split(cfg, manifest, "train", model.size_multiple, site)
        datasets.append(site_patch_dataset(data, "train", cfg.data.loader,
                                           seed=round_seed(int(cfg.seed), site, 1) % 2**31, patch=patch))
    dataset, batches = pooled_patch_dataset(datasets, int(cfg.train.batch_size), seed=int(cfg.seed))
    steps = budget(cfg)
    objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), device)
    result = train(model, dataset, objective, steps=steps, lr=float(cfg.peft.lr), train_cfg=cfg.train, device=device,
                   amp=amp, quiet=quiet, batch_sampler=batches,
                   label=f"pooled {state.spec.label} on {len(sites)} sites")
    adapter = adapter_state_dict(model, state)
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(out / "adapter.safetensors", adapter, state.spec.to_dict(), meta,
                 extra={"strategy": "pooled", "sites": sites, "steps": steps})
    per_site, eval_rows, subject_rows = {}, [], []
    for site, manifest in manifests.items():
        metrics = {**evaluate_split(cfg, site, manifest, model, "val", device, amp, per_round=True),
                   **evaluate_split(cfg, site, manifest, model, "test", device, amp, per_subject=True)}
        read = read_final_metrics(metrics, ("val", "test"))
        if isinstance(read, str):  # our own evaluation: a bug, not a site to leave out
            raise RuntimeError(f"pooled arm, site {site}: {read}")
        means, subjects = read
        eval_rows += [{"round": int(cfg.federation.rounds), "site": site, "split": k, **v} for k, v in means.items()]
        subject_rows += [{"site": site, "split": "test", "position": i, **row} for i, row in enumerate(subjects)]
        per_site[site] = {"test": {"split": "test", **means["test"]},
                          "test_subjects": [{"position": i, **row} for i, row in enumerate(subjects)],
                          "adapter": str(out / "adapter.safetensors"), "backbone_bytes": 0,
                          "upload_bytes_per_round": 0, "download_bytes_per_round": 0}
    summary = {"run": "pooled", "run_dir": str(out), "strategy": "pooled",
               "describe": f"pooled: one adapter trained on all {len(sites)} sites' training scans in one place "
                           f"({steps} steps = rounds × local steps × sites; simulation only)",
               "peft": state.spec.label, "rounds": int(cfg.federation.rounds),
               "local_steps": int(cfg.federation.local_steps), "total_steps": steps,
               "budget": {"rounds": int(cfg.federation.rounds), "local_steps": int(cfg.federation.local_steps),
                          "total_steps": steps, "batch_size": int(cfg.train.batch_size),
                          "patches_per_volume": int(cfg.data.loader.patches_per_volume),
                          "lr": float(cfg.peft.lr), "seed": int(cfg.seed),
                          "schedule": Schedule.from_config(cfg.train, steps).describe()},
               "backbone_sha256": meta["sha256"], "protection": "none", "privacy": None, "rejected": [],
               "sites": per_site, "train_loss": result.final_loss, "seconds": time.perf_counter() - begin}
    write_csv(out / "metrics.csv", eval_rows)
    write_csv(out / "subjects.csv", subject_rows)
    write_json(out / "summary.json", summary)
    if not quiet:
        console.print(f"pooled: {steps} steps on {', '.join(sites)} in {summary['seconds']:.0f} s", markup=False)
    return summary
