"""How far split-lora's shared LoRA A moves, and why (the README's FedSA-LoRA paragraph).

    python benchmarks/lora_a_drift.py federated   three sites (scanners 2, 3, 5; data=tiny), split-lora,
                                                  3 rounds × 12 local steps over the plain loop; prints
                                                  the run's lora_a_drift.csv and the ceiling that
                                                  full-rate steps in one direction would give
    python benchmarks/lora_a_drift.py steps       scanner 5 training alone in the same setting: per step,
                                                  A's gradient RMS against AdamW's ε and A's step ÷ lr

Data and backbone are cached under $PETITE_FL_HOME (first call: generates them, pretrains 300 steps).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import torch

from petite_fl.artifacts import load_backbone
from petite_fl.federation.server.drift import lora_a_names
from petite_fl.peft.apply import apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.runconfig import compose_run
from petite_fl.training.jobs import backbone_for
from petite_fl.training.trainer import cosine_with_warmup, train

SITES = ["scanner2", "scanner3", "scanner5"]
ROUNDS, STEPS = 3, 12


def config(strategy: str):
    return compose_run({"data": "tiny", "data.synth.scanners": "[scanner1,scanner2,scanner3,scanner5]",
                        "data.synth.workers": 1, "source": "scanner1", "train": "tiny", "strategy": strategy,
                        "overrides": "federation.val.patches=4 train.eval.overlap=0.0 tracking=none",
                        "federation.sites": f"[{','.join(SITES)}]", "federation.rounds": ROUNDS,
                        "federation.local_steps": STEPS, "federation.wait_for_sites": 1,
                        "federation.run_name": f"lora-a-drift-{strategy}"})


def fresh_adapter(cfg):
    """The backbone with the adapter every site starts from (seeded as the coordinator's), and A₀."""
    model, meta = load_backbone(backbone_for(cfg))
    torch.manual_seed(int(cfg.seed))
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    params = dict(model.named_parameters())
    names = lora_a_names(state.names)
    return model, meta, state, params, names, {k: params[k].detach().clone() for k in names}


def federated() -> None:
    from petite_fl.federation.server.coordinator import Coordinator
    from petite_fl.federation.transport import LocalTransport

    cfg = config("split-lora")
    nodes = [{"partition-id": i, "num-partitions": len(SITES)} for i in range(len(SITES))]
    summary = Coordinator(cfg, LocalTransport(nodes), quiet=True).run()
    with open(Path(summary["run_dir"]) / "lora_a_drift.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            print(row)
    _, _, _, _, names, a0 = fresh_adapter(cfg)
    n, norm = sum(a0[k].numel() for k in names), math.sqrt(sum(float((a0[k] ** 2).sum()) for k in names))
    factor, lr = cosine_with_warmup(int(cfg.train.warmup_steps), ROUNDS * STEPS), float(cfg.peft.lr)
    for r in range(1, ROUNDS + 1):
        total = sum(lr * factor(i) for i in range(r * STEPS))
        print(f"after round {r}: full-rate steps in one direction would give ‖ΔA‖/‖A₀‖ = "
              f"{total * math.sqrt(n) / norm:.3f}")


def steps(site: str = "scanner5") -> None:
    from petite_fl.data.patches import site_patch_dataset
    from petite_fl.data.sites import resolve_site, site_split
    from petite_fl.federation.site.worker import round_seed
    from petite_fl.training.device import device_and_amp
    from petite_fl.training.objectives import make_objective

    cfg = config("local")
    device, amp = device_and_amp(cfg)
    model, meta, _, params, names, a0 = fresh_adapter(cfg)
    model.to(device)
    norm0 = math.sqrt(sum(float((a0[k].double() ** 2).sum()) for k in names))
    factor, lr = cosine_with_warmup(int(cfg.train.warmup_steps), ROUNDS * STEPS), float(cfg.peft.lr)
    objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), device)
    data, patch = site_split(cfg, resolve_site(cfg, site), "train", model.size_multiple, site)
    last = {k: a0[k].clone() for k in names}
    print("step  lr  A-grad RMS  share |g|>ε  A-step RMS ÷ lr  ‖A−A₀‖/‖A₀‖")
    for rnd in range(1, ROUNDS + 1):  # as the site's rounds: fresh AdamW, patches and seed per round
        dataset = site_patch_dataset(data, "train", cfg.data.loader, patch=patch,
                                     seed=round_seed(int(cfg.seed), site, rnd) % 2**31)
        torch.manual_seed(round_seed(int(cfg.seed), site, rnd, "train1") % 2**31)

        def on_step(i: int, logs: dict, rnd: int = rnd) -> None:
            step = (rnd - 1) * STEPS + i - 1
            grad = torch.cat([params[k].grad.flatten() for k in names]).double()
            now = {k: params[k].detach().clone() for k in names}
            moved = torch.cat([(now[k] - last[k]).flatten() for k in names]).double()
            drift = math.sqrt(sum(float(((now[k] - a0[k]).double() ** 2).sum()) for k in names)) / norm0
            print(f"{step + 1:3d} {lr * factor(step):.2e} {grad.pow(2).mean().sqrt():.2e} "
                  f"{(grad.abs() > 1e-8).double().mean():.2f} {moved.pow(2).mean().sqrt() / (lr * factor(step)):.3f} "
                  f"{drift:.4f}", flush=True)
            last.update(now)

        train(model, dataset, objective, steps=STEPS, lr=lr, train_cfg=cfg.train, device=device, amp=amp,
              quiet=True, schedule_offset=(rnd - 1) * STEPS, schedule_total=ROUNDS * STEPS, on_step=on_step)


if __name__ == "__main__":
    {"federated": federated, "steps": steps}[sys.argv[1] if len(sys.argv) > 1 else "federated"]()
