"""Benchmark section `overhead`: Flower (SuperLink + `flwr run`) vs the same coordinator without Flower."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from petite_fl.experiments.benchmark.federated import fl_overrides, prepare_data, untrained_backbone
from petite_fl.experiments.benchmark.workers import run_child


def overhead(home: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    """`flwr run` vs the same coordinator and sites over the in-process transport, back to back.

    Workloads (`plan["overhead"]`): (rounds, steps) on the tiny data set without per-round
    validation, or (rounds, steps, "compare"): one arm of the default comparison (its data,
    validation every round, its test windows).

    Both are timed from the command to its end as a user waits for it: Flower from starting
    its private SuperLink to stopping it, the plain loop as a fresh `python` process (imports
    included). Two workloads separate Flower's fixed cost (SuperLink, simulation engine, the
    apps' imports) from its cost per round.
    """
    from petite_fl.experiments.flower_run import LocalSimulation
    from petite_fl.runconfig import submitted

    sites = ["scanner1", "scanner2", "scanner3", "scanner4", "scanner5"]
    backbone = untrained_backbone(home, "unetr", p["fl_preset"])
    cores = os.cpu_count() or 1
    rows = []
    for rounds, steps, *kind in p["overhead"]:
        workload = kind[0] if kind else "bare"
        name = f"overhead-{rounds}x{steps}-{workload}"
        base = fl_overrides(home, backbone, p, sites, rounds, steps, name, [f"train.device={device}"], workload)
        prepare_data(base)
        # One site at a time, as the plain loop trains them: the ratio is Flower's cost, not parallelism.
        begin = time.perf_counter()
        with LocalSimulation(echo=lambda line: None) as sim:
            started = time.perf_counter() - begin
            flower = sim.run(submitted(base), num_supernodes=len(sites), cpus_per_client=cores,
                             gpus_per_client=1.0 if device == "cuda" else 0.0)
        flower_total = time.perf_counter() - begin  # SuperLink start and stop included
        # Its own run name and site folders: the plain loop must not resume Flower's run.
        local = run_child("local", {"overrides": [*base, f"federation.run_name={name}-plain",
                                                  f"federation.site_root={home}/sites-{name}-plain"]})
        summary = json.loads((home / "runs" / "federated" / name / "summary.json").read_text())
        rows.append({"sites": len(sites), "rounds": rounds, "local_steps": steps, "preset": p["fl_preset"],
                     "workload": workload,
                     "flower_seconds": flower_total, "flwr_run_seconds": flower.seconds,
                     "superlink_start_seconds": started, "local_seconds": local["wall_seconds"],
                     "overhead_ratio": flower_total / local["wall_seconds"],
                     "flower_test_psnr": summary["test_mean"].get("psnr"), "local_test_psnr": local["test_psnr"],
                     "flower_phase_seconds": summary["phase_seconds"], "local_phase_seconds": local["phase_seconds"]})
        print(f"  overhead: {rounds} rounds × {steps} steps: Flower {flower_total:.0f} s, "
              f"plain loop {local['wall_seconds']:.0f} s", flush=True)
    return {"rows": rows, "note": f"client-resources-num-cpus={cores}: one simulated site at a time, like the "
                                  "plain loop; Flower's time includes starting and stopping its SuperLink"}
