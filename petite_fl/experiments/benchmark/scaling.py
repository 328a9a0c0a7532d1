"""Benchmark section `scaling`: 5/10/20 sites and 1/2/4 rounds: wall time, server memory, aggregation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from petite_fl.experiments.benchmark.federated import fl_overrides, prepare_data, untrained_backbone


def extra_sites(home: Path, n: int) -> list[str]:
    """n sites: the five scanners, then the same scanner profiles drawn with other seeds."""
    from petite_fl.config import compose
    from petite_fl.data.synthetic import SynthSpec, dataset_dir, generate, site_manifest

    scanners = ["scanner1", "scanner2", "scanner3", "scanner4", "scanner5"]
    out = []
    for k in range(n):
        replica, index = divmod(k, len(scanners))
        scanner = scanners[index]
        if replica == 0:
            out.append(scanner)
            continue
        cfg = compose("config", [f"paths.cache={home}", "data=tiny", f"data.name=synthetic-tiny-seed{replica}",
                                 f"data.synth.seed={2024 + 1000 * replica}"])
        generate(SynthSpec.from_config(cfg.data.synth), dataset_dir(cfg.data), workers=1)
        out.append(str(site_manifest(cfg.data, scanner)))
    return out


def scaling(home: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    """One `flwr run` per case on one private SuperLink: seconds per round, aggregation, server memory."""
    from petite_fl.experiments.flower_run import LocalSimulation
    from petite_fl.runconfig import submitted

    s = p["scaling"]
    backbone = untrained_backbone(home, "unetr", p["fl_preset"])
    gpus = 0.0 if device != "cuda" else 0.1
    cases = [(n, 2) for n in s["sites"]] + [(5, r) for r in s["rounds"] if r != 2]
    rows = []
    with LocalSimulation(echo=lambda line: None) as sim:
        for n, rounds in cases:
            sites = extra_sites(home, n)
            name = f"scaling-{n}-sites-{rounds}-rounds"
            overrides = fl_overrides(home, backbone, p, sites, rounds, s["steps"], name,
                                      [f"train.device={device}", "federation.val.patches=2",
                                       "train.eval.overlap=0.0"])  # the final test is not what is measured
            prepare_data(overrides)
            result = sim.run(submitted(overrides), num_supernodes=n, cpus_per_client=1.0,
                             gpus_per_client=gpus)
            summary = json.loads((home / "runs" / "federated" / name / "summary.json").read_text())
            timing = summary["rounds_timing"]
            rows.append({"sites": n, "rounds": rounds, "local_steps": s["steps"], "flower_run_seconds": result.seconds,
                         "round_seconds_mean": statistics.fmean(t["seconds"] for t in timing),
                         "aggregate_ms_mean": 1000 * statistics.fmean(t["aggregate_seconds"] for t in timing),
                         "server_peak_rss_bytes": summary["server_peak_rss_bytes"],
                         "upload_bytes_per_round": summary["upload_bytes_per_round"]})
            print(f"  scaling: {n} sites × {rounds} rounds: {result.seconds:.0f} s", flush=True)
    return {"preset": p["fl_preset"], "rows": rows,
            "note": "one CPU per simulated site; the server peak RSS is the simulation process's (ServerApp + "
                    "Flower's simulation engine)"}
