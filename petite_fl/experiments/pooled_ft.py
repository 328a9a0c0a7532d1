"""The `pooled-ft` arm of `petite compare`: centralised, then local fine-tuning at each site.

The upper reference a federation can approach: what `fedavg-ft` would reach if its FedAvg
rounds were replaced by training on every site's scans in one place (simulation only, in
this process, like `pooled`). Its budget is split as fedavg-ft's, so that each site's
in-domain fine-tuning is the same: of R rounds × S local steps, k = max(1, ⌈R ·
finetune.fraction⌉) rounds are local and F = R − k shared (`fedavg_ft.shared_rounds`).

- centralised: F × S × sites steps (what fedavg-ft's sites spend in its F FedAvg rounds,
  all together), batches as `pooled`'s, along the first F/R of a cosine over R × S × sites;
- then at every site, from that one adapter: k rounds of S steps on its own scans, each
  round drawn and seeded as the site's own round would be, along steps [F·S, R·S) of a
  cosine over R × S — fedavg-ft's local rounds exactly.

Each site starts from the centralised adapter, never from another site's fine-tuned copy;
its adapter is its own file. Every step: F·S·N + k·S·N = R·S·N, the same as `pooled`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from petite_fl.data.patches import site_patch_dataset
from petite_fl.experiments.pooled import Centralised
from petite_fl.federation.site.worker import round_seed
from petite_fl.federation.strategies.fedavg_ft import finetune_fraction, shared_rounds
from petite_fl.peft.apply import load_adapter_state
from petite_fl.training.objectives import make_objective
from petite_fl.training.trainer import train


def split_budget(cfg: DictConfig, sites: int) -> dict[str, int]:
    """pooled-ft's budget: the centralised steps, then each site's fine-tuning steps (fedavg-ft's split)."""
    rounds, steps = int(cfg.federation.rounds), int(cfg.federation.local_steps)
    shared = shared_rounds(rounds, finetune_fraction(cfg.strategy), "pooled-ft", "centralised")
    local = rounds - shared
    return {"centralised_rounds": shared, "centralised_steps": shared * steps * sites,
            "finetune_rounds": local, "finetune_steps_per_site": local * steps,
            "total_steps": shared * steps * sites + local * steps * sites}


def finetune_site(arm: Centralised, site: str, start: dict[str, torch.Tensor],
                  objective_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], float]:
    """`site`'s fine-tuning of the adapter `start` on its own scans: (its adapter, last round's loss)."""
    cfg = arm.cfg
    rounds, steps = int(cfg.federation.rounds), int(cfg.federation.local_steps)
    first = rounds - split_budget(cfg, len(arm.sites))["finetune_rounds"] + 1
    load_adapter_state(arm.model, arm.state, start)
    objective = make_objective(cfg.train, arm.model.name, str(arm.meta["provenance"].get("preset", "tiny")),
                               arm.device)
    objective.load_state_dict(copy.deepcopy(objective_state))
    data, patch = arm.train_data[site]
    loss = float("nan")
    for rnd in range(first, rounds + 1):  # as the site's own local rounds of fedavg-ft draw and seed them
        dataset = site_patch_dataset(data, "train", cfg.data.loader, patch=patch,
                                     seed=round_seed(int(cfg.seed), site, rnd) % 2**31)
        torch.manual_seed(round_seed(int(cfg.seed), site, rnd, "train1") % 2**31)
        loss = train(arm.model, dataset, objective, steps=steps, lr=float(cfg.peft.lr), train_cfg=cfg.train,
                     device=arm.device, amp=arm.amp, quiet=True, schedule_offset=(rnd - 1) * steps,
                     schedule_total=rounds * steps).final_loss
    return arm.adapter(), loss


def run_pooled_ft(cfg: DictConfig, backbone: Path, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Train one adapter on all sites' scans, fine-tune a copy at each site, evaluate each site's own."""
    arm = Centralised.start(cfg, backbone, "pooled-ft")
    split = split_budget(cfg, len(arm.sites))
    total = int(cfg.federation.rounds) * int(cfg.federation.local_steps) * len(arm.sites)
    arm.train_pooled(split["centralised_steps"], total, quiet)
    out.mkdir(parents=True, exist_ok=True)
    central = arm.adapter()
    arm.save(out / "centralised-adapter.safetensors", central, sites=arm.sites, steps=split["centralised_steps"])
    objective_state = copy.deepcopy(arm.objective.state_dict())
    results, losses = {}, []
    for site in arm.sites:
        tuned, loss = finetune_site(arm, site, central, objective_state)
        losses.append(loss)
        path = arm.save(out / f"adapter-{site}.safetensors", tuned, site=site,
                        steps=split["finetune_steps_per_site"], start="centralised-adapter.safetensors")
        results[site] = (*arm.evaluate(site), path)
    describe = (f"pooled-ft: centralised, then local fine-tuning — one adapter trained on all {len(arm.sites)} sites' "
                f"training scans in one place for {split['centralised_steps']} steps (fedavg-ft's "
                f"{split['centralised_rounds']} FedAvg round(s) × local steps × sites), then fine-tuned at each site "
                f"on its own scans for {split['finetune_steps_per_site']} steps (fedavg-ft's "
                f"{split['finetune_rounds']} local round(s)); simulation only")
    return arm.finish(out, results, describe, split, sum(losses) / len(losses), quiet)
