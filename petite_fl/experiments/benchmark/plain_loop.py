"""The plain-loop stand-in for the federated job (the `overhead` section's baseline), without Flower."""

from __future__ import annotations

import statistics
import time
from typing import Any


def local_equivalent(overrides: list[str]) -> dict[str, Any]:
    """The federated job without Flower: every site's model in memory, same seeds, same steps.

    Each site trains `local_steps` per round from the global adapter, the uploads are
    averaged by the same function the server uses, round 1 is validated and the final
    model evaluated (val patches, whole-volume test) exactly as the federated sites do.
    """
    import torch

    from petite_fl.artifacts import load_backbone
    from petite_fl.config import compose
    from petite_fl.data.patches import site_patch_dataset
    from petite_fl.data.site import load_site
    from petite_fl.federation.aggregate import weighted_average
    from petite_fl.federation.site import round_seed, site_list
    from petite_fl.peft.apply import adapter_state_dict, apply_peft, load_adapter_state
    from petite_fl.peft.spec import spec_from_config
    from petite_fl.training.inference import evaluate_patches, evaluate_site, summarise
    from petite_fl.training.jobs import backbone_for, device_and_amp, resolve_site, training_patch
    from petite_fl.training.objectives import make_objective
    from petite_fl.training.trainer import train

    begin = time.perf_counter()
    phases = {}
    cfg = compose("config", overrides)
    device, amp = device_and_amp(cfg)
    rounds, steps, seed = int(cfg.federation.rounds), int(cfg.federation.local_steps), int(cfg.seed)
    path = backbone_for(cfg, quiet=True)
    sites = {}
    for name in site_list(cfg):
        model, meta = load_backbone(path, device)
        spec = spec_from_config(cfg.peft, model)
        torch.manual_seed(seed)
        state = apply_peft(model, spec)
        model.to(device)
        manifest = resolve_site(cfg, name)
        data = load_site(manifest, splits=("train", "val", "test"), scaling=str(cfg.data.loader.scaling))
        objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), device)
        sites[name] = (model, state, objective, data, training_patch(manifest, cfg.train, model.size_multiple))
    first = next(iter(sites.values()))
    current = adapter_state_dict(first[0], first[1])
    phases["setup"] = time.perf_counter() - begin
    threshold = float(cfg.data.loader.foreground_threshold)
    for rnd in range(1, rounds + 1):
        uploads = []
        for name, (model, state, objective, data, patch) in sites.items():
            load_adapter_state(model, state, current)
            if rnd == 1:
                evaluate_patches(model, data, "val", patch, device=device, patches=int(cfg.federation.val.patches),
                                 seed=seed, foreground_threshold=threshold, amp=amp)
            dataset = site_patch_dataset(data, "train", cfg.data.loader, seed=round_seed(seed, name, rnd) % 2**31,
                                         patch=patch)
            torch.manual_seed(round_seed(seed, name, rnd, "train1") % 2**31)
            train(model, dataset, objective, steps=steps, lr=float(cfg.peft.lr), train_cfg=cfg.train, device=device,
                  amp=amp, quiet=True, schedule_offset=(rnd - 1) * steps, schedule_total=rounds * steps)
            uploads.append((adapter_state_dict(model, state), len(data.pairs["train"])))
        current = weighted_average(uploads)
    phases["rounds"] = time.perf_counter() - begin - phases["setup"]
    psnr = []
    for model, state, _, data, patch in sites.values():
        load_adapter_state(model, state, current)
        evaluate_patches(model, data, "val", patch, device=device, patches=int(cfg.federation.val.patches),
                         seed=seed, foreground_threshold=threshold, amp=amp)
        rows = evaluate_site(model, data, "test", patch, device=device, eval_cfg=cfg.train.eval,
                             foreground_threshold=threshold, amp=amp, quiet=True)
        psnr.append(summarise(rows)["psnr"]["mean"])
    phases["final_evaluation"] = time.perf_counter() - begin - phases["setup"] - phases["rounds"]
    return {"seconds": time.perf_counter() - begin, "test_psnr": statistics.fmean(psnr), "phase_seconds": phases}
