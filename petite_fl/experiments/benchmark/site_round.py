"""Benchmark section `site`: a site's round as the federation runs it vs its bare network steps.

A round should cost little more than its optimiser steps. Per scanner, in one fresh
process (so that the two figures share the load and the thread count): bare steps of the
same network, PETITE spec, AdamW and batch (one volume's patches at the scanner's training
window), timed before every round and after the last; and rounds of the default
comparison's budget answered by `SiteEndpoint` (what the ClientApp calls, Flower's codec
aside), with the per-round validation the comparison runs. The ratios: the whole round and
its training part (the round less validation) over `local_steps` × the median bare step
around that round; the medians over rounds 2… (the first fills the process's caches).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from petite_fl.experiments.benchmark.workers import run_child

SCANNERS = ("scanner1", "scanner2", "scanner3", "scanner4", "scanner5")


def _config(home: Path, backbone: Path, scanner: str, rounds: int, extra: list[str]):
    from petite_fl.experiments.compare import compare_config, compare_overrides

    return compare_config(compare_overrides([
        f"paths.cache={home}", f"backbone={backbone}", "data.synth.workers=1", "strategy=fedavg",
        f"federation.sites=[{scanner}]", f"federation.rounds={rounds}", "federation.eval_every=1",
        f"federation.site_root={home}/sites-bench-{scanner}", f"federation.run_name=site-bench-{scanner}",
        "federation.resume=false", *extra]))


def _bare_step(cfg, worker, sha256: str):
    """One optimiser step of the site's network on one real batch of its patches, as `trainer.train` takes it."""
    import torch
    from monai.data import DataLoader

    from petite_fl.data.patches import site_patch_dataset
    from petite_fl.data.sites import site_split
    from petite_fl.training.objectives import make_objective
    from petite_fl.training.trainer import ADAMW_BETAS

    model, _, meta, _ = worker._prepare(sha256)
    objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), worker.device)
    site, patch = site_split(cfg, worker.manifest, "train", model.size_multiple, worker.site)
    dataset = site_patch_dataset(site, "train", cfg.data.loader, seed=0, patch=patch)
    batch = next(iter(DataLoader(dataset, batch_size=int(cfg.train.batch_size), shuffle=False)))
    batch = {k: batch[k].to(worker.device) for k in ("input", "target")}
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg.peft.lr), betas=ADAMW_BETAS,
                                  weight_decay=float(cfg.train.weight_decay))
    scaler = torch.amp.GradScaler(worker.device.type, enabled=False)
    model.train()
    return (lambda: objective.step(model, batch, optimizer, scaler, worker.amp)), list(batch["input"].shape)


def site_round_speed(home: str, backbone: str, scanner: str, rounds: int, threads: int, bare: list[int],
                     extra: list[str]) -> dict[str, Any]:
    """In this fresh process: bare steps, `rounds` rounds through the site's endpoint, bare steps again."""
    import torch

    from petite_fl.artifacts import load_backbone
    from petite_fl.federation.messages import BackboneOffer, Hello, TrainIns
    from petite_fl.federation.site.endpoint import SiteEndpoint
    from petite_fl.federation.site.worker import SiteWorker
    from petite_fl.federation.strategies import build_strategy
    from petite_fl.peft.apply import adapter_state_dict, apply_peft
    from petite_fl.peft.spec import spec_from_config
    from petite_fl.profiling import PHASES, time_steps
    from petite_fl.runconfig import site_sections

    torch.set_num_threads(int(threads))
    cfg = _config(Path(home), Path(backbone), scanner, rounds, extra)
    run = str(cfg.federation.run_name)
    model, meta = load_backbone(Path(backbone))
    endpoint = SiteEndpoint({"partition-id": 0, "num-partitions": 1}, {})
    endpoint.answer(Hello(run, site_sections(cfg)))
    endpoint.answer(BackboneOffer(run, model.state_dict(), meta))
    torch.manual_seed(int(cfg.seed))  # the coordinator's initial global tensors
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    strategy = build_strategy(cfg.strategy)
    shared = strategy.split(state.trainable)[0]
    init = adapter_state_dict(model, state)
    global_tensors = {n: init[n] for n in shared}

    warmup, timed = bare
    step, batch_shape = _bare_step(cfg, SiteWorker(cfg, scanner), str(meta["sha256"]))
    cpu = torch.device("cpu")
    between = [time_steps(step, warmup, timed, cpu)]  # bare steps before every round and after the last
    steps, rows = int(cfg.federation.local_steps), []
    for rnd in range(1, rounds + 1):
        PHASES.clear()
        ins = TrainIns(run=run, round=rnd, rounds=rounds, steps=steps, sha256=str(meta["sha256"]), validate=True,
                       uniform_weight=False, tensors=global_tensors, transport="float32")
        begin = time.perf_counter()
        reply = endpoint.answer(ins)
        rows.append({"round": rnd, "seconds": time.perf_counter() - begin,
                     **{k.removeprefix("site."): v for k, v in PHASES.items()}})
        global_tensors = {n: reply.tensors[n] for n in global_tensors}
        between.append(time_steps(step, 0, timed, cpu))
    for r, before, after in zip(rows, between, between[1:], strict=False):
        # the bare step beside this round (the machine's load moves; the round is timed between two samples)
        r["bare_step_seconds"] = bare_step = statistics.median(before + after)
        r["round_ratio"] = r["seconds"] / (steps * bare_step)
        r["train_ratio"] = (r["seconds"] - r.get("validate", 0.0)) / (steps * bare_step)
    later = rows[1:] or rows
    every = [t for ts in between for t in ts]
    return {"scanner": scanner, "threads": int(threads), "batch": batch_shape, "local_steps": steps,
            "bare_step_seconds": statistics.median(every), "bare_step_spread": [min(every), max(every)],
            "rounds": rows, "round_ratio": statistics.median(r["round_ratio"] for r in later),
            "train_ratio": statistics.median(r["train_ratio"] for r in later),
            "first_round_ratio": rows[0]["round_ratio"],
            "validate_seconds": statistics.median(r.get("validate", 0.0) for r in later)}


def site_rounds(home: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    """Every scanner in a fresh process, at each thread count of the plan."""
    from petite_fl.experiments.benchmark.federated import prepare_data, untrained_backbone

    extra, q = [f"train.device={device}"], p["site_rounds"]
    backbone = untrained_backbone(home, "unetr", "tiny")
    prepare_data([f"paths.cache={home}", "data.synth.workers=1"])  # the default comparison's data, before the clock
    rows = []
    for threads in q["threads"]:
        for scanner in q.get("scanners", SCANNERS):
            row = run_child("site", {"args": [str(home), str(backbone), scanner, q["rounds"], threads,
                                              list(q["bare"]), extra]})
            rows.append(row)
            print(f"  site: {scanner}, {threads} thread(s): bare step {row['bare_step_seconds']:.3f} s; round "
                  f"{row['round_ratio']:.2f}× its {row['local_steps']} steps, training part {row['train_ratio']:.2f}× "
                  f"(first round {row['first_round_ratio']:.2f}×)", flush=True)
    return {"rows": rows, "rounds": q["rounds"], "note": "the default comparison's site round (tiny UNETR, PETITE, "
            "fedavg, per-round validation) answered by the site's endpoint in one process with the bare steps; "
            "medians over rounds 2… of each round against the bare steps around it (the first round fills "
            "this process's caches)"}
